"""The (anchor, positive) rows the trainer sees: labeled queries against their documents' nodes,
and label-free pairs from the corpus a model will serve."""

from __future__ import annotations

import random

import numpy as np
from datasets import Dataset, concatenate_datasets
from llama_index.core.schema import TextNode
from sentence_transformers import SentenceTransformer

from ..config import PositiveChoice
from ..data.chunking import SOURCE_ID_KEY
from ..data.qa_dataset import QADataset
from ..encoding.model_ids import ENCODE_BATCH
from ..errors import TuningError


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
    # Nothing to rank where every query has one candidate (generated pairs) or all are kept.
    if positives == "best" and any(len(c) > 1 for c in candidates.values()):
        query_emb = model.encode(
            [dataset.queries[q] for q in dataset.query_ids], normalize_embeddings=True, convert_to_numpy=True
        )
        text_emb = passage_vectors
        if text_emb is None:
            texts = sorted({n.text for c in candidates.values() for n in c})
            text_emb = dict(
                zip(texts, model.encode(texts, normalize_embeddings=True, convert_to_numpy=True, batch_size=ENCODE_BATCH))
            )
        vectors = text_emb
        candidates = {
            q: [max(candidates[q], key=lambda n: float(vectors[n.text] @ qe))] for q, qe in zip(dataset.query_ids, query_emb)
        }
    for q in dataset.query_ids:
        for node in candidates[q]:
            anchors.append(dataset.queries[q])
            texts_out.append(node.text)
    return Dataset.from_dict({"anchor": anchors, "positive": texts_out})


def with_adaptation_pairs(pairs: Dataset, adaptation: QADataset, seed: int) -> tuple[Dataset, int]:
    """`pairs` plus as many label-free pairs (seeded draw) from `adaptation`, whose every query has
    one passage; and how many were added.

    An equal share, fixed before any figure was seen: the labeled pairs keep the weight of real
    queries, and the run costs at most twice the labeled training.
    """
    ids = list(adaptation.query_ids)
    drawn = sorted(random.Random(seed).sample(range(len(ids)), min(len(ids), len(pairs))))
    rows = {
        "anchor": [adaptation.queries[ids[i]] for i in drawn],
        "positive": [adaptation.corpus[adaptation.relevant_docs[ids[i]][0]] for i in drawn],
    }
    return concatenate_datasets([pairs, Dataset.from_dict(rows)]), len(drawn)
