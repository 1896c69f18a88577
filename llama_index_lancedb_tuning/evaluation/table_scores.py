"""Scoring a table: the five query types of an index (its table and encoders) on labeled queries, timed."""

from __future__ import annotations

import time
from collections.abc import Sequence

from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import BaseNode

from ..config import RerankerSpec, SearchConfig
from ..data.qa_dataset import QADataset
from ..encoding.embed_models import load_embed_model
from ..search.index import LanceDBIndex
from ..search.rerankers import hybrid_reranker, node_reranker, reranker_name
from .evaluator import evaluate_retrievers
from .metrics import EvalResult


def score_model(
    model: str | None,
    label: str,
    nodes: Sequence[BaseNode],
    test: QADataset,
    uri: str,
    table_name: str,
    config: SearchConfig,
    timings: dict[str, float],
    timing_key: str = "index",
) -> list[EvalResult]:
    """Index `nodes` with `model` into a fresh table and score the five query types on `test`.

    Adds the seconds spent to `timings[timing_key]` and `timings["evaluate"]`.
    """
    t = time.perf_counter()
    index = LanceDBIndex.build(
        nodes,
        load_embed_model(model, backend=config.backend),
        uri=uri,
        table_name=table_name,
        mode="overwrite",
        engine=config.engine,
    )
    timings[timing_key] = round(timings.get(timing_key, 0.0) + time.perf_counter() - t, 2)
    return score_index(index, label, test, config, timings)


def score_index(
    index: LanceDBIndex,
    label: str,
    test: QADataset,
    config: SearchConfig,
    timings: dict[str, float],
    query_types: Sequence[str] | None = None,
    reranker: RerankerSpec | BaseNodePostprocessor | None = None,
) -> list[EvalResult]:
    """Score the query types of `index` on `test` (queries by its query encoder); adds to `timings["evaluate"]`.

    Args:
        index: the table and its encoders.
        label: the `model` of every row.
        test: labeled queries over the table's documents.
        config: the depths, fusion and reranker of the search.
        timings: seconds by stage, added to.
        query_types: the types to score (None: all five).
        reranker: a postprocessor (or spec) for the reranked types instead of `config.reranker`.
    """
    t = time.perf_counter()
    postprocessor = node_reranker(config.reranker if reranker is None else reranker, config.k, index.embedding, index.table)
    retrievers = index.retrievers(
        config.k, postprocessor, hybrid_reranker(config.hybrid, config.rrf_k), config.overfetch, config.hybrid_overfetch
    )
    names = {
        qt: (
            reranker_name(postprocessor) if qt.startswith("reranked_") else f"lancedb.{config.hybrid}" if qt == "hybrid" else None
        )
        for qt in retrievers
        if query_types is None or qt in query_types
    }
    results = evaluate_retrievers({qt: retrievers[qt] for qt in names}, test, config.k, label, names)
    timings["evaluate"] = round(timings.get("evaluate", 0.0) + time.perf_counter() - t, 2)
    return results
