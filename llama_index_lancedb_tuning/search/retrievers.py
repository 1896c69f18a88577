"""LlamaIndex retrievers over a LanceDB table: vector, full-text and hybrid search, and reranked search."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any, Literal

import lancedb
import numpy as np
from lancedb.query import LanceHybridQueryBuilder
from lancedb.rerankers import RRFReranker
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle

from ..encoding.embed_models import embed_queries
from ..errors import TuningError
from ..store.table import RESULT_COLUMNS, scored_nodes, vector_search_many
from .rerankers import BM25Lookup, FusionRerank
from .shared_search import SEARCH_THREADS, SearchNeeds, SharedSearch

SearchType = Literal["vector", "fts", "hybrid"]


class LanceDBRetriever(BaseRetriever):
    """Vector, full-text or hybrid search on a LanceDB table, with the index's own scores.

    Scores: cosine similarity (vector), BM25 (fts), the hybrid reranker's relevance score
    (hybrid). A query with no match returns an empty list.

    Args:
        table: the LanceDB table.
        embed_model: the model that embeds queries (the one the table's vectors were made with, or
            a query encoder tuned against them).
        query_type: `vector`, `fts` or `hybrid`.
        similarity_top_k: nodes returned.
        hybrid_reranker: LanceDB's fusion for hybrid search (e.g. `RRFReranker`).
        nprobes: IVF partitions probed once the table has a vector index.
        hybrid_depth: rows each leg of a hybrid search brings to the fusion before the cut to
            `similarity_top_k` (LanceDB's own hybrid query fuses only `similarity_top_k` rows of each).
    """

    def __init__(
        self,
        table: lancedb.table.Table,
        embed_model: BaseEmbedding,
        query_type: SearchType = "vector",
        similarity_top_k: int = 5,
        hybrid_reranker: Any = None,
        nprobes: int = 20,
        hybrid_depth: int | None = None,
        **kwargs: Any,
    ) -> None:
        if query_type not in ("vector", "fts", "hybrid"):
            raise TuningError(f"unknown base query type '{query_type}'; use vector, fts or hybrid")
        if similarity_top_k < 1:
            raise TuningError(f"similarity_top_k must be at least 1, got {similarity_top_k}")
        if hybrid_depth is not None and hybrid_depth < 1:
            raise TuningError(f"hybrid_depth must be at least 1, got {hybrid_depth}")
        self.table = table
        self.embed_model = embed_model
        self.query_type = query_type
        self.similarity_top_k = similarity_top_k
        self.hybrid_reranker = hybrid_reranker
        self.nprobes = nprobes
        self.hybrid_depth = hybrid_depth
        super().__init__(**kwargs)

    @property
    def search_depth(self) -> int:
        """Rows fetched from each search this retriever runs: `similarity_top_k`, or more for a hybrid's fusion."""
        if self.query_type != "hybrid":
            return self.similarity_top_k
        return max(self.similarity_top_k, self.hybrid_depth or 0)

    def search_needs(self) -> SearchNeeds:
        depth = self.search_depth
        vector = depth if self.query_type in ("vector", "hybrid") else 0
        fts = depth if self.query_type in ("fts", "hybrid") else 0
        return SearchNeeds(self.table, self.embed_model, self.nprobes, vector, fts)

    def _search(self, query: str, vector: np.ndarray | None) -> list[NodeWithScore]:
        # LanceDB types search() as its base builder, which lacks the vector and hybrid builders' methods.
        search: Any = self.table.search
        if self.query_type == "vector":
            q = search(vector).distance_type("cosine").nprobes(self.nprobes)
            score = "_distance"
        elif self.query_type == "fts":
            q = search(query, query_type="fts", fts_columns="text")
            score = "_score"
        else:
            return scored_nodes(self._hybrid_rows(query, vector), "_relevance_score")
        try:
            rows = q.select([*RESULT_COLUMNS, score]).limit(self.similarity_top_k).to_list()
        except Warning:
            rows = []  # LanceDB signals "no full-text match" with a bare Warning in some versions
        return scored_nodes(rows, score)

    def _hybrid_rows(self, query: str, vector: np.ndarray | None) -> list[dict[str, Any]]:
        """LanceDB's hybrid search, its two legs run here so each selects its own score column.

        LanceDB's hybrid query gives both legs the same columns, and a leg that selects columns
        without its score logs a deprecation WARN from LanceDB's Rust logger on every query, which
        no Python setting silences once lancedb is imported. The legs are the ones its hybrid query
        builds, and the fusion (score normalisation, the reranker, the original scores put back) is
        the static method that query fuses through, so rows and scores are LanceDB's own.
        """
        search: Any = self.table.search
        legs = (search(vector).distance_type("cosine"), search(query, query_type="fts"))
        try:
            vector_rows, fts_rows = (
                leg.select([*RESULT_COLUMNS, score]).with_row_id(True).limit(self.search_depth).to_arrow()
                for leg, score in zip(legs, ("_distance", "_score"))
            )
        except Warning:
            return []  # as in `_search`: no full-text match
        fused = LanceHybridQueryBuilder._combine_hybrid_results(
            fts_results=fts_rows,
            vector_results=vector_rows,
            norm="score",
            fts_query=query,
            reranker=RRFReranker() if self.hybrid_reranker is None else self.hybrid_reranker,  # the hybrid query's default
            limit=self.search_depth,
            with_row_ids=False,
        )
        # Each leg's depth is also the fused list's; it is cut to k here.
        return fused.to_pylist()[: self.similarity_top_k]

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        query = query_bundle.query_str
        if not query.strip():
            return []
        vector = None if self.query_type == "fts" else embed_queries(self.embed_model, [query])[0]
        return self._search(query, vector)

    def retrieve_many(
        self, queries: Sequence[str], batch_size: int = 64, vectors: np.ndarray | None = None, search: SharedSearch | None = None
    ) -> list[list[NodeWithScore]]:
        """Retrieve for many queries with one batched embedding pass.

        Args:
            queries: the query texts; a blank query gets no results.
            batch_size: query vectors per LanceDB vector search.
            vectors: query embeddings a caller already computed, so they are not embedded twice.
            search: candidates prefetched for these queries (evaluation), used where they give the same results.
        """
        if self.query_type != "fts" and vectors is None:
            vectors = embed_queries(self.embed_model, queries)
        if search is not None and search.serves(self.search_needs()):
            found = search.results(self.query_type, queries, self.similarity_top_k, self.hybrid_reranker, self.search_depth)
            if found is not None:
                return found
        if self.query_type == "vector":
            assert vectors is not None
            hits = vector_search_many(self.table, list(vectors), self.similarity_top_k, self.nprobes, batch_size)
            return [found if q.strip() else [] for q, found in zip(queries, hits)]
        # Full-text and hybrid queries are one LanceDB query each; they run on LanceDB's
        # native threads, so a small pool overlaps their Python-side overhead.
        query_vectors: Sequence[np.ndarray | None] = [None] * len(queries) if vectors is None else list(vectors)
        with ThreadPoolExecutor(max_workers=SEARCH_THREADS) as pool:
            return list(pool.map(lambda qv: self._search(*qv) if qv[0].strip() else [], zip(queries, query_vectors)))


class RerankedRetriever(BaseRetriever):
    """Candidates from a LanceDB retriever, reordered by a LlamaIndex node postprocessor.

    Args:
        base: the retriever that brings the candidates (its `similarity_top_k` is how many).
        postprocessor: any node postprocessor (`FusionRerank`, Cohere, a cross-encoder).
        similarity_top_k: nodes kept after reranking.
    """

    def __init__(
        self, base: LanceDBRetriever, postprocessor: BaseNodePostprocessor, similarity_top_k: int = 5, **kwargs: Any
    ) -> None:
        self.base = base
        self.postprocessor = postprocessor
        self.similarity_top_k = similarity_top_k
        super().__init__(**kwargs)

    @property
    def embed_model(self) -> BaseEmbedding:
        return self.base.embed_model

    def search_needs(self) -> SearchNeeds:
        return self.base.search_needs()

    def _rerank(self, nodes: list[NodeWithScore], query: QueryBundle, bm25: BM25Lookup | None = None) -> list[NodeWithScore]:
        if not nodes:
            return []
        if bm25 is not None and isinstance(self.postprocessor, FusionRerank):
            return self.postprocessor.rerank(nodes, query, bm25)[: self.similarity_top_k]
        return self.postprocessor.postprocess_nodes(nodes, query_bundle=query)[: self.similarity_top_k]

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return self._rerank(self.base.retrieve(query_bundle), query_bundle)

    def retrieve_many(
        self, queries: Sequence[str], batch_size: int = 64, vectors: np.ndarray | None = None, search: SharedSearch | None = None
    ) -> list[list[NodeWithScore]]:
        """Retrieve and rerank many queries, each embedded once for both the base search and the reranker.

        Args: as `LanceDBRetriever.retrieve_many`; `search` also answers a fusion reranker's BM25 lookups.
        """
        if vectors is None:
            vectors = embed_queries(self.base.embed_model, queries)
        bundles = [QueryBundle(q, embedding=v.tolist()) for q, v in zip(queries, vectors)]
        candidates = self.base.retrieve_many(queries, batch_size, vectors, search)
        rerank = partial(self._rerank, bm25=search.bm25 if search is not None and search.serves(self.search_needs()) else None)
        # Rerankers may query the table (BM25) or a service per query: overlap them.
        with ThreadPoolExecutor(max_workers=SEARCH_THREADS) as pool:
            return list(pool.map(rerank, candidates, bundles))
