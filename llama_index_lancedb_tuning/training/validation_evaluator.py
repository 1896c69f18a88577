"""The validation evaluator that picks the epoch: sentence-transformers' IR evaluator over the training nodes."""

from __future__ import annotations

from typing import Any

import numpy as np
from llama_index.core.schema import TextNode
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

from ..data.qa_dataset import QADataset
from ..encoding.model_ids import ENCODE_BATCH

# The most nodes the validation evaluator encodes each epoch (`ir_evaluator`).
VALIDATION_CORPUS_NODES = 4000


def ir_evaluator(
    dataset: QADataset,
    by_source: dict[str, list[TextNode]],
    k: int,
    name: str,
    seed: int = 0,
    max_nodes: int = VALIDATION_CORPUS_NODES,
) -> InformationRetrievalEvaluator:
    """Sentence-transformers' IR evaluator at node level: any node of a relevant document counts.

    The corpus is every node of the queries' relevant documents and, up to `max_nodes` in all, a
    seeded sample of the other nodes as distractors: it is encoded at every epoch, and on a corpus
    of tens of thousands of nodes that costs more than the epoch (sentence-transformers' own
    training examples cut their evaluation corpora the same way). It only picks the epoch; the
    report and the gate search the whole table.
    """
    relevant = {q: {n.node_id for d in dataset.relevant_docs[q] for n in by_source.get(d, [])} for q in dataset.query_ids}
    nodes = [n for ns in by_source.values() for n in ns]
    needed = set().union(*relevant.values())
    others = [n for n in nodes if n.node_id not in needed]
    room = max(0, max_nodes - len(needed))
    if len(others) > room:
        keep = np.random.default_rng(seed).choice(len(others), size=room, replace=False)
        others = [others[i] for i in sorted(keep)]
    corpus = {n.node_id: n.text for n in nodes if n.node_id in needed} | {n.node_id: n.text for n in others}
    queries: dict[str, Any] = dict(dataset.queries)  # sentence-transformers types inputs as any modality
    return InformationRetrievalEvaluator(
        queries=queries,
        corpus=dict[str, Any](corpus),
        relevant_docs=relevant,
        # Each cut once: the evaluator adds a query's hit once per entry, so a repeated cut (k=10) reads above 1.
        accuracy_at_k=sorted({1, k, 10}),
        precision_recall_at_k=[k],
        mrr_at_k=[10],
        ndcg_at_k=[10],
        map_at_k=[10],
        name=name,
        write_csv=False,
        batch_size=ENCODE_BATCH,
    )
