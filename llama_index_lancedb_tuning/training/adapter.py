"""Training a query adapter (`QueryAdapter`) on the app's own query vectors against a table's stored
document vectors: pure torch on the CPU, seconds for hundreds of queries.

The training queries are embedded once, by the app's embedding, and kept beside the adapter
(`query_vectors.npy` and `query_vectors.json`), saved as they are made: a rerun or a resumed run
calls an API embedding only for queries it has not embedded yet.

The loss is MultipleNegativesRankingLoss's softmax over scaled cosines (scale 20) with every stored
vector as a candidate, as `QueryOnlyLoss` does: every in-batch negative, and the rest of the corpus.
Every row of a query's relevant documents is a positive (-log of the softmax mass on them), so a
query learns to rank some node of its document first, which is what a hit counts. Validation queries
are carved from the training queries as the fine-tuner carves them (`val_fraction`, `seed`), so the
gate's queries are never trained on; the epoch with the best validation MRR@10 is kept, the untrained
identity (epoch 0) among them, so an adapter that does not help stays the identity.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.schema import MetadataMode, TextNode
from torch import Tensor

from ..common.jsonfile import read_json, write_json
from ..common.wording import counted
from ..config import FinetuneConfig
from ..data.qa_dataset import QADataset
from ..encoding.adapted_embedding import QUERY_TEXTS, QUERY_VECTORS, QueryAdapter, describe_embedding, save_adapter
from ..encoding.embed_models import embed_queries, embed_texts
from ..errors import TuningError
from .finetuner import FinetuneResult
from .training_pairs import source_nodes

MNRL_SCALE = 20.0  # sentence-transformers' MultipleNegativesRankingLoss default
_MRR_CUT = 10
_EMBED_CHUNK = 64  # queries embedded between two saves of the cache


def cached_query_vectors(base: BaseEmbedding, texts: Sequence[str], folder: Path) -> tuple[np.ndarray, int]:
    """(len(texts), dim) normalised query vectors of `texts` by `base`, and how many were embedded now.

    Vectors already in `folder`'s cache, made by an embedding of the same description, are reused;
    the others are embedded `_EMBED_CHUNK` at a time, the cache saved after each chunk.
    """
    folder.mkdir(parents=True, exist_ok=True)
    description = describe_embedding(base)
    known: dict[str, np.ndarray] = {}
    saved = read_json(folder / QUERY_TEXTS)
    if saved is not None and saved.get("base") == description and (folder / QUERY_VECTORS).is_file():
        vectors = np.load(folder / QUERY_VECTORS)
        if len(vectors) == len(saved["texts"]):  # else a kill fell between the two writes: start again
            known = dict(zip(saved["texts"], vectors))
    missing = [t for t in dict.fromkeys(texts) if t not in known]
    for start in range(0, len(missing), _EMBED_CHUNK):
        chunk = missing[start : start + _EMBED_CHUNK]
        known.update(zip(chunk, embed_queries(base, chunk)))
        order = list(known)
        tmp = folder / f"{QUERY_VECTORS}.tmp.npy"
        np.save(tmp, np.stack([known[t] for t in order]).astype(np.float32))
        tmp.replace(folder / QUERY_VECTORS)
        write_json(folder / QUERY_TEXTS, {"base": description, "texts": order})
    return np.stack([known[t] for t in texts]).astype(np.float32), len(missing)


def _ranks(adapter: QueryAdapter, queries: Tensor, positives: Tensor, passages: Tensor) -> Tensor:
    """The 1-based rank of each query's best-ranked positive."""
    with torch.no_grad():
        scores = adapter(queries) @ passages.T
        best = scores.masked_fill(~positives, float("-inf")).max(dim=1, keepdim=True).values
        return (scores > best).sum(dim=1) + 1


def _validation(adapter: QueryAdapter, queries: Tensor, positives: Tensor, passages: Tensor, k: int) -> dict[str, float]:
    ranks = _ranks(adapter, queries, positives, passages).double()
    mrr = torch.where(ranks <= _MRR_CUT, 1.0 / ranks, torch.zeros_like(ranks))
    return {f"val_hit@{k}": round(float((ranks <= k).double().mean()), 4), f"val_mrr@{_MRR_CUT}": round(float(mrr.mean()), 4)}


def _loss(adapter: QueryAdapter, queries: Tensor, positives: Tensor, passages: Tensor) -> Tensor:
    scores = MNRL_SCALE * adapter(queries) @ passages.T
    on_positives = torch.logsumexp(scores.masked_fill(~positives, float("-inf")), dim=1)
    return (torch.logsumexp(scores, dim=1) - on_positives).mean()


