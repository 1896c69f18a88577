"""Hit-rate and MRR at k, a 95% bootstrap interval, and the paired McNemar test."""

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
    """One retriever's scores on one query set: rates with their n and 95% interval."""

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

    @classmethod
    def from_reciprocal_ranks(
        cls, rr: np.ndarray, model: str, query_type: str, reranker: str | None, latency_ms: float, seed: int = 0
    ) -> EvalResult:
        hits = (rr > 0).astype(float)
        return cls(
            model=model,
            query_type=query_type,
            reranker=reranker,
            hit_rate=round(float(hits.mean()), 4) if len(hits) else 0.0,
            mrr=round(float(rr.mean()), 4) if len(rr) else 0.0,
            ci95=bootstrap_ci(hits, seed),
            n=len(hits),
            latency_ms=latency_ms,
            per_query=rr.tolist(),
        )

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out.pop("per_query")
        out["ci95"] = list(self.ci95)
        return out


def with_significance(baseline: Sequence[EvalResult], tuned: Sequence[EvalResult]) -> None:
    """Attach the McNemar p-value of each tuned row against the baseline row of its query type."""
    base_by_type = {r.query_type: r for r in baseline}
    for row in tuned:
        base = base_by_type.get(row.query_type)
        if base is not None:
            row.p_vs_baseline = round(mcnemar_p(np.array(base.per_query), np.array(row.per_query)), 4)
