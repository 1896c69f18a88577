"""The LanceDB table: its schema, streamed writes, opening, and reading rows back as LlamaIndex nodes.

Rows have the layout `LanceDBVectorStore` writes and reads (id, doc_id, vector, text,
metadata with `_node_content`), so the table serves LlamaIndex's own vector store too, and
a table that store wrote (its metadata struct holds the nodes' own keys too) is read and
appended to in its own schema.
We write them ourselves to absorb the store's rough edges: its default mode overwrites
an existing table, a node without a source makes `doc_id` a null column that breaks the
next append, a metadata key new in a later batch breaks the struct schema, an FTS query
with no match raises a bare `Warning`, and FTS/hybrid hits get rank-based fake scores.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from typing import Any, Literal

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.index import FTS
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.schema import BaseNode, MetadataMode, NodeRelationship, NodeWithScore, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict
from tqdm.auto import tqdm

from ..common.quiet import load_file_readers
from ..common.retries import retry_commit_conflicts
from ..encoding.embed_models import BACKEND_KEY, backend_of, embed_texts
from ..errors import TuningError

logger = logging.getLogger(__name__)
load_file_readers()  # quietly, before an app's SimpleDirectoryReader loads them and sets its logging to INFO

TableMode = Literal["create", "append", "overwrite"]
DEFAULT_URI = "./lancedb"
DEFAULT_TABLE = "nodes"
_METADATA_FIELDS = ("_node_content", "_node_type", "doc_id", "document_id", "ref_doc_id")
RESULT_COLUMNS = ("id", "doc_id", "text", "metadata", "vector")


def table_schema(dim: int, backend: str | None = None) -> pa.Schema:
    """Our layout; `backend` (the runtime that makes the vectors) is recorded in the vector column's metadata."""
    return pa.schema(
        [
            pa.field("id", pa.string()),
            pa.field("doc_id", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), dim), metadata=None if backend is None else {BACKEND_KEY: backend}),
            pa.field("text", pa.string()),
            pa.field("metadata", pa.struct([pa.field(k, pa.string()) for k in _METADATA_FIELDS])),
        ]
    )


