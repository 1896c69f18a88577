"""The query-only loss: a sentence-transformers loss that tunes queries against frozen passage vectors."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from llama_index.core.schema import TextNode
from sentence_transformers import SentenceTransformer
from torch import Tensor, nn

from ..data.qa_dataset import QADataset
from ..encoding.model_ids import ENCODE_BATCH


class QueryOnlyLoss(nn.Module):
    # Declared for type checkers: nn.Module types its attributes and buffers as Tensor | Module.
    model: SentenceTransformer
    passages: Tensor
    groups: Tensor

    def __init__(
        self, model: SentenceTransformer, texts: list[str], passages: Tensor, groups: Tensor, scale: float = 20.0
    ) -> None:
        """Softmax over the whole corpus of frozen passage vectors; only the query encoder learns.

        Each query is scored against every passage of the corpus, so every other document is a
        negative, not just the batch's. Passages are embedded once, by the base model, so a step
        runs the encoder on short queries only, and an index built with the base model stays
        valid for the tuned query encoder. The other passages of the positive's own document
        are masked: another chunk of the right document is not a wrong answer.

        Args:
            model: the SentenceTransformer whose query embeddings are trained.
            texts: the passage texts, in the order of `passages`; a label is a position in it.
            passages: (n_passages, dim) normalised passage vectors, kept fixed (a buffer, not a parameter).
            groups: (n_passages,) integer id of each passage's document.
            scale: multiplies the cosine similarities (1 / temperature), as in MultipleNegativesRankingLoss.

        Requirements:
            (anchor, label) rows: a query text and the position of its positive passage in `texts`;
            `label_pairs` turns (anchor, positive) pairs into them.

        Inputs:
            +-------------------+-----------------------------+
            | Texts             | Labels                      |
            +===================+=============================+
            | (anchor,)         | index of the positive       |
            +-------------------+-----------------------------+

        Relations:
            Like MultipleNegativesRankingLoss with the whole corpus as negatives and the
            passage side frozen.
        """
        super().__init__()
        self.model = model
        self.texts = texts
        self.register_buffer("passages", passages)
        self.register_buffer("groups", groups)
        self.scale = scale

    @staticmethod
    def node_texts(by_source: dict[str, list[TextNode]]) -> tuple[list[str], list[str]]:
        """Distinct node texts of the corpus, sorted, with the document each came from."""
        items = sorted({(n.text, s) for s, ns in by_source.items() for n in ns})
        return [t for t, _ in items], [s for _, s in items]

    @classmethod
    def for_corpus(
        cls,
        model: SentenceTransformer,
        by_source: dict[str, list[TextNode]],
        stored_vectors: Mapping[str, Sequence[float]] | None = None,
    ) -> QueryOnlyLoss:
        """The loss over every node of `by_source`, its passages embedded once with the (still untrained) model,
        or, with `stored_vectors` (node id -> vector, e.g. a table's own), those vectors as they are.

        Stored vectors keep the loss exact for a table whose documents were embedded with text the
        node's `text` alone does not hold (LlamaIndex embeds metadata too), and save encoding the corpus.
        """
        texts, sources = cls.node_texts(by_source)
        if stored_vectors is None:
            vectors = (
                model.encode(texts, batch_size=ENCODE_BATCH, normalize_embeddings=True, convert_to_tensor=True).detach().clone()
            )
        else:
            node_of = {
                (n.text, s): n.node_id for s, ns in by_source.items() for n in reversed(ns)
            }  # the first node of equal ones
            rows = np.asarray([stored_vectors[node_of[(t, s)]] for t, s in zip(texts, sources)], dtype=np.float32)
            vectors = nn.functional.normalize(torch.from_numpy(rows), dim=-1).to(model.device)
        codes = {s: i for i, s in enumerate(sorted(set(sources)))}
        return cls(model, texts, vectors, torch.tensor([codes[s] for s in sources]))

    def vectors_by_text(self) -> dict[str, np.ndarray]:
        return dict(zip(self.texts, self.passages.cpu().numpy()))

    @classmethod
    def label_pairs(cls, pairs: Dataset, by_source: dict[str, list[TextNode]]) -> Dataset:
        """(anchor, positive) pairs as the (anchor, label) rows this loss trains on."""
        position = {t: i for i, t in enumerate(cls.node_texts(by_source)[0])}
        return Dataset.from_dict({"anchor": pairs["anchor"], "label": [position[t] for t in pairs["positive"]]})

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor) -> Tensor:
        anchor_features = next(iter(sentence_features))
        queries = nn.functional.normalize(self.model(anchor_features)["sentence_embedding"], dim=-1)
        scores = self.scale * queries @ self.passages.T
        same_doc = self.groups[labels].unsqueeze(1) == self.groups.unsqueeze(0)
        same_doc[torch.arange(len(labels)), labels] = False
        return nn.functional.cross_entropy(scores.masked_fill(same_doc, float("-inf")), labels)

    @torch.no_grad()
    def validation_hits(self, dataset: QADataset, by_source: dict[str, list[TextNode]], k: int) -> dict:
        """hit@k of `dataset`'s queries against the frozen passages (a hit: any node of a relevant document)."""
        _, sources = self.node_texts(by_source)
        # Under torchrun the trainer swaps the DistributedDataParallel wrapper in as `self.model`; it has no `encode`.
        model: SentenceTransformer = getattr(self.model, "module", self.model)
        q = model.encode([dataset.queries[i] for i in dataset.query_ids], normalize_embeddings=True, convert_to_tensor=True)
        top = (q.to(self.passages.device) @ self.passages.T).topk(min(k, len(sources))).indices.tolist()
        hits = [any(sources[j] in dataset.relevant_docs[i] for j in row) for i, row in zip(dataset.query_ids, top)]
        return {f"val_frozen_hit@{k}": round(sum(hits) / max(len(hits), 1), 4)}

    def get_config_dict(self) -> dict[str, Any]:
        return {"scale": self.scale, "passages": int(self.passages.shape[0])}
