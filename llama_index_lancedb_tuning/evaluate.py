"""Hit-rate and MRR at k, with n, a 95% bootstrap CI and a paired significance test."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from math import comb
from pathlib import Path

import numpy as np
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.schema import NodeWithScore
from tqdm.auto import tqdm

from .chunking import SOURCE_ID_KEY
from .dataset import QADataset
from .encoding import embed_queries
from .index import LanceDBRetriever, RerankedRetriever, SharedSearch

BOOTSTRAP_SAMPLES = 2000


def node_source(hit: NodeWithScore) -> str:
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

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("per_query")
        out["ci95"] = list(self.ci95)
        return out


def evaluate_retriever(
    retriever: BaseRetriever,
    dataset: QADataset,
    k: int = 5,
    model: str = "model",
    query_type: str = "vector",
    reranker: str | None = None,
    seed: int = 0,
    vectors: np.ndarray | None = None,
) -> EvalResult:
    """Score one retriever on every query of `dataset`; batched when the retriever supports it.

    `vectors`: the queries' embeddings, when the caller already has them (see `evaluate_retrievers`).
    """
    queries = [dataset.queries[q] for q in dataset.query_ids]
    relevant = [set(dataset.relevant_docs[q]) for q in dataset.query_ids]
    start = time.perf_counter()
    if hasattr(retriever, "retrieve_many"):
        # Only our retrievers take `vectors`; another retriever's retrieve_many gets the queries alone.
        results = retriever.retrieve_many(queries) if vectors is None else retriever.retrieve_many(queries, vectors=vectors)
    else:
        results = [retriever.retrieve(q) for q in tqdm(queries, desc=query_type, leave=False)]
    elapsed = time.perf_counter() - start
    rr = reciprocal_ranks(results, relevant, k)
    hits = (rr > 0).astype(float)
    return EvalResult(
        model=model,
        query_type=query_type,
        reranker=reranker,
        hit_rate=round(float(hits.mean()), 4) if len(hits) else 0.0,
        mrr=round(float(rr.mean()), 4) if len(rr) else 0.0,
        ci95=bootstrap_ci(hits, seed),
        n=len(hits),
        latency_ms=round(1000 * elapsed / max(len(queries), 1), 2),
        per_query=rr.tolist(),
    )


def evaluate_retrievers(
    retrievers: Mapping[str, BaseRetriever],
    dataset: QADataset,
    k: int = 5,
    model: str = "model",
    rerankers: Mapping[str, str | None] | None = None,
) -> list[EvalResult]:
    """Score each retriever with the same results `evaluate_retriever` gives, sharing the work between them.

    Retrievers with one embedding model share one batched query embedding; this package's
    retrievers on one table also share their LanceDB candidates (`SharedSearch`).
    """
    rerankers = rerankers or {}
    queries = [dataset.queries[q] for q in dataset.query_ids]
    vectors_by_model: dict[int, np.ndarray] = {}
    ours = {qt: r for qt, r in retrievers.items() if isinstance(r, (LanceDBRetriever, RerankedRetriever))}
    for r in ours.values():
        if id(r.embed_model) not in vectors_by_model:
            vectors_by_model[id(r.embed_model)] = embed_queries(r.embed_model, queries)
    with ExitStack() as stack:
        for search, limits in _shared_searches(ours.values()).items():
            search.prefetch(queries, vectors_by_model[id(search.embed_model)], *limits)
            stack.enter_context(search)
        results = []
        for qt, r in tqdm(retrievers.items(), desc=f"evaluate {model}", unit="query type"):
            vectors = vectors_by_model[id(r.embed_model)] if qt in ours else None
            results.append(evaluate_retriever(r, dataset, k, model, qt, rerankers.get(qt), vectors=vectors))
    return results


def _shared_searches(retrievers: Iterable[LanceDBRetriever | RerankedRetriever]) -> dict[SharedSearch, tuple[int, int]]:
    """One SharedSearch per (table, embedding model), with the deepest vector and full-text lists any retriever needs."""
    limits: dict[tuple[int, int], list] = {}
    for r in retrievers:
        base = r.base if isinstance(r, RerankedRetriever) else r
        entry = limits.setdefault((id(base.table), id(base.embed_model)), [base, 0, 0])
        vector_k = base.search_depth if base.query_type in ("vector", "hybrid") else 0
        fts_k = base.search_depth if base.query_type in ("fts", "hybrid") else 0
        entry[1], entry[2] = max(entry[1], vector_k), max(entry[2], fts_k)
    return {SharedSearch(base.table, base.embed_model, base.nprobes): (v, f) for base, v, f in limits.values() if v and f}


def with_significance(baseline: Sequence[EvalResult], tuned: Sequence[EvalResult]) -> None:
    """Attach the McNemar p-value of each tuned row against the baseline row of its query type."""
    base_by_type = {r.query_type: r for r in baseline}
    for row in tuned:
        base = base_by_type.get(row.query_type)
        if base is not None:
            row.p_vs_baseline = round(mcnemar_p(np.array(base.per_query), np.array(row.per_query)), 4)


_LABELS = {
    "vector": "Vector search",
    "fts": "Full-text search",
    "reranked_vector": "Reranked vector search",
    "reranked_fts": "Reranked full-text search",
    "hybrid": "Hybrid search",
}


def comparison_table(results: Sequence[EvalResult], k: int = 5) -> str:
    """Markdown table in the shape of the reference table: one row per query type, baseline beside tuned."""
    by = {(r.model, r.query_type): r for r in results}
    types = list(dict.fromkeys(r.query_type for r in results))
    models = list(dict.fromkeys(r.model for r in results))
    head = ["Query type", "reranker", "n"] + [f"{m} hit@{k} [95% CI]" for m in models] + [f"{m} MRR@{k}" for m in models]
    if "baseline" in models and len(models) > 1:
        head += ["Δ hit", "p (McNemar)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for qt in types:
        rows = [by.get((m, qt)) for m in models]
        first = next(r for r in rows if r is not None)
        cells = [_LABELS.get(qt, qt), first.reranker or "—", str(first.n)]
        cells += [f"{r.hit_rate:.3f} [{r.ci95[0]:.3f}, {r.ci95[1]:.3f}]" if r else "—" for r in rows]
        cells += [f"{r.mrr:.3f}" if r else "—" for r in rows]
        if "baseline" in models and len(models) > 1:
            base, last = by.get(("baseline", qt)), rows[-1]
            cells += [f"{last.hit_rate - base.hit_rate:+.3f}" if base and last else "—", f"{last.p_vs_baseline:.3f}" if last and last.p_vs_baseline is not None else "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_plot(results: Sequence[EvalResult], path: str | Path, k: int = 5, title: str = "") -> Path:
    """Grouped bars of hit-rate@k per query type with 95% CI whiskers, one colour per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    types = list(dict.fromkeys(r.query_type for r in results))
    models = list(dict.fromkeys(r.model for r in results))
    by = {(r.model, r.query_type): r for r in results}
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    x = np.arange(len(types))
    for i, m in enumerate(models):
        rows = [by.get((m, t)) for t in types]
        rates = [r.hit_rate if r else 0 for r in rows]
        err = np.array([[r.hit_rate - r.ci95[0], r.ci95[1] - r.hit_rate] if r else [0, 0] for r in rows]).T
        bars = ax.bar(x + (i - (len(models) - 1) / 2) * width, rates, width, yerr=err, capsize=3, label=m)
        ax.bar_label(bars, labels=[f"{v:.2f}" for v in rates], fontsize=8, padding=2)
    ax.set_xticks(x, [_LABELS.get(t, t) for t in types], rotation=15, ha="right")
    ax.set_ylabel(f"hit-rate@{k}")
    ax.set_ylim(0, 1.08)
    n = results[0].n if results else 0
    ax.set_title(title or f"hit-rate@{k} on {n} held-out queries (95% bootstrap CI)")
    ax.legend(loc="lower right")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