def _rows(nodes: Sequence[BaseNode], vectors: np.ndarray, dim: int, schema: pa.Schema | None = None) -> pa.Table:
    """Rows in `schema` (default: ours); a LlamaIndex-written table's metadata struct gets its own keys filled."""
    schema = schema or table_schema(dim)
    if set(schema.names) != set(table_schema(dim).names):
        raise TuningError(
            f"the table's columns ({', '.join(schema.names)}) are not the LlamaIndex LanceDB layout "
            f"({', '.join(table_schema(dim).names)}); write to a table this package or LanceDBVectorStore made"
        )
    columns: dict[str, Any] = node_columns(nodes, schema)
    columns["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim)
    try:
        return pa.Table.from_pydict({name: columns[name] for name in schema.names}, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise TuningError(f"the nodes' metadata does not fit the table's metadata columns: {exc}") from None


def node_columns(nodes: Sequence[BaseNode], schema: pa.Schema) -> dict[str, list]:
    """Every column but `vector`, as `schema`'s table stores these nodes (its metadata struct's keys filled)."""
    keys = [f.name for f in schema.field("metadata").type]
    metadata = []
    for node in nodes:
        meta = node_to_metadata_dict(node, remove_text=False, flat_metadata=False)
        # User metadata lives inside _node_content; a fixed struct keeps later appends valid.
        metadata.append({k: meta.get(k) for k in keys})
    return {
        "id": [n.node_id for n in nodes],
        "doc_id": [n.ref_doc_id or n.node_id for n in nodes],
        "text": [n.get_content(metadata_mode=MetadataMode.NONE) for n in nodes],
        "metadata": metadata,
    }


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


def retrying_commit(table: lancedb.table.Table, action: Callable[[], Any]) -> Any:
    """Run a LanceDB commit, retried on a conflict with a concurrent writer."""
    # The handle still points at the version a concurrent writer replaced: refresh before each retry.
    return retry_commit_conflicts(action, table.checkout_latest, table.name)


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

    Args:
        nodes: the nodes to write, in order.
        embed_model: the LlamaIndex embedding that makes the passage vectors.
        db: an open LanceDB connection (`connect`).
        table_name: the table to write.
        mode: `create` refuses an existing table; `append` adds to it (same dimension only);
            `overwrite` replaces it.
        batch_size: nodes embedded and committed at a time.
        show_progress: a labeled progress bar.
        total: the number of nodes, for the bar.
    """
    table = table_to_extend(db, table_name, mode)
    create_mode = "overwrite" if mode == "overwrite" else "create"
    return append_nodes(
        nodes,
        embed_model,
        table,
        # append: another process may create the table first; then add to it rather than fail.
        lambda dim: db.create_table(
            table_name, schema=table_schema(dim, backend_of(embed_model)), mode=create_mode, exist_ok=mode == "append"
        ),
        batch_size,
        show_progress,
        total,
    )


def table_to_extend(db: lancedb.DBConnection, table_name: str, mode: TableMode) -> lancedb.table.Table | None:
    """The existing table a write in `mode` adds to (append only); refuses an unknown mode, or create over a table."""
    if mode not in ("create", "append", "overwrite"):
        raise TuningError(f"unknown mode '{mode}'; use create, append or overwrite")
    existing = existing_table(db, table_name)
    if existing is not None and mode == "create":
        raise TuningError(
            f"table '{table_name}' already exists in {db.uri}; open it, or pass mode='append' to add nodes "
            "or mode='overwrite' to replace it"
        )
    return existing if mode == "append" else None


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
    if table is not None:
        check_same_backend(table, embed_model)
    written = 0
    # An explicit disable=False would override TQDM_DISABLE (the CLI's --quiet): only ever pass True.
    with tqdm(total=total, desc="index", unit="node", **({} if show_progress else {"disable": True})) as bar:
        for batch in _batches(nodes, batch_size):
            vectors = embed_texts(embed_model, [n.get_content(metadata_mode=MetadataMode.EMBED) for n in batch])
            if not np.isfinite(vectors).all():
                raise TuningError("the embedding model made non-finite vectors; it is broken (retrain it with a lower --lr)")
            dim = vectors.shape[1]
            if table is None and create is not None:
                table = create(dim)
            elif table is not None and vector_dim(table) != dim:
                raise TuningError(
                    f"table '{table.name}' holds {vector_dim(table)}-dim vectors but the model makes {dim}-dim ones; "
                    "use the model the table was built with, or another table name"
                )
            assert table is not None, "append_nodes needs a table or a create callback"
            retrying_commit(table, partial(table.add, _rows(batch, vectors, dim, table.schema)))
            written += len(batch)
            bar.update(len(batch))
    if table is None:
        raise TuningError("no nodes to index; check that the documents produced text")
    ensure_fts_index(table, replace=True)
    logger.info("wrote %d nodes to %s", written, table.name)
    return table


def check_same_backend(table: lancedb.table.Table, embed_model: BaseEmbedding) -> None:
    """New vectors come from the runtime the table records (vectors of two runtimes differ slightly)."""
    recorded, backend = vector_field_metadata(table).get(BACKEND_KEY), backend_of(embed_model)
    if recorded is not None and backend is not None and recorded != backend:
        raise TuningError(
            f"table '{table.name}' holds vectors made with the {recorded} backend, not {backend}; "
            f"load the model with backend='{recorded}' (LanceDBIndex.open does)"
        )


def ensure_fts_index(table: lancedb.table.Table, replace: bool = False) -> None:
    """Build the full-text index on `text` (only the index: rows and vectors are untouched)."""
    if not replace and any("text" in (idx.columns or []) for idx in table.list_indices()):
        return
    retrying_commit(table, partial(table.create_index, "text", config=FTS(), replace=True))


def vector_field_metadata(table: lancedb.table.Table) -> dict[str, str]:
    """The key-value metadata of the `vector` column (LanceDB schema field metadata)."""
    raw = table.schema.field("vector").metadata or {}
    return {k.decode(): v.decode() for k, v in raw.items()}


def update_vector_field_metadata(table: lancedb.table.Table, values: dict[str, str | None]) -> None:
    """Set keys of the `vector` column's metadata (None removes one): one metadata-only commit, no row is rewritten.

    Field metadata lives in the table's manifest, so it travels with the table on local disk
    and object stores alike, and later appends keep it.
    """
    retrying_commit(table, partial(table.update_field_metadata, {"path": "vector", "metadata": values}))


def table_nodes(table: lancedb.table.Table) -> list[BaseNode]:
    """Every row of the table as its LlamaIndex node, with its stored vector (the whole table is read)."""
    rows = table.search().select(list(RESULT_COLUMNS)).limit(None).to_list()
    return [node_from_row(row) for row in rows]


def node_from_row(row: dict[str, Any]) -> BaseNode:
    """The LlamaIndex node a row holds, with its stored vector, so rerankers need not re-embed it."""
    meta = row["metadata"]
    if meta and meta.get("_node_content"):
        node = metadata_dict_to_node(meta)
        node.embedding = row.get("vector")
        return node
    return TextNode(
        id_=row["id"],
        text=row["text"] or "",
        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=row["doc_id"])},
    )


def scored_nodes(rows: list[dict[str, Any]], score_column: str) -> list[NodeWithScore]:
    """Rows as scored nodes; a cosine distance becomes a cosine similarity."""
    out = []
    for row in rows:
        score = row[score_column]
        if score_column == "_distance":
            score = 1.0 - score
        out.append(NodeWithScore(node=node_from_row(row), score=float(score)))
    return out


def vector_search_many(
    table: lancedb.table.Table, vectors: Sequence[np.ndarray], limit: int, nprobes: int, batch_size: int = 64
) -> list[list[NodeWithScore]]:
    """Top-`limit` rows per vector, one LanceDB query per batch of vectors (rows tagged with `query_index`)."""
    out: list[list[NodeWithScore]] = [[] for _ in vectors]
    for start, positions, rows in _vector_batches(table, vectors, limit, nprobes, list(RESULT_COLUMNS), batch_size):
        for position, hit in zip(positions, scored_nodes(rows.to_pylist(), "_distance")):
            out[start + position].append(hit)
    return out


def vector_ids_many(
    table: lancedb.table.Table, vectors: Sequence[np.ndarray], limit: int, nprobes: int, batch_size: int = 64
) -> list[list[tuple[str, float]]]:
    """(id, cosine similarity) of the top-`limit` rows per vector, best first: `vector_search_many`
    without reading the rows, for callers that read each distinct row once (`rows_by_id`)."""
    out: list[list[tuple[str, float]]] = [[] for _ in vectors]
    for start, positions, rows in _vector_batches(table, vectors, limit, nprobes, ["id"], batch_size):
        similarities = (1.0 - rows.column("_distance").to_numpy().astype(np.float64)).tolist()  # as `scored_nodes`
        for position, row_id, similarity in zip(positions, rows.column("id").to_pylist(), similarities):
            out[start + position].append((row_id, similarity))
    return out


def _vector_batches(
    table: lancedb.table.Table, vectors: Sequence[np.ndarray], limit: int, nprobes: int, columns: list[str], batch_size: int
) -> Iterator[tuple[int, list[int], pa.Table]]:
    """(first vector's position, each row's vector within the batch, the rows) per LanceDB query of up
    to `batch_size` vectors."""
    for start in range(0, len(vectors), batch_size):
        batch = [np.asarray(v, dtype=np.float32) for v in vectors[start : start + batch_size]]
        search: Any = table.search(batch if len(batch) > 1 else batch[0])  # a vector query builder
        rows = search.distance_type("cosine").nprobes(nprobes).select([*columns, "_distance"]).limit(limit).to_arrow()
        positions = rows.column("query_index").to_pylist() if "query_index" in rows.column_names else [0] * rows.num_rows
        yield start, positions, rows


def fts_ids(table: lancedb.table.Table, query: str, limit: int, where: str | None = None) -> list[tuple[str, float]]:
    """(id, BM25 score) of the top full-text matches, best first; none for no match."""
    search = table.search(query, query_type="fts", fts_columns="text")
    if where is not None:
        search = search.where(where, prefilter=True)
    try:
        rows = search.select(["id", "_score"]).limit(limit).to_list()
    except Warning:  # LanceDB signals "no full-text match" with a bare Warning in some versions
        return []
    return [(r["id"], float(r["_score"])) for r in rows]


def rows_by_id(table: lancedb.table.Table, ids: Iterable[str], chunk: int = 1000) -> dict[str, BaseNode]:
    """The nodes stored under these ids."""
    out: dict[str, BaseNode] = {}
    ordered = sorted(set(ids))
    for start in range(0, len(ordered), chunk):
        where = f"id IN ({sql_id_list(ordered[start : start + chunk])})"
        rows = table.search().where(where).select(list(RESULT_COLUMNS)).limit(None).to_list()
        out.update((row["id"], node_from_row(row)) for row in rows)
    return out


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
