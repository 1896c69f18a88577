"""An app's existing LanceDB table as the corpus of a `lancedb-tune run --table`: read, never written.

Its rows (ours or LlamaIndex's `LanceDBVectorStore` layout) are the run's nodes, with their
stored vectors. The run scores and tunes against a copy of those rows in its own directory,
so even the full-text index a search needs is built on the copy, not on the user's table.
"""

from __future__ import annotations

from dataclasses import dataclass

import lancedb
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.schema import BaseNode, NodeWithScore

from ..common.wording import counted
from ..data.qa_dataset import QADataset
from ..errors import TuningError
from ..evaluation.metrics import node_source
from ..search.index import LanceDBIndex
from ..store.table import connect, ensure_fts_index, open_table, table_nodes, vector_dim


@dataclass(frozen=True)
class SourceTable:
    """The table and its rows as LlamaIndex nodes (stored vectors included), read once.

    Args:
        table: the user's table; nothing here writes to it.
        nodes: its rows, in `store.table_nodes`' form.
    """

    table: lancedb.table.Table
    nodes: list[BaseNode]

    @classmethod
    def read(cls, table: lancedb.table.Table) -> SourceTable:
        nodes = table_nodes(table)
        if not nodes:
            raise TuningError(f"table '{table.name}' holds no rows; index documents into it first")
        return cls(table, nodes)

    @classmethod
    def open(cls, uri: str, table_name: str, storage_options: dict[str, str] | None = None) -> SourceTable:
        """The table `table_name` at `uri`, read whole.

        Args:
            uri: a LanceDB directory, `s3://…`, `gs://…` or `db://…`.
            table_name: the table to read.
            storage_options: passed to LanceDB as is.
        """
        return cls.read(open_table(connect(uri, storage_options), table_name))

    def sources(self) -> set[str]:
        """The ids of the documents the rows came from (a node's `source_id` metadata, else its `ref_doc_id`)."""
        return {node_source(NodeWithScore(node=n)) for n in self.nodes}

    def identity(self) -> dict:
        """What a resumed run must find unchanged: where the table is and which version it was read at."""
        return {"uri": str(getattr(self.table, "uri", "")), "name": self.table.name, "version": self.table.version}

    def check_labels(self, dataset: QADataset) -> None:
        """Every labeled query points at a document the table holds: relevance is matched by document id."""
        held = self.sources()
        strays = [q for q in dataset.query_ids if not held & set(dataset.relevant_docs[q])]
        if strays:
            example = sorted(held)[:3]
            raise TuningError(
                f"{len(strays)} of {counted(len(dataset), 'labeled query')} point at no document of table "
                f"'{self.table.name}' (its document ids look like {', '.join(example)}); label the queries with the "
                "ids of the table's documents (the doc_id LlamaIndex was given)"
            )

    def copy_to(self, uri: str, table_name: str, embed_model: BaseEmbedding) -> LanceDBIndex:
        """The rows, vectors as stored, written to `table_name` at `uri` with a full-text index; `embed_model`
        embeds queries and must make vectors of the table's dimension."""
        dim = len(embed_model.get_query_embedding("dimension check"))
        if dim != vector_dim(self.table):
            raise TuningError(
                f"table '{self.table.name}' holds {vector_dim(self.table)}-dim vectors but the model makes {dim}-dim ones; "
                "pass the model the table was built with as --base-model"
            )
        copy = connect(uri).create_table(table_name, data=self.table.to_arrow(), mode="overwrite")
        ensure_fts_index(copy)
        return LanceDBIndex(copy, embed_model)
