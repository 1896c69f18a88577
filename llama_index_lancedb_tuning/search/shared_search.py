"""Search candidates fetched once per query and shared by every query type, for evaluation.

Scoring the five query types would otherwise cost each query five full-text searches
(full-text, reranked full-text, the BM25 lookup of each rerank, the hybrid's own) and the
vector search three times. A `SharedSearch` costs each query one row in a batched vector
search and one full-text search, and its lists serve all types with LanceDB's own results:
a top-k cut of a longer ranked list is the shorter list, a row's BM25 score does not depend
on which rows are returned, and RRF uses only each list's order.

It is passed explicitly: the evaluator asks each retriever what it needs (`search_needs`),
prefetches, and hands the search to `retrieve_many(..., search=shared)`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.rerankers import RRFReranker
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.schema import NodeWithScore

from ..store.lancedb_internals import async_table, run_on_lancedb_loop
from ..store.table import fts_ids, rows_by_id, vector_ids_many

SEARCH_THREADS = 4
# Full-text lists reach at least this deep, so most reranker BM25 lookups are answered from them.
FTS_DEPTH = 200
# Up to this many rows a full-text list holds every match: as fast as a top-200 list on 711 and
# on 2,555 rows (BENCHMARKS.md), and complete, so every BM25 lookup is answered from it.
COMPLETE_FTS_ROWS = 10_000
# Full-text queries awaited together.
FTS_IN_FLIGHT = 64


@dataclass(frozen=True)
class SearchNeeds:
    """What one retriever reads from its table: how deep its vector and full-text lists go (0: not at all)."""

    table: lancedb.table.Table
    embed_model: BaseEmbedding
    nprobes: int
    vector_depth: int
    fts_depth: int


@runtime_checkable
class SharesSearch(Protocol):
    """A retriever that can serve many queries from a `SharedSearch` (this package's retrievers)."""

    embed_model: BaseEmbedding

    def search_needs(self) -> SearchNeeds: ...

    def retrieve_many(
        self, queries: Sequence[str], batch_size: int = 64, vectors: np.ndarray | None = None, search: SharedSearch | None = None
    ) -> list[list[NodeWithScore]]: ...


class SharedSearch:
    """Vector and full-text candidates of one (table, embedding model), fetched once per query.

    Args:
        table: the LanceDB table.
        embed_model: the model whose query vectors are searched.
        nprobes: IVF partitions probed (as the retrievers do).
        fts_depth: how deep each full-text list reaches at least (every match on a table of up to
            `COMPLETE_FTS_ROWS` rows).
    """

    def __init__(
        self, table: lancedb.table.Table, embed_model: BaseEmbedding, nprobes: int = 20, fts_depth: int = FTS_DEPTH
    ) -> None:
        self.table = table
        self.embed_model = embed_model
        self.nprobes = nprobes
        rows = table.count_rows()
        self.fts_depth = max(fts_depth, rows + 1) if rows <= COMPLETE_FTS_ROWS else fts_depth
        self._vector: dict[str, list[NodeWithScore]] = {}
        self._fts: dict[str, list[NodeWithScore]] = {}
        self._bm25: dict[str, tuple[dict[str, float], bool]] = {}  # query -> (scores by id, list complete)
        self._vector_limit = self._fts_limit = 0

    def serves(self, needs: SearchNeeds) -> bool:
        return needs.table is self.table and needs.embed_model is self.embed_model

    def prefetch(self, queries: Sequence[str], vectors: np.ndarray, vector_limit: int, fts_limit: int) -> None:
        """Fetch the top `vector_limit` vector rows and `fts_limit` full-text rows of every distinct query."""
        self.fts_depth = max(self.fts_depth, fts_limit)  # the full-text lists must reach the deepest cut
        first: dict[str, int] = {}  # each distinct query once, at its first position
        for i, q in enumerate(queries):
            if q.strip():
                first.setdefault(q, i)
        distinct = list(first)
        query_vectors = list(np.asarray(vectors)[list(first.values())])
        vector_ids = vector_ids_many(self.table, query_vectors, vector_limit, self.nprobes)
        self._vector_limit = vector_limit
        ranked = full_text_many(self.table, distinct, self.fts_depth)
        # Each row any list shows is read once, whichever lists and queries show it.
        shown = {i for ids in vector_ids for i, _ in ids} | {i for ids in ranked for i, _ in ids[:fts_limit]}
        nodes = rows_by_id(self.table, shown)
        for query, v_ids, f_ids in zip(distinct, vector_ids, ranked):
            self._vector[query] = [NodeWithScore(node=nodes[i], score=score) for i, score in v_ids]
            self._bm25[query] = (dict(f_ids), len(f_ids) < self.fts_depth)
            self._fts[query] = [NodeWithScore(node=nodes[i], score=score) for i, score in f_ids[:fts_limit]]
        self._fts_limit = fts_limit

    def results(
        self, query_type: str, queries: Sequence[str], k: int, hybrid_reranker: Any = None, depth: int | None = None
    ) -> list[list[NodeWithScore]] | None:
        """Results for every query, or None where these lists cannot give LanceDB's own answer.

        `depth`: rows of each list a hybrid search fuses (`LanceDBRetriever.search_depth`; None: k).
        """
        if any(q.strip() and q not in self._bm25 for q in queries):
            return None
        if query_type == "vector" and k <= self._vector_limit:
            return [self._vector[q][:k] if q.strip() else [] for q in queries]
        if query_type == "fts" and k <= self._fts_limit:
            return [self._fts[q][:k] if q.strip() else [] for q in queries]
        depth = depth or k
        if (
            query_type == "hybrid"
            and isinstance(hybrid_reranker, RRFReranker)
            and depth <= min(self._vector_limit, self._fts_limit)
        ):
            return [self._rrf(q, k, hybrid_reranker, depth) if q.strip() else [] for q in queries]
        return None

    def _rrf(self, query: str, k: int, reranker: RRFReranker, depth: int) -> list[NodeWithScore]:
        """LanceDB's RRF fusion of the two top-`depth` lists, as its hybrid query runs it, cut to k."""
        legs = (self._vector[query][:depth], self._fts[query][:depth])
        nodes = {hit.node.node_id: hit.node for leg in legs for hit in leg}
        codes = {node_id: i for i, node_id in enumerate(nodes)}

        def table(hits: list[NodeWithScore], score: str) -> pa.Table:
            ids = [h.node.node_id for h in hits]
            return pa.table({"id": ids, "_rowid": [codes[i] for i in ids], score: [float(h.score or 0.0) for h in hits]})

        fused = reranker.rerank_hybrid(query, table(legs[0], "_distance"), table(legs[1], "_score"))
        ids, scores = fused["id"].to_pylist()[:k], fused["_relevance_score"].to_pylist()
        return [NodeWithScore(node=nodes[i], score=float(s)) for i, s in zip(ids, scores)]

    def bm25(self, query: str, ids: Sequence[str]) -> dict[str, float] | None:
        """BM25 scores of these rows for a prefetched query (absent: no match), or None if unknown."""
        known = self._bm25.get(query)
        if known is None:
            return None
        scores, complete = known
        if not complete and any(i not in scores for i in ids):
            return None  # below the fetched depth: only a filtered search can tell
        return {i: scores[i] for i in ids if i in scores}


def full_text_many(table: lancedb.table.Table, queries: Sequence[str], limit: int) -> list[list[tuple[str, float]]]:
    """`fts_ids` of every query: (id, BM25 score) of its top `limit` matches, best first.

    LanceDB's sync query builder hops to its background event loop several times per query, and
    threads do not hide that; awaiting the table's async queries together on that same loop is
    about three times faster (44 queries on 711 rows: 0.04 s against 0.13 s, BENCHMARKS.md).
    LanceDB offers no public way from a sync table to its async one (`lancedb_internals`), and
    a table without one (remote) runs the sync builder on threads.
    """
    inner = async_table(table)
    if inner is None:
        with ThreadPoolExecutor(max_workers=SEARCH_THREADS) as pool:
            return list(pool.map(lambda q: fts_ids(table, q, limit), queries))

    async def ranked(query: str) -> list[tuple[str, float]]:
        search = inner.query().nearest_to_text(query, columns="text").select(["id", "_score"]).limit(limit)
        try:
            rows = await search.to_arrow()
        except Warning:  # "no full-text match", as in `fts_ids`
            return []
        return list(zip(rows.column("id").to_pylist(), rows.column("_score").to_pylist()))

    async def all_ranked() -> list[list[tuple[str, float]]]:
        out: list[list[tuple[str, float]]] = []
        for start in range(0, len(queries), FTS_IN_FLIGHT):
            out += await asyncio.gather(*(ranked(q) for q in queries[start : start + FTS_IN_FLIGHT]))
        return out

    return run_on_lancedb_loop(all_ranked())
