"""A retriever's row of metrics at k (evaluation.ir_metrics), 95% bootstrap intervals, and paired tests:
McNemar's on hits, the sign test on graded per-query scores."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from math import comb
from typing import Any

import numpy as np
from llama_index.core.schema import NodeWithScore

from ..config import METRICS, MetricName
from ..data.chunking import SOURCE_ID_KEY
from ..errors import TuningError

BOOTSTRAP_SAMPLES = 2000


def node_source(hit: NodeWithScore) -> str:
    """The corpus document a hit came from: relevance is judged per document, not per chunk."""
    node = hit.node
    return node.metadata.get(SOURCE_ID_KEY) or node.ref_doc_id or node.node_id


def ranked_sources(results: Sequence[Sequence[NodeWithScore]]) -> list[list[str]]:
    """Per query, the source document of each retrieved node, best first: what `ir_metrics` scores."""
    return [[node_source(hit) for hit in hits] for hits in results]


def bootstrap_ci(values: np.ndarray, seed: int = 0, samples: int = BOOTSTRAP_SAMPLES) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of the mean."""
    if len(values) == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(samples, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return (round(float(low), 4), round(float(high), 4))


def _two_sided_binomial(worse: int, better: int) -> float:
    """Exact two-sided binomial test of `worse` against `better` paired changes, each equally likely by chance."""
    n = worse + better
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(min(worse, better) + 1)) / 2**n
    return min(1.0, 2 * tail)


def mcnemar_p(before: np.ndarray, after: np.ndarray) -> float:
    """Exact two-sided McNemar test on paired hits (same queries, two systems)."""
    return _two_sided_binomial(int(np.sum((before > 0) & (after == 0))), int(np.sum((before == 0) & (after > 0))))


def sign_test_p(before: np.ndarray, after: np.ndarray) -> float:
    """Exact two-sided sign test on paired per-query scores (same queries, two systems): the queries
    that got worse against those that got better, ties dropped. On hits (0/1) it is McNemar's test."""
    return _two_sided_binomial(int(np.sum(after < before)), int(np.sum(after > before)))


@dataclass
class EvalResult:
    """One retriever's scores on one query set: means at k with their n and 95% intervals.

    `ci95` is the hit rate's interval, `intervals` every metric's; `per_query` holds the reciprocal
    ranks and `per_query_metrics` each metric's values, both in the dataset's query order. A row
    read from a run directory that predates a metric has None for it.
    """

    model: str
    query_type: str
    reranker: str | None
    hit_rate: float
    mrr: float
    ci95: tuple[float, float]
    n: int
    latency_ms: float
    p_vs_baseline: float | None = None
    per_query: list[float] = field(default_factory=list, repr=False)
    ndcg: float | None = None
    recall: float | None = None
    precision: float | None = None
    map: float | None = None
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    per_query_metrics: dict[str, list[float]] = field(default_factory=dict, repr=False)

    @classmethod
    def from_scores(
        cls,
        scores: Mapping[MetricName, np.ndarray],
        model: str,
        query_type: str,
        reranker: str | None,
        latency_ms: float,
        seed: int = 0,
    ) -> EvalResult:
        """The row of per-query `scores` (`ir_metrics.per_query_scores`): each metric's mean and interval.

        Args:
            scores: every metric's per-query values.
            model, query_type, reranker: labels for the report.
            latency_ms: milliseconds per query.
            seed: the bootstrap's seed.
        """
        means = {m: round(float(scores[m].mean()), 4) if len(scores[m]) else 0.0 for m in METRICS}
        intervals: dict[str, tuple[float, float]] = {m: bootstrap_ci(scores[m], seed) for m in METRICS}
        return cls(
            model=model,
            query_type=query_type,
            reranker=reranker,
            ci95=intervals["hit_rate"],
            n=len(scores["hit_rate"]),
            latency_ms=latency_ms,
            per_query=scores["mrr"].tolist(),
            intervals=intervals,
            per_query_metrics={m: scores[m].tolist() for m in METRICS},
            **means,
        )

    def mean(self, metric: MetricName) -> float | None:
        """The metric's mean over the queries; None where this row has no figure for it."""
        value: float | None = getattr(self, metric)
        return value

    def query_values(self, metric: MetricName) -> np.ndarray:
        """The metric's value per query; hit rate and reciprocal rank come from `per_query` in rows made without the others."""
        if metric in self.per_query_metrics:
            return np.array(self.per_query_metrics[metric])
        if metric in ("hit_rate", "mrr"):
            reciprocal = np.array(self.per_query)
            return (reciprocal > 0).astype(float) if metric == "hit_rate" else reciprocal
        raise TuningError(f"the {self.model} {self.query_type} row has no per-query {metric}; score it again to compare on it")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("per_query")
        out.pop("per_query_metrics")
        out["ci95"] = list(self.ci95)
        out["intervals"] = {m: list(ci) for m, ci in self.intervals.items()}
        return out

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> EvalResult:
        """A row as `to_dict` (and the per-query lists a run directory keeps beside it) wrote it."""
        intervals = {m: (ci[0], ci[1]) for m, ci in row.get("intervals", {}).items()}
        return cls(**{**row, "ci95": tuple(row["ci95"]), "intervals": intervals})


def with_significance(baseline: Sequence[EvalResult], tuned: Sequence[EvalResult]) -> None:
    """Attach the McNemar p-value of each tuned row against the baseline row of its query type."""
    base_by_type = {r.query_type: r for r in baseline}
    for row in tuned:
        base = base_by_type.get(row.query_type)
        if base is not None:
            row.p_vs_baseline = round(mcnemar_p(np.array(base.per_query), np.array(row.per_query)), 4)
