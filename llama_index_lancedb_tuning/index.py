"""The LanceDB index and its retrievers, for the five query types of the reference table.

Rows have the layout `LanceDBVectorStore` writes and reads (id, doc_id, vector, text,
metadata with `_node_content`), so the table serves LlamaIndex's own vector store too.
We write them ourselves to absorb the store's rough edges: its default mode overwrites
an existing table, a node without a source makes `doc_id` a null column that breaks the
next append, a metadata key new in a later batch breaks the struct schema, an FTS query
with no match raises a bare `Warning`, and FTS/hybrid hits get rank-based fake scores.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.index import FTS
from lancedb.rerankers import RRFReranker
from llama_index.core import VectorStoreIndex
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import BaseNode, MetadataMode, NodeWithScore, QueryBundle
from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict
from llama_index.vector_stores.lancedb import LanceDBVectorStore
from tqdm.auto import tqdm

from .errors import TuningError
from .encoding import embed_queries, embed_texts, load_embed_model

logger = logging.getLogger(__name__)

QueryType = Literal["vector", "fts", "reranked_vector", "reranked_fts", "hybrid"]
QUERY_TYPES: tuple[str, ...] = ("vector", "fts", "reranked_vector", "reranked_fts", "hybrid")
TableMode = Literal["create", "append", "overwrite"]
DEFAULT_URI = "./lancedb"
DEFAULT_TABLE = "nodes"
_METADATA_FIELDS = ("_node_content", "_node_type", "doc_id", "document_id", "ref_doc_id")
_RESULT_COLUMNS = ["id", "doc_id", "text", "metadata", "vector"]
_SEARCH_THREADS = 4
# Candidates per query as multiples of k, picked on validation queries of data_qa.csv's
# cross-validation folds (BENCHMARKS.md): a reranker sees 4k candidates; each leg of a hybrid
# search brings 3k rows to the fusion, so a passage both legs rank fairly well can outrank one
# that only a single leg ranks first.
RERANK_OVERFETCH = 4
HYBRID_OVERFETCH = 3


def table_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("id", pa.string()),
            pa.field("doc_id", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), dim)),
            pa.field("text", pa.string()),
            pa.field("metadata", pa.struct([pa.field(k, pa.string()) for k in _METADATA_FIELDS])),
        ]
    )


def _rows(nodes: Sequence[BaseNode], vectors: np.ndarray, dim: int) -> pa.Table:
    metadata = []
    for node in nodes:
        meta = node_to_metadata_dict(node, remove_text=False, flat_metadata=False)
        # User metadata lives inside _node_content; a fixed struct keeps later appends valid.
        metadata.append({k: meta.get(k) for k in _METADATA_FIELDS})
    return pa.Table.from_pydict(
        {
            "id": [n.node_id for n in nodes],
            "doc_id": [n.ref_doc_id or n.node_id for n in nodes],
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim),
            "text": [n.get_content(metadata_mode=MetadataMode.NONE) for n in nodes],
            "metadata": metadata,
        },
        schema=table_schema(dim),
    )


def sql_id_list(ids: Iterable[str]) -> str:
    """Ids quoted for a LanceDB `id IN (...)` filter."""
    return ", ".join("'" + i.replace("'", "''") + "'" for i in ids)


def _batches(nodes: Iterable[BaseNode], size: int) -> Iterator[list[BaseNode]]:
    batch: list[BaseNode] = []
    for node in nodes:
        batch.append(node)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def connect(uri: str = DEFAULT_URI, storage_options: dict[str, str] | None = None) -> lancedb.DBConnection:
    """An embedded directory, `s3://…`, `gs://…` or `db://…` (LanceDB Cloud); options go to LanceDB as is."""
    try:
        return lancedb.connect(uri, storage_options=storage_options)
    except Exception as exc:
        raise TuningError(f"cannot open LanceDB at '{uri}': {exc}") from None


def vector_dim(table: lancedb.table.Table) -> int:
    return table.schema.field("vector").type.list_size


def open_table(db: lancedb.DBConnection, table_name: str) -> lancedb.table.Table:
    table = existing_table(db, table_name)
    if table is None:
        raise TuningError(f"no table '{table_name}' in {db.uri}; build it first (mode='create')")
    return table


def existing_table(db: lancedb.DBConnection, table_name: str) -> lancedb.table.Table | None:
    """The table, or None if absent, or if a create killed before its first commit left an empty directory."""
    if table_name not in db.table_names():
        return None
    try:
        return db.open_table(table_name)
    except ValueError as exc:  # listed (the directory exists) but no version was ever committed
        if "not found" not in str(exc).lower():
            raise
        return None


def missing_nodes(table: lancedb.table.Table | None, nodes: Iterable[BaseNode]) -> list[BaseNode]:
    """The nodes whose ids `table` does not hold yet (all of them for no table), in order.

    Resumes an interrupted ingest without duplicates: every batch is one commit, so the
    table holds whole batches, and appending what this returns completes it
    (`write_nodes(missing_nodes(table, nodes), ..., mode="append")`).
    """
    if table is None:
        return list(nodes)
    present = set(table.search().select(["id"]).limit(None).to_arrow().column("id").to_pylist())
    return [node for node in nodes if node.node_id not in present]


def _retry_conflicts(table: lancedb.table.Table, commit: Callable[[], Any], attempts: int = 6) -> Any:
    """Run one LanceDB commit, retrying (bounded, jittered) when a concurrent writer preempted it.

    Lance refuses a commit that conflicts with one made meanwhile, e.g. two processes
    rebuilding the full-text index; a refused commit changed nothing, so retrying on the
    latest version is safe.
    """
    for attempt in range(attempts):
        try:
            return commit()
        except Exception as exc:
            if "conflict" not in str(exc).lower():
                raise
            if attempt == attempts - 1:
                raise TuningError(
                    f"table '{table.name}' kept changing under concurrent writers ({attempts} commit conflicts); rerun, "
                    "or write from one process at a time"
                ) from None
            time.sleep(random.uniform(0.05, 0.1) * 2**attempt)
            table.checkout_latest()  # the handle still points at the version the other writer replaced
    raise AssertionError("unreachable")


def write_nodes(
    nodes: Iterable[BaseNode],
    embed_model: BaseEmbedding,
    db: lancedb.DBConnection,
    table_name: str = DEFAULT_TABLE,
    mode: TableMode = "create",
    batch_size: int = 2048,
    show_progress: bool = True,
    total: int | None = None,
) -> lancedb.table.Table:
    """Embed and write nodes in streamed batches, then (re)build the full-text index.

    Memory stays bounded by `batch_size`; every batch is one atomic LanceDB commit, so an
    interrupted ingest leaves a readable table holding whole batches.
    `mode="create"` refuses an existing table; `append` adds to it (same dimension only);
    `overwrite` replaces it.
    """
    existing = existing_table(db, table_name)
    exists = existing is not None
    if mode not in ("create", "append", "overwrite"):
        raise TuningError(f"unknown mode '{mode}'; use create, append or overwrite")
    if exists and mode == "create":
        raise TuningError(
            f"table '{table_name}' already exists in {db.uri}; open it, or pass mode='append' to add nodes or mode='overwrite' to replace it"
        )
    table = existing if mode == "append" else None
    create_mode = "overwrite" if mode == "overwrite" else "create"
    return append_nodes(
        nodes, embed_model, table,
        # append: another process may create the table first; then add to it rather than fail.
        lambda dim: db.create_table(table_name, schema=table_schema(dim), mode=create_mode, exist_ok=mode == "append"),
        batch_size, show_progress, total,
    )


def append_nodes(
    nodes: Iterable[BaseNode],
    embed_model: BaseEmbedding,
    table: lancedb.table.Table | None,
    create: Callable[[int], lancedb.table.Table] | None = None,
    batch_size: int = 2048,
    show_progress: bool = True,
    total: int | None = None,
) -> lancedb.table.Table:
    """Embed and append in batches to `table` (or to the one `create(dim)` makes), then rebuild the FTS index."""
    written = 0
    with tqdm(total=total, desc="index", unit="node", disable=not show_progress) as bar:
        for batch in _batches(nodes, batch_size):
            vectors = embed_texts(embed_model, [n.get_content(metadata_mode=MetadataMode.EMBED) for n in batch])
            dim = vectors.shape[1]
            if table is None and create is not None:
                table = create(dim)
            elif table is not None and vector_dim(table) != dim:
                raise TuningError(
                    f"table '{table.name}' holds {vector_dim(table)}-dim vectors but the model makes {dim}-dim ones; "
                    "use the model the table was built with, or another table name"
                )
            rows = _rows(batch, vectors, dim)
            _retry_conflicts(table, partial(table.add, rows))
            written += len(batch)
            bar.update(len(batch))
    if table is None:
        raise TuningError("no nodes to index; check that the documents produced text")
    _retry_conflicts(table, partial(table.create_index, "text", config=FTS(), replace=True))
    logger.info("wrote %d nodes to %s", written, table.name)
    return table


def _node_from_row(row: dict[str, Any]) -> BaseNode:
    meta = row["metadata"]
    if meta and meta.get("_node_content"):
        node = metadata_dict_to_node(meta)
        # The stored vector rides along so rerankers score candidates without re-embedding them.
        node.embedding = row.get("vector")
        return node
    from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode

    return TextNode(
        id_=row["id"],
        text=row["text"] or "",
        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=row["doc_id"])},
    )


def _with_scores(rows: list[dict[str, Any]], score_column: str) -> list[NodeWithScore]:
    out = []
    for row in rows:
        score = row[score_column]
        if score_column == "_distance":
            score = 1.0 - score  # cosine distance -> cosine similarity
        out.append(NodeWithScore(node=_node_from_row(row), score=float(score)))
    return out


class LanceDBRetriever(BaseRetriever):
    """Vector, full-text or hybrid search on a LanceDB table, with the index's own scores.

    Scores: cosine similarity (vector), BM25 (fts), the hybrid reranker's relevance score
    (hybrid). A query with no match returns an empty list. `hybrid_depth`: rows each leg of a
    hybrid search brings to the fusion before the cut to `similarity_top_k` (LanceDB's own
    hybrid query fuses only `similarity_top_k` rows of each).
    """

    def __init__(
        self,
        table: lancedb.table.Table,
        embed_model: BaseEmbedding,
        query_type: Literal["vector", "fts", "hybrid"] = "vector",
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

    def _search(self, query: str, vector: np.ndarray | None) -> list[NodeWithScore]:
        k = self.similarity_top_k
        if self.query_type == "vector":
            q = self.table.search(vector).distance_type("cosine").nprobes(self.nprobes)
            score = "_distance"
        elif self.query_type == "fts":
            q = self.table.search(query, query_type="fts", fts_columns="text")
            score = "_score"
        else:
            q = self.table.search(query_type="hybrid").vector(vector).text(query).distance_type("cosine")
            if self.hybrid_reranker is not None:
                q = q.rerank(self.hybrid_reranker)
            score = "_relevance_score"
        try:
            columns = _RESULT_COLUMNS if self.query_type == "hybrid" else [*_RESULT_COLUMNS, score]
            # A hybrid query's limit is also the depth of each leg; the fused list is cut to k here.
            rows = q.select(columns).limit(self.search_depth).to_list()[:k]
        except Warning:
            rows = []  # LanceDB signals "no full-text match" with a bare Warning in some versions
        return _with_scores(rows, score)

    def _query_vector(self, query: str) -> np.ndarray | None:
        if self.query_type == "fts":
            return None
        return embed_queries(self.embed_model, [query])[0]

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        query = query_bundle.query_str
        if not query.strip():
            return []
        return self._search(query, self._query_vector(query))

    def retrieve_many(
        self, queries: Sequence[str], batch_size: int = 64, vectors: np.ndarray | None = None
    ) -> list[list[NodeWithScore]]:
        """Retrieve for many queries with one batched embedding pass (used by evaluation).

        `vectors`: query embeddings a caller already computed, so they are not embedded twice.
        """
        if self.query_type != "fts" and vectors is None:
            vectors = embed_queries(self.embed_model, queries)
        shared = active_search(self.table, self.embed_model)
        if shared is not None:
            found = shared.results(self.query_type, queries, self.similarity_top_k, self.hybrid_reranker, self.search_depth)
            if found is not None:
                return found
        if self.query_type == "vector":
            return self._vector_search_many(queries, vectors, batch_size)
        # Full-text and hybrid queries are one LanceDB query each; they run on LanceDB's
        # native threads, so a small pool overlaps their Python-side overhead.
        vectors = [None] * len(queries) if vectors is None else vectors
        with ThreadPoolExecutor(max_workers=_SEARCH_THREADS) as pool:
            return list(pool.map(lambda qv: self._search(*qv) if qv[0].strip() else [], zip(queries, vectors)))

    def _vector_search_many(self, queries: Sequence[str], vectors: np.ndarray, batch_size: int) -> list[list[NodeWithScore]]:
        """One LanceDB query per batch of vectors (rows tagged with `query_index`) instead of one per query."""
        out: list[list[NodeWithScore]] = [[] for _ in queries]
        for start in range(0, len(queries), batch_size):
            batch = [np.asarray(v, dtype=np.float32) for v in vectors[start : start + batch_size]]
            rows = (
                self.table.search(batch if len(batch) > 1 else batch[0])
                .distance_type("cosine")
                .nprobes(self.nprobes)
                .select([*_RESULT_COLUMNS, "_distance"])
                .limit(self.similarity_top_k)
                .to_arrow()
            )
            positions = rows.column("query_index").to_pylist() if "query_index" in rows.column_names else [0] * rows.num_rows
            for position, hit in zip(positions, _with_scores(rows.to_pylist(), "_distance")):
                out[start + position].append(hit)
        return [hits if q.strip() else [] for q, hits in zip(queries, out)]


_ACTIVE_SEARCHES: dict[tuple[int, int], SharedSearch] = {}


def active_search(table: lancedb.table.Table, embed_model: BaseEmbedding) -> SharedSearch | None:
    return _ACTIVE_SEARCHES.get((id(table), id(embed_model)))


def shared_bm25(table: lancedb.table.Table, query: str, ids: Sequence[str]) -> dict[str, float] | None:
    """BM25 scores of rows `ids` for `query` from a search prefetched on `table`, if one knows them."""
    for search in list(_ACTIVE_SEARCHES.values()):
        if search.table is table and (scores := search.bm25(query, ids)) is not None:
            return scores
    return None


class SharedSearch:
    """Vector and full-text candidates fetched once per query, shared by every query type on one table.

    Scoring the five query types would otherwise cost each query five full-text searches
    (full-text, reranked full-text, the BM25 lookup of each rerank, the hybrid's own) and
    the vector search three times. Here each query costs one row in a batched vector search
    and one full-text search, and the lists serve all types with the same results: a top-k
    cut of a longer ranked list is the shorter list, a row's BM25 score does not depend on
    which rows are returned, and RRF uses only each list's order. Inside `with shared:`,
    `LanceDBRetriever.retrieve_many` and `FusionRerank` read from it for prefetched queries.
    """

    def __init__(self, table: lancedb.table.Table, embed_model: BaseEmbedding, nprobes: int = 20, fts_depth: int = 200) -> None:
        self.table = table
        self.embed_model = embed_model
        self.nprobes = nprobes
        self.fts_depth = fts_depth
        self._vector: dict[str, list[NodeWithScore]] = {}
        self._fts: dict[str, list[NodeWithScore]] = {}
        self._bm25: dict[str, tuple[dict[str, float], bool]] = {}  # query -> (scores by id, list complete)
        self._vector_limit = self._fts_limit = 0

    def prefetch(self, queries: Sequence[str], vectors: np.ndarray, vector_limit: int, fts_limit: int) -> None:
        self.fts_depth = max(self.fts_depth, fts_limit)  # the full-text lists must reach the deepest cut
        first: dict[str, int] = {}  # each distinct query once, at its first position
        for i, q in enumerate(queries):
            if q.strip():
                first.setdefault(q, i)
        queries = list(first)
        vector_search = LanceDBRetriever(self.table, self.embed_model, "vector", vector_limit, nprobes=self.nprobes)
        self._vector = dict(zip(queries, vector_search._vector_search_many(queries, np.asarray(vectors)[list(first.values())], 64)))
        self._vector_limit = vector_limit
        with ThreadPoolExecutor(max_workers=_SEARCH_THREADS) as pool:
            ranked = list(pool.map(self._fts_ids, queries))
        nodes = {hit.node.node_id: hit.node for hits in self._vector.values() for hit in hits}
        wanted = {i for ids in ranked for i, _ in ids[:fts_limit] if i not in nodes}
        nodes.update(self._rows_by_id(wanted))
        for query, ids in zip(queries, ranked):
            self._bm25[query] = (dict(ids), len(ids) < self.fts_depth)
            self._fts[query] = [NodeWithScore(node=nodes[i], score=score) for i, score in ids[:fts_limit]]
        self._fts_limit = fts_limit

    def _fts_ids(self, query: str) -> list[tuple[str, float]]:
        try:
            rows = self.table.search(query, query_type="fts", fts_columns="text").select(["id", "_score"]).limit(self.fts_depth).to_list()
        except Warning:
            return []
        return [(r["id"], float(r["_score"])) for r in rows]

    def _rows_by_id(self, ids: set[str], chunk: int = 1000) -> dict[str, BaseNode]:
        out: dict[str, BaseNode] = {}
        ordered = sorted(ids)
        for start in range(0, len(ordered), chunk):
            rows = self.table.search().where(f"id IN ({sql_id_list(ordered[start : start + chunk])})").select(_RESULT_COLUMNS).limit(None).to_list()
            out.update((row["id"], _node_from_row(row)) for row in rows)
        return out

    def results(
        self, query_type: str, queries: Sequence[str], k: int, hybrid_reranker: Any = None, hybrid_depth: int | None = None
    ) -> list[list[NodeWithScore]] | None:
        """Results for every query, or None where these lists cannot give LanceDB's own answer.

        `hybrid_depth`: rows of each list a hybrid search fuses (`LanceDBRetriever.search_depth`; None: k).
        """
        if any(q.strip() and q not in self._bm25 for q in queries):
            return None
        if query_type == "vector" and k <= self._vector_limit:
            return [self._vector[q][:k] if q.strip() else [] for q in queries]
        if query_type == "fts" and k <= self._fts_limit:
            return [self._fts[q][:k] if q.strip() else [] for q in queries]
        depth = hybrid_depth or k
        if query_type == "hybrid" and isinstance(hybrid_reranker, RRFReranker) and depth <= min(self._vector_limit, self._fts_limit):
            return [self._rrf(q, k, hybrid_reranker, depth) if q.strip() else [] for q in queries]
        return None

    def _rrf(self, query: str, k: int, reranker: RRFReranker, depth: int) -> list[NodeWithScore]:
        """LanceDB's RRF fusion of the two top-`depth` lists, as its hybrid query runs it, cut to k."""
        legs = (self._vector[query][:depth], self._fts[query][:depth])
        nodes = {hit.node.node_id: hit.node for leg in legs for hit in leg}
        codes = {node_id: i for i, node_id in enumerate(nodes)}

        def table(hits: list[NodeWithScore], score: str) -> pa.Table:
            ids = [h.node.node_id for h in hits]
            return pa.table({"id": ids, "_rowid": [codes[i] for i in ids], score: [float(h.score) for h in hits]})

        fused = reranker.rerank_hybrid(query, table(legs[0], "_distance"), table(legs[1], "_score"))
        return [NodeWithScore(node=nodes[i], score=float(s)) for i, s in zip(fused["id"].to_pylist()[:k], fused["_relevance_score"].to_pylist())]

    def bm25(self, query: str, ids: Sequence[str]) -> dict[str, float] | None:
        """BM25 scores of these rows for a prefetched query (absent: no match), or None if unknown."""
        known = self._bm25.get(query)
        if known is None:
            return None
        scores, complete = known
        if not complete and any(i not in scores for i in ids):
            return None  # below the fetched depth: only a filtered search can tell
        return {i: scores[i] for i in ids if i in scores}

    def __enter__(self) -> SharedSearch:
        _ACTIVE_SEARCHES[(id(self.table), id(self.embed_model))] = self
        return self

    def __exit__(self, *exc: object) -> None:
        _ACTIVE_SEARCHES.pop((id(self.table), id(self.embed_model)), None)


class RerankedRetriever(BaseRetriever):
    """Overfetch from a base retriever, then apply a LlamaIndex node postprocessor."""

    def __init__(
        self,
        base: LanceDBRetriever,
        postprocessor: BaseNodePostprocessor,
        similarity_top_k: int = 5,
        overfetch: int = RERANK_OVERFETCH,
        **kwargs: Any,
    ) -> None:
        self.base = base
        self.postprocessor = postprocessor
        self.similarity_top_k = similarity_top_k
        self.overfetch = overfetch
        base.similarity_top_k = similarity_top_k * overfetch
        super().__init__(**kwargs)

    def _rerank(self, nodes: list[NodeWithScore], query: QueryBundle) -> list[NodeWithScore]:
        if not nodes:
            return []
        return self.postprocessor.postprocess_nodes(nodes, query_bundle=query)[: self.similarity_top_k]

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        return self._rerank(self.base.retrieve(query_bundle), query_bundle)

    @property
    def embed_model(self) -> BaseEmbedding:
        return self.base.embed_model

    def retrieve_many(
        self, queries: Sequence[str], batch_size: int = 64, vectors: np.ndarray | None = None
    ) -> list[list[NodeWithScore]]:
        """Retrieve and rerank many queries, each embedded once for both the base search and the reranker."""
        if vectors is None:
            vectors = embed_queries(self.base.embed_model, queries)
        bundles = [QueryBundle(q, embedding=v.tolist()) for q, v in zip(queries, vectors)]
        candidates = self.base.retrieve_many(queries, batch_size, vectors)
        # Rerankers may query the table (BM25) or a service per query: overlap them.
        with ThreadPoolExecutor(max_workers=_SEARCH_THREADS) as pool:
            return list(pool.map(self._rerank, candidates, bundles))


@dataclass
class LanceDBIndex:
    """A LanceDB table with the embedding model that filled it, and LlamaIndex views on it."""

    table: lancedb.table.Table
    embed_model: BaseEmbedding

    @classmethod
    def build(
        cls,
        nodes: Sequence[BaseNode],
        embed_model: str | BaseEmbedding | None = None,
        uri: str = DEFAULT_URI,
        table_name: str = DEFAULT_TABLE,
        mode: TableMode = "create",
        storage_options: dict[str, str] | None = None,
        show_progress: bool = True,
    ) -> LanceDBIndex:
        model = load_embed_model(embed_model)
        db = connect(uri, storage_options)
        table = write_nodes(nodes, model, db, table_name, mode, show_progress=show_progress, total=len(nodes))
        return cls(table, model)

    @classmethod
    def open(
        cls,
        embed_model: str | BaseEmbedding | None = None,
        uri: str = DEFAULT_URI,
        table_name: str = DEFAULT_TABLE,
        storage_options: dict[str, str] | None = None,
    ) -> LanceDBIndex:
        """Reopen an existing table without re-embedding; the model must match its dimension."""
        table = open_table(connect(uri, storage_options), table_name)
        model = load_embed_model(embed_model)
        dim = len(model.get_query_embedding("dimension check"))
        if dim != vector_dim(table):
            raise TuningError(
                f"table '{table_name}' holds {vector_dim(table)}-dim vectors but the model makes {dim}-dim ones; "
                "open it with the model it was built with"
            )
        return cls(table, model)

    def add(self, nodes: Sequence[BaseNode], show_progress: bool = False) -> None:
        """Append nodes; the full-text index is rebuilt so new text is searchable at once."""
        append_nodes(nodes, self.embed_model, self.table, show_progress=show_progress, total=len(nodes))

    def vector_store(self) -> LanceDBVectorStore:
        # mode="append": LanceDBVectorStore defaults to "overwrite", which would replace the table on its first add.
        return LanceDBVectorStore(connection=self.table._conn, table=self.table, mode="append")

    def vector_store_index(self) -> VectorStoreIndex:
        return VectorStoreIndex.from_vector_store(self.vector_store(), embed_model=self.embed_model)

    def retriever(
        self,
        query_type: QueryType = "vector",
        similarity_top_k: int = 5,
        reranker: BaseNodePostprocessor | None = None,
        hybrid_reranker: Any = None,
        overfetch: int = RERANK_OVERFETCH,
        hybrid_overfetch: int = HYBRID_OVERFETCH,
    ) -> BaseRetriever:
        """A retriever for one of the five query types; reranked types need a node postprocessor.

        Reranked types rerank `overfetch` × k candidates; hybrid fuses `hybrid_overfetch` × k rows of each leg.
        """
        if query_type not in QUERY_TYPES:
            raise TuningError(f"unknown query type '{query_type}'; use one of {', '.join(QUERY_TYPES)}")
        if query_type.startswith("reranked_"):
            if reranker is None:
                raise TuningError(f"query type '{query_type}' needs a reranker")
            base = LanceDBRetriever(self.table, self.embed_model, query_type[len("reranked_") :], similarity_top_k)
            return RerankedRetriever(base, reranker, similarity_top_k, overfetch)
        depth = similarity_top_k * hybrid_overfetch if query_type == "hybrid" else None
        return LanceDBRetriever(self.table, self.embed_model, query_type, similarity_top_k, hybrid_reranker, hybrid_depth=depth)

    def retrievers(
        self,
        similarity_top_k: int = 5,
        reranker: BaseNodePostprocessor | None = None,
        hybrid_reranker: Any = None,
        overfetch: int = RERANK_OVERFETCH,
        hybrid_overfetch: int = HYBRID_OVERFETCH,
    ) -> dict[str, BaseRetriever]:
        """All five query types of the reference table (the reranked ones only with a reranker)."""
        types = QUERY_TYPES if reranker is not None else ("vector", "fts", "hybrid")
        return {qt: self.retriever(qt, similarity_top_k, reranker, hybrid_reranker, overfetch, hybrid_overfetch) for qt in types}


def ensure_vector_index(
    table: lancedb.table.Table,
    min_rows: int = 50_000,
    index_type: Literal["IVF_PQ", "IVF_HNSW_SQ"] = "IVF_HNSW_SQ",
    replace: bool = False,
) -> bool:
    """Build an approximate-nearest-neighbour index on `vector` once the table holds `min_rows` rows.

    Below the threshold brute-force search is exact and fast enough, so nothing is built.
    Returns whether an index was built now. Rows appended later are still searched (brute
    force on the unindexed part); call `table.optimize()` to fold them into the index.
    """
    rows = table.count_rows()
    if rows < min_rows:
        return False
    if not replace and any("vector" in (idx.columns or []) for idx in table.list_indices()):
        return False
    dim = vector_dim(table)
    partitions = max(1, int(rows**0.5))
    options: dict[str, Any] = {"num_sub_vectors": max(1, dim // 8)} if index_type == "IVF_PQ" else {}
    table.create_index(
        metric="cosine", vector_column_name="vector", index_type=index_type, num_partitions=partitions, replace=True, **options
    )
    logger.info("built %s index on %d rows of %s", index_type, rows, table.name)
    return True
