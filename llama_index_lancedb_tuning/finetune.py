"""Fine-tuning the embedding model on (query, passage) pairs with sentence-transformers' Trainer."""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from llama_index.core.schema import TextNode
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
from sentence_transformers.sentence_transformer.losses import (
    CachedMultipleNegativesRankingLoss,
    GISTEmbedLoss,
    MultipleNegativesRankingLoss,
)
from sentence_transformers.sentence_transformer.training_args import BatchSamplers
from sentence_transformers.util import mine_hard_negatives

from .chunking import SOURCE_ID_KEY
from .config import FinetuneConfig, PositiveChoice
from .dataset import QADataset
from .errors import TuningError
from .jsonfile import read_json, write_json
from .models import ENCODE_BATCH, resolve_model

logger = logging.getLogger(__name__)

_SELECTION_METRIC = "cosine_mrr@10"


@dataclass
class FinetuneResult:
    model_path: Path
    metrics: dict = field(default_factory=dict)
    train_seconds: float = 0.0


def source_nodes(dataset: QADataset, nodes: list[TextNode] | None) -> dict[str, list[TextNode]]:
    """Nodes grouped by the corpus document they came from; one node per document when unchunked."""
    if nodes is None:
        nodes = [TextNode(id_=doc_id, text=text, metadata={SOURCE_ID_KEY: doc_id}) for doc_id, text in dataset.corpus.items()]
    grouped: dict[str, list[TextNode]] = {}
    for node in nodes:
        grouped.setdefault(node.metadata.get(SOURCE_ID_KEY, node.ref_doc_id or node.node_id), []).append(node)
    return grouped


def training_pairs(
    dataset: QADataset,
    by_source: dict[str, list[TextNode]],
    model: SentenceTransformer,
    positives: PositiveChoice = "best",
    passage_vectors: dict[str, np.ndarray] | None = None,
) -> Dataset:
    """(anchor, positive) pairs: per query, the node of its relevant document the model ranks first
    (`best`), or every node of that document (`all`), which teaches the whole document's
    neighbourhood rather than one passage.

    `passage_vectors`: the model's normalised vectors by node text, when the caller has them.
    """
    anchors: list[str] = []
    texts_out: list[str] = []
    candidates = {q: [n for d in dataset.relevant_docs[q] for n in by_source.get(d, [])] for q in dataset.query_ids}
    missing = [q for q, c in candidates.items() if not c]
    if missing:
        raise TuningError(f"{len(missing)} training queries point at documents absent from the corpus; fix relevant_docs")
    query_emb = model.encode([dataset.queries[q] for q in dataset.query_ids], normalize_embeddings=True, convert_to_numpy=True)
    text_emb = passage_vectors
    if text_emb is None:
        texts = sorted({n.text for c in candidates.values() for n in c})
        text_emb = dict(zip(texts, model.encode(texts, normalize_embeddings=True, convert_to_numpy=True, batch_size=ENCODE_BATCH)))
    for q, qe in zip(dataset.query_ids, query_emb):
        chosen = candidates[q] if positives == "all" else [max(candidates[q], key=lambda n: float(text_emb[n.text] @ qe))]
        for node in chosen:
            anchors.append(dataset.queries[q])
            texts_out.append(node.text)
    return Dataset.from_dict({"anchor": anchors, "positive": texts_out})


def ir_evaluator(dataset: QADataset, by_source: dict[str, list[TextNode]], k: int, name: str) -> InformationRetrievalEvaluator:
    """Sentence-transformers' IR evaluator at node level: any node of a relevant document counts."""
    corpus = {n.node_id: n.text for ns in by_source.values() for n in ns}
    relevant = {q: {n.node_id for d in dataset.relevant_docs[q] for n in by_source.get(d, [])} for q in dataset.query_ids}
    return InformationRetrievalEvaluator(
        queries=dataset.queries,
        corpus=corpus,
        relevant_docs=relevant,
        accuracy_at_k=[1, k, 10],
        precision_recall_at_k=[k],
        mrr_at_k=[10],
        ndcg_at_k=[10],
        map_at_k=[10],
        name=name,
        write_csv=False,
        batch_size=ENCODE_BATCH,
    )


