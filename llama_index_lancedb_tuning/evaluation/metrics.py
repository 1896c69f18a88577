"""Result rows: hit rate, MRR, nDCG, recall, precision and MAP at k with 95% bootstrap intervals, and the paired McNemar test."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from math import comb
from typing import Any

import numpy as np
from llama_index.core.schema import NodeWithScore

from ..data.chunking import SOURCE_ID_KEY

BOOTSTRAP_SAMPLES = 2000


def node_source(hit: NodeWithScore) -> str:
    """The corpus document a hit came from: relevance is judged per document, not per chunk."""
    node = hit.node
    return node.metadata.get(SOURCE_ID_KEY) or node.ref_doc_id or node.node_id


def reciprocal_ranks(results: Sequence[Sequence[NodeWithScore]], relevant: Sequence[set[str]], k: int) -> np.ndarray:
    """1/rank of the first top-k node from a relevant document, 0 when none (an empty list is a miss)."""
    out = np.zeros(len(results))
    for i, (hits, rel) in enumerate(zip(results, relevant)):
        for rank, hit in enumerate(hits[:k], start=1):
            if node_source(hit) in rel:
                out[i] = 1.0 / rank
                break
    return out


def bootstrap_ci(values: np.ndarray, seed: int = 0, samples: int = BOOTSTRAP_SAMPLES) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of the mean."""
    if len(values) == 0:
        return (0.0, 0.0)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(samples, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return (round(float(low), 4), round(float(high), 4))


def mcnemar_p(before: np.ndarray, after: np.ndarray) -> float:
    """Exact two-sided McNemar test on paired hits (same queries, two systems)."""
    b = int(np.sum((before > 0) & (after == 0)))
    c = int(np.sum((before == 0) & (after > 0)))
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(min(b, c) + 1)) / 2**n
    return min(1.0, 2 * tail)


@dataclass
class EvalResult:
    """One retriever's scores on one query set: rates with their n and 95% interval.

    `ci95` is hit rate's interval; `intervals` holds every metric's. `ndcg`, `recall`, `precision`
    and `map` are None on a row made from reciprocal ranks alone, which cannot give them.
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
    ndcg: float | None = None
    recall: float | None = None
    precision: float | None = None
    map: float | None = None
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    per_query: list[float] = field(default_factory=list, repr=False)
    per_query_metrics: dict[str, list[float]] = field(default_factory=dict, repr=False)

    @classmethod
    def from_reciprocal_ranks(
        cls, rr: np.ndarray, model: str, query_type: str, reranker: str | None, latency_ms: float, seed: int = 0
    ) -> EvalResult:
        hits = (rr > 0).astype(float)
        return cls.from_metrics({"hit_rate": hits, "mrr": rr}, model, query_type, reranker, latency_ms, seed)

    @classmethod
    def from_metrics(
        cls, values: dict[str, np.ndarray], model: str, query_type: str, reranker: str | None, latency_ms: float, seed: int = 0
    ) -> EvalResult:
        """A row from per-query values by metric name (`hit_rate` and `mrr` at least)."""
        means = {name: round(float(v.mean()), 4) if len(v) else 0.0 for name, v in values.items()}
        intervals = {name: bootstrap_ci(v, seed) for name, v in values.items()}
        return cls(
            model=model,
            query_type=query_type,
            reranker=reranker,
            hit_rate=means["hit_rate"],
            mrr=means["mrr"],
            ci95=intervals["hit_rate"],
            n=len(values["hit_rate"]),
            latency_ms=latency_ms,
            ndcg=means.get("ndcg"),
            recall=means.get("recall"),
            precision=means.get("precision"),
            map=means.get("map"),
            intervals=intervals,
            per_query=values["mrr"].tolist(),
            per_query_metrics={name: v.tolist() for name, v in values.items()},
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("per_query")
        out.pop("per_query_metrics")
        out["ci95"] = list(self.ci95)
        out["intervals"] = {name: list(ci) for name, ci in self.intervals.items()}
        return out


def with_significance(baseline: Sequence[EvalResult], tuned: Sequence[EvalResult]) -> None:
    """Attach the McNemar p-value of each tuned row against the baseline row of its query type."""
    base_by_type = {r.query_type: r for r in baseline}
    for row in tuned:
        base = base_by_type.get(row.query_type)
        if base is not None:
            row.p_vs_baseline = round(mcnemar_p(np.array(base.per_query), np.array(row.per_query)), 4)
