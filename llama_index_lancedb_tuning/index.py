"""`LanceDBIndex`: a LanceDB table with the embedding model that filled it, and LlamaIndex views on it.

The stages it joins live beside it: `store` (schema, writes, reading rows), `retrievers`
(the five query types), `shared_search` (candidates shared during evaluation).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lancedb
from llama_index.core import VectorStoreIndex
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import BaseNode
from llama_index.vector_stores.lancedb import LanceDBVectorStore

from .config import HYBRID_OVERFETCH, QUERY_TYPES, RERANK_OVERFETCH, QueryType
from .encoding import load_embed_model
from .errors import TuningError
from .retrievers import LanceDBRetriever, RerankedRetriever
from .store import DEFAULT_TABLE, DEFAULT_URI, TableMode, append_nodes, connect, open_table, vector_dim, write_nodes


@dataclass
class LanceDBIndex:
    """A LanceDB table with the embedding model that filled it, and LlamaIndex views on it.

    Args:
        table: the LanceDB table.
        embed_model: the LlamaIndex embedding its vectors were made with.
    """

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
        """Embed `nodes` into a new table (or, when asked, append to or replace one).

        Args:
            nodes: the nodes to index; each keeps its id, source and metadata.
            embed_model: a LlamaIndex embedding, a model path or hub id (default: the bundled MiniLM).
            uri: a LanceDB directory, `s3://…`, `gs://…` or `db://…`.
            table_name: the table to write.
            mode: `create` (default) refuses an existing table; `append` adds to it; `overwrite` replaces it.
            storage_options: passed to LanceDB as is (object-store credentials and endpoints).
            show_progress: a labeled progress bar.
        """
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
        """Reopen an existing table without re-embedding; the model must match its dimension.

        Args:
            embed_model: the model the table was built with (a LlamaIndex embedding, path or hub id).
            uri: where the table lives.
            table_name: the table.
            storage_options: passed to LanceDB as is.
        """
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
        return LanceDBVectorStore(connection=self.table._conn, table=self.table, mode="append")  # type: ignore[attr-defined]

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
            candidates = similarity_top_k * overfetch
            base = LanceDBRetriever(self.table, self.embed_model, query_type[len("reranked_") :], candidates)  # type: ignore[arg-type]
            return RerankedRetriever(base, reranker, similarity_top_k)
        depth = similarity_top_k * hybrid_overfetch if query_type == "hybrid" else None
        return LanceDBRetriever(self.table, self.embed_model, query_type, similarity_top_k, hybrid_reranker, hybrid_depth=depth)  # type: ignore[arg-type]

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