class AdapterTrainer:
    """Trains a `QueryAdapter` for a base embedding (see the module's docstring).

    Args:
        config: `adapter`, `adapter_epochs`, `adapter_learning_rate`, `batch_size`, `val_fraction`,
            `seed` and `k` are read; the model's own training settings do not apply.
    """

    def __init__(self, config: FinetuneConfig | None = None) -> None:
        self.config = config or FinetuneConfig()

    def fit(
        self,
        train: QADataset,
        output_dir: str | Path,
        nodes: Sequence[TextNode] | None,
        base: BaseEmbedding,
        stored_vectors: Mapping[str, Sequence[float] | None] | None = None,
    ) -> FinetuneResult:
        """Train the adapter on `train` and save it with `metrics.json` (written last: it marks the adapter finished).

        Args:
            train: the training queries; validation queries are carved from them.
            output_dir: the adapter folder.
            nodes: the passages (a table's rows), grouped by their document (None: one per corpus document).
            base: the app's embedding: it embeds the training queries (once), and the passages when
                `stored_vectors` is None.
            stored_vectors: node id -> the vector the table stores for it: the passages as they are.

        Raises:
            TuningError: a node has no stored vector, no passage is left, a query's documents have no
                passage, or the query vectors' dimension is not the passages'.
        """
        cfg, out = self.config, Path(output_dir)
        start = time.perf_counter()
        by_source = source_nodes(train, list(nodes) if nodes is not None else None)
        rows = [(source, node) for source, group in by_source.items() for node in group]
        if not rows:
            raise TuningError("the table has no rows to train the adapter against; add documents first")
        passages = self._passages(rows, base, stored_vectors)
        queries, embedded = cached_query_vectors(base, [train.queries[q] for q in train.query_ids], out)
        if queries.shape[1] != passages.shape[1]:
            raise TuningError(
                f"the embedding makes {queries.shape[1]}-dim query vectors but the table stores {passages.shape[1]}-dim "
                "ones; tune with the embedding the table was built with"
            )
        sources = np.asarray([source for source, _ in rows], dtype=object)
        positives = np.stack([np.isin(sources, train.relevant_docs[q]) for q in train.query_ids])
        lost = int((~positives.any(axis=1)).sum())
        if lost:
            raise TuningError(
                f"the relevant documents of {counted(lost, 'training query')} are not in the table; fix relevant_docs"
            )
        position = {q: i for i, q in enumerate(train.query_ids)}
        fit_ids, val_ids = train.split(cfg.val_fraction, cfg.seed) if cfg.val_fraction > 0 else (train, None)
        fit = [position[q] for q in fit_ids.query_ids]
        val = [position[q] for q in val_ids.query_ids] if val_ids is not None else []
        adapter, metrics = self._train(
            torch.from_numpy(queries), torch.from_numpy(positives), torch.from_numpy(passages), fit, val
        )
        metrics = {
            "config": asdict(cfg),
            "mode": "adapter",
            "adapter": adapter.config(),
            "n_train_queries": len(fit),
            "n_val_queries": len(val),
            "n_passages": len(rows),
            "n_queries_embedded": embedded,
            **metrics,
            "train_seconds": round(time.perf_counter() - start, 2),
        }
        save_adapter(adapter, out, base)
        write_json(out / "metrics.json", metrics, indent=2)
        return FinetuneResult(out, metrics, metrics["train_seconds"])

    @staticmethod
    def _passages(
        rows: list[tuple[str, TextNode]], base: BaseEmbedding, stored: Mapping[str, Sequence[float] | None] | None
    ) -> np.ndarray:
        if stored is None:
            vectors = embed_texts(base, [node.get_content(metadata_mode=MetadataMode.EMBED) for _, node in rows])
        else:
            bare = sum(stored.get(node.node_id) is None for _, node in rows)
            if bare:
                raise TuningError(
                    f"{counted(bare, 'row')} of the table store no vector to train the adapter against; "
                    "re-embed the table (mode='full') or add its vectors first"
                )
            vectors = np.asarray([stored[node.node_id] for _, node in rows], dtype=np.float32)
        if not np.isfinite(vectors).all():
            raise TuningError("the table stores non-finite vectors; re-embed it (mode='full') before tuning an adapter")
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)

    def _train(
        self, queries: Tensor, positives: Tensor, passages: Tensor, fit: list[int], val: list[int]
    ) -> tuple[QueryAdapter, dict[str, Any]]:
        cfg = self.config
        with torch.random.fork_rng(devices=[]):  # seeded here without moving the app's own torch RNG
            torch.manual_seed(cfg.seed)
            adapter = QueryAdapter(queries.shape[1], cfg.adapter)
            optimizer = torch.optim.Adam(adapter.parameters(), lr=cfg.adapter_learning_rate)
            fit_q, fit_pos = queries[fit], positives[fit]
            val_q, val_pos = queries[val], positives[val]
            metrics: dict[str, Any] = {}
            best_state, best_score, best_epoch = None, -1.0, 0
            key = f"val_mrr@{_MRR_CUT}"
            for epoch in range(cfg.adapter_epochs + 1):
                if epoch > 0:
                    adapter.train()
                    for batch in torch.randperm(len(fit)).split(cfg.batch_size):
                        optimizer.zero_grad()
                        _loss(adapter, fit_q[batch], fit_pos[batch], passages).backward()
                        optimizer.step()
                    adapter.eval()
                if not val:
                    continue
                scores = _validation(adapter, val_q, val_pos, passages, cfg.k)
                if epoch == 0:
                    metrics["val_before"] = scores
                if scores[key] > best_score:  # ties keep the earlier epoch: the nearer the identity
                    best_state, best_score, best_epoch = (
                        {k: v.clone() for k, v in adapter.state_dict().items()},
                        scores[key],
                        epoch,
                    )
                    metrics["val_after"] = scores
            if best_state is not None:
                adapter.load_state_dict(best_state)
                metrics["best_epoch"] = best_epoch
            if not all(bool(torch.isfinite(p).all()) for p in adapter.parameters()):
                raise TuningError(
                    f"adapter training diverged at learning rate {cfg.adapter_learning_rate:g}; lower adapter_learning_rate"
                )
        return adapter.eval(), metrics
