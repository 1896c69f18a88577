"""The two encoders of a table: the document encoder that made its vectors, and the query encoder
that searches them (the same model, or one tuned against the frozen vectors), recorded with the table.

The pair is written into the `vector` column's LanceDB field metadata. Unlike a file beside
the table, it lives in the table's manifest, so it travels with the table wherever the table
lives (a local directory, S3, GCS) and is versioned with it; unlike a table tag, it names a
model rather than a version, and survives later appends and `cleanup_old_versions`.

Re-embedding a table takes one commit for the vectors and another for this record, so a swap
first records the incoming pair as *pending*, with the digest of one row's incoming vector:
a reader that finds a pending pair checks that row to learn which pair the vectors it sees
came from, so no version of the table, even one a kill left behind, names the wrong models.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lancedb
import numpy as np
from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import Field

from ..config import Backend, EncoderBackend
from ..encoding.embed_models import BACKEND_KEY, BACKENDS, embed_texts, encoder_name, resolve_backend
from .table import sql_id_list, update_vector_field_metadata, vector_field_metadata

QUERY_ENCODER_KEY = "lancedb:tag:query_encoder"
DOCUMENT_ENCODER_KEY = "lancedb:tag:document_encoder"
PENDING_KEY = "lancedb:tag:pending"
# The reranker a promotion put in service for the reranked query types (a `RerankerSpec` string).
RERANKER_KEY = "lancedb:tag:reranker"


@dataclass(frozen=True)
class EncoderNames:
    """Where the two models load from: a local directory or a hub id each."""

    query_encoder: str
    document_encoder: str


def vector_digest(vector: Sequence[float] | np.ndarray) -> str:
    """A short digest of a vector's float32 bytes: which model made a stored vector, without the model."""
    return hashlib.sha1(np.asarray(vector, dtype=np.float32).tobytes()).hexdigest()[:16]


def stored_vector_digest(table: lancedb.table.Table, row_id: str) -> str | None:
    rows = table.search().where(f"id IN ({sql_id_list([row_id])})").select(["vector"]).limit(1).to_list()
    return vector_digest(rows[0]["vector"]) if rows else None


def resolved_metadata(table: lancedb.table.Table) -> dict[str, str]:
    """The `vector` column's metadata as it describes this version's vectors: a pending record counts
    once its vectors are in place (its probe row holds the incoming vector)."""
    meta = vector_field_metadata(table)
    pending = json.loads(meta.pop(PENDING_KEY)) if meta.get(PENDING_KEY) else None
    if pending is not None and stored_vector_digest(table, pending["probe_id"]) == pending["probe_digest"]:
        meta.update(pending["record"])
    return meta


def recorded_encoders(table: lancedb.table.Table) -> EncoderNames | None:
    """The pair that made the vectors of the table's version, or None for a table no tuning has recorded."""
    meta = resolved_metadata(table)
    if QUERY_ENCODER_KEY not in meta or DOCUMENT_ENCODER_KEY not in meta:
        return None
    return EncoderNames(meta[QUERY_ENCODER_KEY], meta[DOCUMENT_ENCODER_KEY])


def recorded_reranker(table: lancedb.table.Table) -> str | None:
    """The reranker a promotion recorded for the table's version (`cross-encoder:PATH`), or None."""
    return resolved_metadata(table).get(RERANKER_KEY) or None


def encoder_keys(names: EncoderNames) -> dict[str, str]:
    """The metadata keys that record `names`."""
    return {QUERY_ENCODER_KEY: names.query_encoder, DOCUMENT_ENCODER_KEY: names.document_encoder}


def record_pending(table: lancedb.table.Table, record: dict[str, str], probe_id: str, probe_vector: Sequence[float]) -> None:
    """Record metadata keys that hold once row `probe_id` (and with it every row) gets its incoming vector."""
    pending = {"record": record, "probe_id": probe_id, "probe_digest": vector_digest(probe_vector)}
    update_vector_field_metadata(table, {PENDING_KEY: json.dumps(pending)})


def record_encoders(table: lancedb.table.Table, names: EncoderNames, extra: dict[str, str] | None = None) -> None:
    """Record the pair with the table, with `extra` metadata keys, in one metadata-only commit (no row is rewritten)."""
    update_vector_field_metadata(table, {**encoder_keys(names), **(extra or {}), PENDING_KEY: None})


def table_backend(table: lancedb.table.Table, requested: Backend = "auto") -> EncoderBackend:
    """The runtime that embeds the table's queries and new rows: `requested`, unless it is `auto`; then
    the one recorded with the table, so that queries meet vectors of their own runtime, or `torch` for
    a table that records none (LlamaIndex's `HuggingFaceEmbedding` or torch wrote it)."""
    if requested != "auto":
        return resolve_backend(requested)
    recorded = vector_field_metadata(table).get(BACKEND_KEY, "torch")
    return resolve_backend(recorded if recorded in BACKENDS else "torch")  # type: ignore[arg-type]


class EncoderPair(BaseEmbedding):
    """An asymmetric LlamaIndex embedding: queries by the query encoder, documents by the document encoder.

    What a `VectorStoreIndex` or a reranker over a query-tuned table needs: inserting embeds
    with the table's original model, searching with the tuned one, so the two never mix.

    Args:
        query_encoder: embeds queries.
        document_encoder: embeds documents (the model the table's vectors were made with).
    """

    query_encoder: BaseEmbedding = Field(description="Embeds queries.")
    document_encoder: BaseEmbedding = Field(description="Embeds documents: the model the table's vectors were made with.")

    def __init__(self, query_encoder: BaseEmbedding, document_encoder: BaseEmbedding, **kwargs: Any) -> None:
        kwargs.setdefault("model_name", f"{encoder_name(query_encoder)} | {encoder_name(document_encoder)}")
        kwargs.setdefault("embed_batch_size", document_encoder.embed_batch_size)
        super().__init__(query_encoder=query_encoder, document_encoder=document_encoder, **kwargs)  # type: ignore[call-arg]

    @classmethod
    def class_name(cls) -> str:
        return "EncoderPair"

    def _get_query_embedding(self, query: str) -> Embedding:
        return self.query_encoder.get_query_embedding(query)

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await self.query_encoder.aget_query_embedding(query)

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._get_text_embeddings([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        vectors: np.ndarray = embed_texts(self.document_encoder, texts)
        return vectors.tolist()