class EmbeddingFinetuner:
    """Fine-tunes a sentence-transformers model with MNRL (or a variant) and the no-duplicates sampler.

    Validation queries are carved from the training queries (seeded) to pick the best
    epoch; test queries never reach this class.
    """

    def __init__(self, config: FinetuneConfig | None = None) -> None:
        self.config = config or FinetuneConfig()

    def _loss(self, model: SentenceTransformer):
        cfg = self.config
        if cfg.loss == "mnrl":
            return MultipleNegativesRankingLoss(model)
        if cfg.loss == "cached_mnrl":
            return CachedMultipleNegativesRankingLoss(model, mini_batch_size=16)
        if cfg.loss == "gist":
            # The frozen base model is the guide: it masks in-batch "negatives" it already
            # scores above the positive, which on a small corpus are often other chunks of
            # the same document.
            return GISTEmbedLoss(model, guide=SentenceTransformer(resolve_model(cfg.base_model), device=str(model.device)))
        raise TuningError(f"unknown loss '{cfg.loss}'; use one of mnrl, cached_mnrl, gist")

    def _with_hard_negatives(self, pairs: Dataset, by_source: dict[str, list[TextNode]], model: SentenceTransformer) -> Dataset:
        corpus = sorted({n.text for ns in by_source.values() for n in ns})
        source_of = {n.text: s for s, ns in by_source.items() for n in ns}
        mined = mine_hard_negatives(
            pairs,
            model,
            corpus=corpus,
            num_negatives=self.config.hard_negatives,
            range_min=2,
            range_max=30,
            relative_margin=0.05,
            sampling_strategy="top",
            output_format="n-tuple",
            verbose=False,
        )
        # Another chunk of the positive's own document is not a negative: drop such rows' negatives.
        neg_columns = [c for c in mined.column_names if c.startswith("negative")]
        keep = [i for i, row in enumerate(mined) if all(source_of.get(row[c]) != source_of.get(row["positive"]) for c in neg_columns)]
        return mined.select(keep) if len(keep) >= len(mined) // 2 else pairs

    def fit(
        self,
        train: QADataset,
        output_dir: str | Path,
        nodes: list[TextNode] | None = None,
        resume: bool = False,
    ) -> FinetuneResult:
        """Fine-tune on `train` and save a sentence-transformers model plus `metrics.json` in `output_dir`.

        `nodes` are the chunks the corpus documents were split into (None: one node per document).
        """
        cfg = self.config
        output_dir = Path(output_dir)
        start = time.perf_counter()
        fit_ds, val_ds = train.split(cfg.val_fraction, cfg.seed) if cfg.val_fraction > 0 else (train, None)
        by_source = source_nodes(train, nodes)
        model = SentenceTransformer(resolve_model(cfg.base_model))
        loss = QueryOnlyLoss.for_corpus(model, by_source) if cfg.freeze_passages else None
        # Positives are picked by the base model for every training query at once, so a refit
        # reuses them; with frozen passages the loss's vectors serve, encoded only once.
        all_pairs = training_pairs(train, by_source, model, cfg.positives, loss.vectors_by_text() if loss else None)
        if cfg.hard_negatives > 0 and not cfg.freeze_passages:
            all_pairs = self._with_hard_negatives(all_pairs, by_source, model)
        fit_queries = set(fit_ds.queries.values())
        pairs = all_pairs.select([i for i, a in enumerate(all_pairs["anchor"]) if a in fit_queries]) if val_ds is not None else all_pairs
        evaluator = ir_evaluator(val_ds, by_source, cfg.k, "val") if val_ds is not None else None
        metrics: dict = {"config": asdict(cfg), "n_train_pairs": len(pairs), "n_val_queries": len(val_ds or [])}
        if loss is not None:
            pairs, evaluator = QueryOnlyLoss.label_pairs(pairs, by_source), None
        if evaluator is not None and cfg.eval_each_epoch:
            metrics["val_before"] = _rounded(evaluator(model))
        final_evaluator, evaluator = evaluator, evaluator if cfg.eval_each_epoch else None

        will_refit = cfg.refit and evaluator is not None
        selection_path = output_dir / "selection.json"
        selection = read_json(selection_path) if resume and will_refit else None
        if selection is None:
            trainer = self._train(model, pairs, loss, evaluator, output_dir / "checkpoints", cfg.epochs, resume)
            if evaluator is not None:  # the kept epoch's scores: no second pass over the corpus
                best = _best_evaluation(trainer)
                metrics["val_after"] = _rounded({k[len("eval_"):]: v for k, v in best.items() if k.startswith("eval_val_")})
                metrics["best_checkpoint"] = trainer.state.best_model_checkpoint
                metrics["best_epoch"] = max(1, round(best["epoch"]))
            elif final_evaluator is not None:
                metrics["val_after"] = _rounded(final_evaluator(model))
            if cfg.freeze_passages and val_ds is not None:
                metrics["val_after"] = loss.validation_hits(val_ds, by_source, cfg.k)
            selection = {k: metrics[k] for k in ("val_before", "val_after", "best_checkpoint", "best_epoch") if k in metrics}
            if will_refit:
                write_json(selection_path, selection, indent=2)  # a killed refit resumes without training this stage again
        metrics.update(selection)

        if will_refit:
            # Validation queries are trained on from here: the val_* figures above describe the
            # selection model, not the refit one.
            model = SentenceTransformer(resolve_model(cfg.base_model))
            self._train(model, all_pairs, None, None, output_dir / "refit_checkpoints", selection["best_epoch"], resume)
            metrics["refit"] = {"epochs": selection["best_epoch"], "n_train_pairs": len(all_pairs)}
        model.save(str(output_dir))
        metrics["train_seconds"] = round(time.perf_counter() - start, 2)
        write_json(output_dir / "metrics.json", metrics, indent=2)  # its presence marks training finished: never half-written
        return FinetuneResult(output_dir, metrics, metrics["train_seconds"])

    def _train(
        self,
        model: SentenceTransformer,
        pairs: Dataset,
        loss: torch.nn.Module | None,
        evaluator: InformationRetrievalEvaluator | None,
        checkpoint_dir: Path,
        epochs: int,
        resume: bool,
    ) -> SentenceTransformerTrainer:
        cfg = self.config
        args = SentenceTransformerTrainingArguments(
            output_dir=str(checkpoint_dir),
            num_train_epochs=epochs,
            per_device_train_batch_size=cfg.batch_size,
            per_device_eval_batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate,
            warmup_steps=cfg.warmup_ratio,  # a float below 1 is a ratio in transformers 5
            batch_sampler=BatchSamplers.NO_DUPLICATES,
            seed=cfg.seed,
            data_seed=cfg.seed,
            eval_strategy="epoch" if evaluator else "no",
            save_strategy="epoch",
            save_total_limit=2,
            load_best_model_at_end=evaluator is not None,
            metric_for_best_model=f"eval_val_{_SELECTION_METRIC}" if evaluator else None,
            greater_is_better=True,
            logging_steps=10,
            report_to="none",
            disable_tqdm=not cfg.show_progress,
        )
        trainer = SentenceTransformerTrainer(
            model=model,
            args=args,
            train_dataset=pairs,
            loss=loss or self._loss(model),
            evaluator=evaluator,
        )
        checkpoints = list(checkpoint_dir.glob("checkpoint-*"))
        trainer.train(resume_from_checkpoint=bool(resume and checkpoints) or None)
        return trainer


