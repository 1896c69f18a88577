"""`LanceDBIndex`: a LanceDB table with the embedding model that filled it, and LlamaIndex views on it.

The stages it joins live beside it: `store.table` (schema, writes, reading rows), `retrievers`
(the five query types), `shared_search` (candidates shared during evaluation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, get_args

import lancedb
from llama_index.core import VectorStoreIndex
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import BaseNode
from llama_index.vector_stores.lancedb import LanceDBVectorStore

from ..config import HYBRID_OVERFETCH, QUERY_TYPES, RERANK_OVERFETCH, EncoderBackend, Engine, QueryType
from ..encoding.adapted_embedding import AdaptedEmbedding, adapts, is_adapter_dir
from ..encoding.embed_models import encoder_name, load_embed_model
from ..errors import TuningError
from ..store.encoder_record import EncoderNames, EncoderPair, recorded_encoders, table_backend
from ..store.lancedb_internals import table_connection
from ..store.table import (
    DEFAULT_TABLE,
    DEFAULT_URI,
    TableMode,
    append_nodes,
    connect,
    ensure_fts_index,
    open_table,
    vector_dim,
    write_nodes,
)
from .retrievers import LanceDBRetriever, RerankedRetriever


def query_model(model: str | BaseEmbedding, document_encoder: BaseEmbedding, backend: EncoderBackend) -> BaseEmbedding:
    """A query encoder: an embedding as it is, an adapter folder over `document_encoder`, or a model path or hub id."""
    if isinstance(model, str) and is_adapter_dir(model):
        return AdaptedEmbedding.load(model, document_encoder)
    return load_embed_model(model, backend=backend)


def recorded_pair(
    names: EncoderNames, backend: EncoderBackend, serving: BaseEmbedding | None = None
) -> tuple[BaseEmbedding, BaseEmbedding | None]:
    """(document encoder, query encoder or None when the same) loaded from their recorded names, in the runtime
    `backend` of the table's vectors. `serving` is the document encoder when it bears its recorded name; else an
    adapter's base is made again from the adapter's description of it (`adapted_embedding.rebuild_embedding`)."""
    document = serving if serving is not None and encoder_name(serving) == names.document_encoder else None
    if is_adapter_dir(names.query_encoder):
        adapted = AdaptedEmbedding.load(names.query_encoder, document, backend)
        return adapted.base, adapted
    document = document or load_embed_model(names.document_encoder, backend=backend)
    same = names.query_encoder == names.document_encoder
    return document, None if same else load_embed_model(names.query_encoder, backend=backend)


@dataclass
class LanceDBIndex:
    """A LanceDB table with the embedding model that filled it, and LlamaIndex views on it.

    Args:
        table: the LanceDB table.
        embed_model: the LlamaIndex embedding its vectors were made with (the document encoder).
        query_encoder: the model that embeds queries when it is not `embed_model`: one tuned
            against the table's frozen vectors (None: `embed_model` embeds queries too).
    """

    table: lancedb.table.Table
    embed_model: BaseEmbedding
    query_encoder: BaseEmbedding | None = None

    @property
    def query_model(self) -> BaseEmbedding:
        """The model that embeds queries."""
        return self.query_encoder or self.embed_model

    @property
    def embedding(self) -> BaseEmbedding:
        """One LlamaIndex embedding for both sides: an `EncoderPair` when queries have their own encoder."""
        if self.query_encoder is None:
            return self.embed_model
        return EncoderPair(query_encoder=self.query_encoder, document_encoder=self.embed_model)

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
        engine: Engine = "local",
    ) -> LanceDBIndex:
        """Embed `nodes` into a new table (or, when asked, append to or replace one).

        Args:
            nodes: the nodes to index; each keeps its id, source and metadata.
            embed_model: a LlamaIndex embedding, a model path or hub id (default: the bundled MiniLM),
                loaded with the `auto` backend; the table records the runtime for later queries.
            uri: a LanceDB directory, `s3://…`, `gs://…` or `db://…`.
            table_name: the table to write.
            mode: `create` (default) refuses an existing table; `append` adds to it; `overwrite` replaces it.
            storage_options: passed to LanceDB as is (object-store credentials and endpoints).
            show_progress: a labeled progress bar.
            engine: `local` embeds and writes in this process; `ray` on Ray Data workers, written by lance-ray
                (`ray_ingest.ray_write_nodes`, the `[ray]` extra), into the same table.
        """
        if engine not in get_args(Engine):
            raise TuningError(f"unknown engine '{engine}'; use local or ray")
        if engine == "ray":
            from ..store.ray_ingest import ray_write_nodes

            table = ray_write_nodes(nodes, embed_model, uri, table_name, mode, storage_options, show_progress=show_progress)
            # Queries in the runtime the workers embedded with (recorded, else torch), not `auto`'s.
            return cls(table, load_embed_model(embed_model, backend=table_backend(table)))
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
        query_encoder: str | BaseEmbedding | None = None,
    ) -> LanceDBIndex:
        """Reopen an existing table without re-embedding; the models must match its dimension.

        A table written by LlamaIndex's `LanceDBVectorStore` opens too; a missing full-text index
        is built (only the index: rows and vectors are untouched).

        Args:
            embed_model: the model the table was built with (a LlamaIndex embedding, path or hub id);
                None: the document encoder recorded with the table by tuning, else the bundled MiniLM.
                A path or id loads in the runtime the table records (`encoders.table_backend`). When
                the table records an adapter trained on this model's query vectors, the adapter
                embeds the queries (an API embedding is passed with its key, which is never recorded).
            uri: where the table lives.
            table_name: the table.
            storage_options: passed to LanceDB as is.
            query_encoder: a model that embeds queries instead of `embed_model`, or an adapter folder
                applied to it; None: the one recorded with the table when `embed_model` is None too (or
                the adapter recorded for `embed_model`), else `embed_model`.
        """
        table = open_table(connect(uri, storage_options), table_name)
        recorded = recorded_encoders(table)
        backend = table_backend(table)  # the runtime its vectors were made with
        if embed_model is None and recorded is not None:
            model, queries = recorded_pair(recorded, backend)
        else:
            model, queries = load_embed_model(embed_model, backend=backend), None
            adapter = recorded.query_encoder if recorded is not None and embed_model is not None else None
            if query_encoder is None and adapter is not None and adapts(adapter, model):
                query_encoder = adapter  # the app's own embedding, with the adapter the table records for it
        if query_encoder is not None:
            queries = query_model(query_encoder, model, backend)
        # An adapted encoder makes its base's dimension, which its loading checked.
        for role, m in (("model", model), ("query encoder", None if isinstance(queries, AdaptedEmbedding) else queries)):
            dim = None if m is None else len(m.get_query_embedding("dimension check"))
            if dim is not None and dim != vector_dim(table):
                raise TuningError(
                    f"table '{table_name}' holds {vector_dim(table)}-dim vectors but the {role} makes {dim}-dim ones; "
                    "open it with the model it was built with"
                )
        ensure_fts_index(table)
        return cls(table, model, queries)

    @classmethod
    def from_record(
        cls, table: lancedb.table.Table, names: EncoderNames | None, serving: BaseEmbedding | None = None
    ) -> LanceDBIndex:
        """`table` with the pair `names` records (a rollback's restored pair), `serving` reused when it is that
        document encoder: an API embedding cannot be loaded again by its name."""
        if names is None:
            raise TuningError(
                "the promotion rolled back did not record the encoders it replaced; reopen the table with from_table(embed_model=...)"
            )
        return cls(table, *recorded_pair(names, table_backend(table), serving))

    def add(self, nodes: Sequence[BaseNode], show_progress: bool = False) -> None:
        """Append nodes; the full-text index is rebuilt so new text is searchable at once."""
        append_nodes(nodes, self.embed_model, self.table, show_progress=show_progress, total=len(nodes))

    def vector_store(self) -> LanceDBVectorStore:
        # mode="append": LanceDBVectorStore defaults to "overwrite", which would replace the table on its first add.
        return LanceDBVectorStore(connection=table_connection(self.table), table=self.table, mode="append")

    def vector_store_index(self) -> VectorStoreIndex:
        return VectorStoreIndex.from_vector_store(self.vector_store(), embed_model=self.embedding)

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
            candidates = similarity_top_k * overfetch
            base = LanceDBRetriever(self.table, self.query_model, query_type[len("reranked_") :], candidates)  # type: ignore[arg-type]
            return RerankedRetriever(base, reranker, similarity_top_k)
        depth = similarity_top_k * hybrid_overfetch if query_type == "hybrid" else None
        return LanceDBRetriever(self.table, self.query_model, query_type, similarity_top_k, hybrid_reranker, hybrid_depth=depth)  # type: ignore[arg-type]

    def retrievers(
        self,
        similarity_top_k: int = 5,
        reranker: BaseNodePostprocessor | None = None,
        hybrid_reranker: Any = None,
        overfetch: int = RERANK_OVERFETCH,
        hybrid_overfetch: int = HYBRID_OVERFETCH,
    ) -> dict[str, BaseRetriever]:
        """All five query types of the reference table (the reranked ones only with a reranker)."""
        types: tuple[QueryType, ...] = QUERY_TYPES if reranker is not None else ("vector", "fts", "hybrid")
        return {qt: self.retriever(qt, similarity_top_k, reranker, hybrid_reranker, overfetch, hybrid_overfetch) for qt in types}
