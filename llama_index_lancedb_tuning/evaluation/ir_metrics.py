"""Per-query IR metrics at k, judged per source document: hit rate, reciprocal rank, nDCG, recall,
precision and average precision.

A ranked list holds the source document of each retrieved node, best first; a document may come
back in several nodes. The list is reduced to its documents in order of first appearance, each at
the rank of its first node: a document counts once, and its later nodes earn nothing, as misses
would. Ranks stay the positions the user sees, so hit rate and reciprocal rank equal LlamaIndex's
`HitRate` and `MRR` over the node sources.

Relevance is a grade per document (binary data: 1 for each relevant document). Grades above 0 are
relevant; nDCG alone weighs them:

- hit rate: 1 when a relevant document is in the top k, else 0.
- reciprocal rank: 1 / the rank of the first relevant document in the top k, 0 when none is.
- nDCG@k: DCG / IDCG, gain = grade, discount log2(rank + 1); IDCG is the DCG of the ideal
  ordering of all the query's relevant grades, cut at k (pytrec_eval's `ndcg_cut`).
- recall@k: relevant documents in the top k / the query's relevant documents.
- precision@k: relevant documents in the top k / k, however many results came back
  (sentence-transformers' `InformationRetrievalEvaluator`; LlamaIndex's `Precision` divides by
  the distinct documents retrieved instead).
- AP@k: the sum of precision@r over the ranks r <= k of relevant documents, / min(k, relevant
  documents), as sentence-transformers' `map@k` (LlamaIndex's `AveragePrecision` divides by all
  relevant documents, so it is lower when a query has more of them than k).

Scores are not read: the order of the list is the ranking, ties included.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..config import METRICS, MetricName

# How a metric is named beside its k in tables and verdicts (hit@5, nDCG@5).
METRIC_LABELS: dict[MetricName, str] = {
    "hit_rate": "hit",
    "mrr": "MRR",
    "ndcg": "nDCG",
    "recall": "recall",
    "precision": "precision",
    "map": "MAP",
}


def first_ranks(ranked_docs: Sequence[str], k: int) -> dict[str, int]:
    """Each document of the top k results with the 1-based rank of its first result, in order of first appearance."""
    ranks: dict[str, int] = {}
    for rank, doc in enumerate(ranked_docs[:k], start=1):
        ranks.setdefault(doc, rank)
    return ranks


def _dcg(gains: Sequence[float], ranks: Sequence[int]) -> float:
    return float(sum(g / np.log2(r + 1) for g, r in zip(gains, ranks)))


def query_scores(ranked_docs: Sequence[str], grades: Mapping[str, int], k: int) -> dict[MetricName, float]:
    """The metrics of one query at `k`.

    Args:
        ranked_docs: the source document of each retrieved result, best first (repeats allowed).
        grades: relevance by document; those above 0 are relevant, at least one must be.
        k: the cut.
    """
    relevant = sorted((g for g in grades.values() if g > 0), reverse=True)
    if not relevant:
        raise ValueError("a query needs at least one relevant document (a grade above 0) to be scored")
    found = [(rank, grades[doc]) for doc, rank in first_ranks(ranked_docs, k).items() if grades.get(doc, 0) > 0]
    ideal = relevant[:k]
    average_precision = sum(i / rank for i, (rank, _) in enumerate(found, start=1)) / min(k, len(relevant))
    return {
        "hit_rate": float(bool(found)),
        "mrr": 1.0 / found[0][0] if found else 0.0,
        "ndcg": _dcg([g for _, g in found], [r for r, _ in found]) / _dcg(ideal, range(1, len(ideal) + 1)),
        "recall": len(found) / len(relevant),
        "precision": len(found) / k,
        "map": average_precision,
    }


def per_query_scores(
    ranked: Sequence[Sequence[str]], grades: Sequence[Mapping[str, int]], k: int
) -> dict[MetricName, np.ndarray]:
    """Each metric's value per query, in the order of `ranked`.

    Args:
        ranked: per query, the source document of each retrieved result, best first.
        grades: per query, relevance by document (see `query_scores`).
        k: the cut.
    """
    rows = [query_scores(docs, g, k) for docs, g in zip(ranked, grades)]
    return {m: np.array([row[m] for row in rows], dtype=float) for m in METRICS}