def _best_evaluation(trainer: SentenceTransformerTrainer) -> dict:
    """The logged validation scores of the epoch the trainer kept (its best checkpoint)."""
    key = f"eval_val_{_SELECTION_METRIC}"
    scored = [entry for entry in trainer.state.log_history if key in entry]
    return max(scored, key=lambda entry: entry[key])  # max keeps the first of equals, as the trainer does


def _rounded(scores: dict) -> dict:
    return {k: round(float(v), 4) for k, v in scores.items() if isinstance(v, (int, float, np.floating))}


class QueryOnlyLoss(torch.nn.Module):
    """Softmax over the whole corpus of frozen passage vectors; only the query encoder learns.

    Each row is (query text, index of its positive node); the other nodes of the positive's
    own document are masked, not counted as negatives. Passages are embedded once, by the
    base model, so a training step runs the encoder on short queries only.
    """

    def __init__(
        self, model: SentenceTransformer, texts: list[str], passages: torch.Tensor, source: torch.Tensor, scale: float = 20.0
    ) -> None:
        super().__init__()
        self.model = model
        self.texts = texts
        self.register_buffer("passages", passages)
        self.register_buffer("source", source)
        self.scale = scale

    @staticmethod
    def node_texts(by_source: dict[str, list[TextNode]]) -> tuple[list[str], list[str]]:
        items = sorted({(n.text, s) for s, ns in by_source.items() for n in ns})
        return [t for t, _ in items], [s for _, s in items]

    @classmethod
    def for_corpus(cls, model: SentenceTransformer, by_source: dict[str, list[TextNode]]) -> QueryOnlyLoss:
        """Embeds every node once with the (still untrained) model."""
        texts, sources = cls.node_texts(by_source)
        vectors = model.encode(texts, batch_size=ENCODE_BATCH, normalize_embeddings=True, convert_to_tensor=True).detach().clone()
        codes = {s: i for i, s in enumerate(sorted(set(sources)))}
        return cls(model, texts, vectors, torch.tensor([codes[s] for s in sources]))

    def vectors_by_text(self) -> dict[str, np.ndarray]:
        return dict(zip(self.texts, self.passages.cpu().numpy()))

    @classmethod
    def label_pairs(cls, pairs: Dataset, by_source: dict[str, list[TextNode]]) -> Dataset:
        position = {t: i for i, t in enumerate(cls.node_texts(by_source)[0])}
        return Dataset.from_dict({"anchor": pairs["anchor"], "label": [position[t] for t in pairs["positive"]]})

    def forward(self, sentence_features, labels: torch.Tensor) -> torch.Tensor:
        queries = torch.nn.functional.normalize(self.model(sentence_features[0])["sentence_embedding"], dim=-1)
        scores = self.scale * queries @ self.passages.T
        same_doc = self.source[labels].unsqueeze(1) == self.source.unsqueeze(0)
        same_doc[torch.arange(len(labels)), labels] = False
        return torch.nn.functional.cross_entropy(scores.masked_fill(same_doc, float("-inf")), labels)

    @torch.no_grad()
    def validation_hits(self, dataset: QADataset, by_source: dict[str, list[TextNode]], k: int) -> dict:
        """hit@k of `dataset`'s queries against the frozen passages (a hit: any node of a relevant document)."""
        _, sources = self.node_texts(by_source)
        q = self.model.encode([dataset.queries[i] for i in dataset.query_ids], normalize_embeddings=True, convert_to_tensor=True)
        top = (q.to(self.passages.device) @ self.passages.T).topk(min(k, len(sources))).indices.tolist()
        hits = [any(sources[j] in dataset.relevant_docs[i] for j in row) for i, row in zip(dataset.query_ids, top)]
        return {f"val_frozen_hit@{k}": round(sum(hits) / max(len(hits), 1), 4)}

    def get_config_dict(self) -> dict:
        return {"scale": self.scale, "passages": int(self.passages.shape[0])}
