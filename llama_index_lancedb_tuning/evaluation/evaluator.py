"""Scoring retrievers on a QA dataset: every metric at k (ir_metrics) per retriever, sharing the work between them."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

import numpy as np
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.schema import NodeWithScore

from ..data.qa_dataset import QADataset
from ..encoding.embed_models import embed_queries
from ..search.shared_search import SharedSearch, SharesSearch
from .ir_metrics import per_query_scores
from .metrics import EvalResult, ranked_sources


def _scored(
    results: Sequence[Sequence[NodeWithScore]],
    dataset: QADataset,
    k: int,
    model: str,
    query_type: str,
    reranker: str | None,
    seconds: float,
    seed: int = 0,
) -> EvalResult:
    grades = [dataset.grades(q) for q in dataset.query_ids]
    latency = round(1000 * seconds / max(len(dataset), 1), 2)
    scores = per_query_scores(ranked_sources(results), grades, k)
    return EvalResult.from_scores(scores, model, query_type, reranker, latency, seed)


def evaluate_retriever(
    retriever: BaseRetriever,
    dataset: QADataset,
    k: int = 5,
    model: str = "model",
    query_type: str = "vector",
    reranker: str | None = None,
    seed: int = 0,
) -> EvalResult:
    """Score one retriever on every query of `dataset`; batched when the retriever has `retrieve_many`.

    Args:
        retriever: any LlamaIndex retriever.
        dataset: the queries and which corpus documents answer each.
        k: the cut of every metric.
        model, query_type, reranker: labels for the report.
        seed: the bootstrap's seed.
    """
    queries = [dataset.queries[q] for q in dataset.query_ids]
    start = time.perf_counter()
    retrieve_many = getattr(retriever, "retrieve_many", None)
    results = retrieve_many(queries) if retrieve_many is not None else [retriever.retrieve(q) for q in queries]
    return _scored(results, dataset, k, model, query_type, reranker, time.perf_counter() - start, seed)


def evaluate_retrievers(
    retrievers: Mapping[str, BaseRetriever],
    dataset: QADataset,
    k: int = 5,
    model: str = "model",
    rerankers: Mapping[str, str | None] | None = None,
) -> list[EvalResult]:
    """Score each retriever with the results `evaluate_retriever` gives, sharing the work between them.

    This package's retrievers (`SharesSearch`) with one embedding model share one batched query
    embedding, and those on one table share their LanceDB candidates (`SharedSearch`). A row's
    latency counts the shared embedding and candidate fetch in full, as if it ran alone.

    Args:
        retrievers: query type -> retriever.
        dataset: the queries and which corpus documents answer each.
        k: the cut of every metric.
        model: the model label of every row (`baseline`, `tuned`).
        rerankers: query type -> reranker name for the report.
    """
    rerankers = rerankers or {}
    queries = [dataset.queries[q] for q in dataset.query_ids]
    sharing = {qt: r for qt, r in retrievers.items() if isinstance(r, SharesSearch)}
    vectors: dict[int, np.ndarray] = {}
    shared_seconds: dict[int, float] = {}  # per retriever: the embedding and prefetch it shares
    for sharer in sharing.values():
        if id(sharer.embed_model) not in vectors:
            start = time.perf_counter()
            vectors[id(sharer.embed_model)] = embed_queries(sharer.embed_model, queries)
            shared_seconds[id(sharer.embed_model)] = time.perf_counter() - start
    searches = _prefetched_searches(list(sharing.values()), queries, vectors)
    results = []
    for qt, r in retrievers.items():
        start = time.perf_counter()
        if qt in sharing:
            ours = sharing[qt]
            needs = ours.search_needs()
            search = next((s for s, _ in searches if s.serves(needs)), None)
            hits = ours.retrieve_many(queries, vectors=vectors[id(needs.embed_model)], search=search)
            overhead = shared_seconds[id(needs.embed_model)] + next((t for s, t in searches if s is search), 0.0)
        else:
            retrieve_many = getattr(r, "retrieve_many", None)
            hits = retrieve_many(queries) if retrieve_many is not None else [r.retrieve(q) for q in queries]
            overhead = 0.0
        results.append(_scored(hits, dataset, k, model, qt, rerankers.get(qt), time.perf_counter() - start + overhead))
    return results


def _prefetched_searches(
    retrievers: Sequence[SharesSearch], queries: Sequence[str], vectors: Mapping[int, np.ndarray]
) -> list[tuple[SharedSearch, float]]:
    """One SharedSearch per (table, model) that both searches serve, prefetched as deep as its deepest
    retriever needs, with the seconds the prefetch took."""
    deepest: dict[tuple[int, int], list] = {}
    for r in retrievers:
        needs = r.search_needs()
        entry = deepest.setdefault((id(needs.table), id(needs.embed_model)), [needs, 0, 0])
        entry[1], entry[2] = max(entry[1], needs.vector_depth), max(entry[2], needs.fts_depth)
    out = []
    for needs, vector_depth, fts_depth in deepest.values():
        if not (vector_depth and fts_depth):
            continue  # one kind of search alone gains nothing from sharing
        start = time.perf_counter()
        search = SharedSearch(needs.table, needs.embed_model, needs.nprobes)
        search.prefetch(queries, vectors[id(needs.embed_model)], vector_depth, fts_depth)
        out.append((search, time.perf_counter() - start))
    return out
