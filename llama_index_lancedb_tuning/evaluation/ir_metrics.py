"""Per-query IR metrics at k: hit rate, reciprocal rank, nDCG, recall, precision and average precision.

Relevance is judged per document. A ranked list of nodes is first reduced to the documents it
came from, in the order each first appears among the top k nodes, so a document counts once, at
its first rank, however many of its chunks were retrieved. Grades come from the dataset: 1 for
every relevant document, or BEIR's graded scores. nDCG uses the grade as gain over a log2(rank + 1)
discount, against the ideal ordering of every relevant grade (pytrec_eval's `ndcg_cut`); the
other metrics count a grade above 0 as relevant. Precision divides by k and average precision by
min(k, relevant documents), as sentence-transformers' `InformationRetrievalEvaluator` does.
A result row's MRR is the one exception: it keeps the rank of the first relevant node, as
LlamaIndex's `RetrieverEvaluator` counts it over node ids (`metrics.reciprocal_ranks`); it equals
this module's document MRR wherever no document repeats ahead of the first relevant one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..config import METRIC_NAMES


def ranked_documents(sources: Sequence[str], k: int) -> list[str]:
    """The documents of the top `k` results, each once, in the order it first appears."""
    return list(dict.fromkeys(sources[:k]))


def query_metrics(documents: Sequence[str], grades: Mapping[str, float], k: int) -> dict[str, float]:
    """Every metric of `METRIC_NAMES` for one query.

    Args:
        documents: the query's ranked documents (`ranked_documents`).
        grades: relevance grade of each relevant document (above 0).
        k: the cut.
    """
    relevant = {doc: g for doc, g in grades.items() if g > 0}
    ranks = [rank for rank, doc in enumerate(documents[:k], start=1) if doc in relevant]
    gains = [relevant[doc] for doc in documents[:k] if doc in relevant]
    dcg = sum(g / np.log2(r + 1) for g, r in zip(gains, ranks))
    ideal = sorted(relevant.values(), reverse=True)[:k]
    idcg = sum(g / np.log2(r + 1) for r, g in enumerate(ideal, start=1))
    precisions = [i / r for i, r in enumerate(ranks, start=1)]
    return {
        "hit_rate": 1.0 if ranks else 0.0,
        "mrr": 1.0 / ranks[0] if ranks else 0.0,
        "ndcg": float(dcg / idcg) if idcg else 0.0,
        "recall": len(ranks) / len(relevant) if relevant else 0.0,
        "precision": len(ranks) / k,
        "map": sum(precisions) / min(k, len(relevant)) if relevant else 0.0,
    }


def metric_arrays(per_query: Sequence[Mapping[str, float]]) -> dict[str, np.ndarray]:
    """The metrics of many queries as one array per metric, in query order."""
    return {name: np.array([q[name] for q in per_query], dtype=float) for name in METRIC_NAMES}
