"""A table's model history as LanceDB versions: each promotion of a tuned model is a tagged version
recording its models and validation figures, and a rollback restores the version before it.

LanceDB commits every change as a new version and keeps old versions readable, so a reader sees
whole versions only, and a tag keeps a version from `cleanup_old_versions`. A promotion tags the
serving version first (rollback can always reach it). A full re-embedding then records the
incoming record as pending (see `encoder_record`), commits every row's new vector in one commit,
settles the record and rebuilds the full-text index; a query-side or a reranker promotion is the
record's commit alone. The version that results is tagged. A rollback is LanceDB's `restore`: one commit
that brings back that version's rows, vectors, indices and recorded encoders as they were.

Versions of the one table rather than a new table swapped in: LanceDB OSS has no `rename_table`,
so every reader (LlamaIndex's `LanceDBVectorStore` included) would have to move to a new name,
while a version keeps the name, and writing the rows as one costs about what writing a new table
does (`benchmarks/swap_gate.py --swap-rows`). Rows appended by another process during a full
re-embedding keep their old vectors: pause appends while one is promoted.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.schema import BaseNode, MetadataMode

from ..common.wording import counted
from ..config import TuneMode
from ..encoding.embed_models import backend_of, embed_texts, encoder_name, load_embed_model
from ..errors import TuningError
from .encoder_record import (
    RERANKER_KEY,
    EncoderNames,
    encoder_keys,
    record_encoders,
    record_pending,
    recorded_encoders,
    recorded_reranker,
    resolved_metadata,
    table_backend,
)
from .lancedb_internals import table_connection
from .table import RESULT_COLUMNS, append_nodes, ensure_fts_index, node_from_row, retrying_commit, vector_dim

PROMOTION_KEY = "lancedb:tag:promotion"
_TAG = re.compile(r"promotion-(\d+)(-before)?")


@dataclass(frozen=True)
class Promotion:
    """One promotion of a tuned model, as `history` lists it.

    Args:
        number: 1 for the table's first promotion, and so on.
        version: the table version it produced (tagged `promotion-N`); None if the process was
            killed before tagging it.
        previous_version: the version it replaced (tagged `promotion-N-before`), which rollback restores.
        mode: `query` (query encoder switched), `adapter` (an adapter on the queries switched), `full` (table
            re-embedded) or `reranker` (the reranked types' reranker switched).
        encoders: the pair it put in service.
        previous_encoders: the pair serving before it (None: the table recorded none).
        figures: the gate's validation figures of both models.
        serving: whether the table serves this promotion now.
        reranker: the reranker its version records (None: the app's own choice).
        previous_reranker: for a `reranker` promotion, the one it replaced (None: the app's own postprocessor).
    """

    number: int
    version: int | None
    previous_version: int
    mode: str
    encoders: EncoderNames
    previous_encoders: EncoderNames | None
    figures: dict[str, Any] = field(default_factory=dict)
    serving: bool = False
    reranker: str | None = None
    previous_reranker: str | None = None


def reembedded_rows(table: lancedb.table.Table, embed_model: BaseEmbedding, batch_size: int = 2048) -> pa.Table:
    """Every row of the table with its vector made by `embed_model`; ids, text and metadata as they are."""
    rows = table.to_arrow()
    texts = [
        node_from_row(r).get_content(metadata_mode=MetadataMode.EMBED) for r in rows.select(list(RESULT_COLUMNS)).to_pylist()
    ]
    vectors = np.concatenate([embed_texts(embed_model, texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)])
    if not np.isfinite(vectors).all():
        raise TuningError("the embedding model made non-finite vectors; it is broken (retrain it with a lower learning rate)")
    dim = vector_dim(table)
    if vectors.shape[1] != dim:
        raise TuningError(f"table '{table.name}' holds {dim}-dim vectors but the model makes {vectors.shape[1]}-dim ones")
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim)
    position = rows.schema.get_field_index("vector")
    return rows.set_column(position, rows.schema.field("vector"), column)


def _tags(table: lancedb.table.Table) -> dict[str, int]:
    return {name: info["version"] for name, info in table.tags.list().items()}


def current_promotion(table: lancedb.table.Table) -> dict[str, Any] | None:
    """The record of the promotion the table's version serves, or None before any."""
    raw = resolved_metadata(table).get(PROMOTION_KEY)
    return json.loads(raw) if raw else None


def promote(
    table: lancedb.table.Table,
    encoders: EncoderNames,
    previous_encoders: EncoderNames | None,
    figures: dict[str, Any],
    rows: pa.Table | None = None,
    mode: TuneMode | None = None,
    reranker: tuple[str, str | None] | None = None,
) -> int:
    """Put a tuned pair (or reranker) in service as a new tagged version; returns that version.

    Args:
        table: the serving table.
        encoders: the pair to serve from now on.
        previous_encoders: the pair serving now, which a rollback brings back.
        figures: the validation figures to keep with the version.
        rows: the re-embedded rows (`reembedded_rows`) for a full promotion; None switches the
            query encoder only (no row is rewritten).
        mode: the tuning mode to record (None: `full` with rows, else `query`); `adapter` switches
            the query encoder too.
        reranker: for a `reranker` promotion, (the reranker to serve from now on, the one serving now or
            None for an app's own postprocessor); `encoders` stay as they are.
    """
    table.checkout_latest()
    previous_version = table.version
    numbers = [int(m.group(1)) for name in _tags(table) if (m := _TAG.fullmatch(name))]
    number = max(numbers, default=0) + 1
    table.tags.create(f"promotion-{number}-before", previous_version)
    promotion: dict[str, Any] = {
        "number": number,
        "previous_version": previous_version,
        "mode": mode or ("query" if rows is None else "full"),
        "previous_encoders": None if previous_encoders is None else vars(previous_encoders),
        "figures": figures,
    }
    if reranker is not None:
        promotion["previous_reranker"] = reranker[1]
    extra = {PROMOTION_KEY: json.dumps(promotion)} | ({} if reranker is None else {RERANKER_KEY: reranker[0]})
    if rows is not None:
        probe = rows.slice(0, 1).select(["id", "vector"]).to_pylist()[0]
        record_pending(table, {**encoder_keys(encoders), **extra}, probe["id"], probe["vector"])
        retrying_commit(table, lambda: table.merge_insert("id").when_matched_update_all().execute(rows))
    record_encoders(table, encoders, extra)
    if rows is not None:
        ensure_fts_index(table, replace=True)  # the old index still answers (unindexed rows are scanned) until then
    table.tags.create(f"promotion-{number}", table.version)
    return table.version


def rollback(table: lancedb.table.Table, document_encoder: BaseEmbedding | None = None) -> tuple[int, EncoderNames | None]:
    """Restore the version the serving promotion replaced; returns the new version and the pair serving again.

    Rows added after the promotion are not in that version: they are added again, embedded by the
    document encoder the restored version records (their ids, text and metadata as they are), so a
    rollback never loses a row. Rows deleted after the promotion come back with the old version.

    Args:
        table: the serving table.
        document_encoder: the document encoder serving now; it embeds the added rows when the restored
            version records the same one in the same runtime (an API embedding has no path to be loaded by).
    """
    table.checkout_latest()
    promotion = current_promotion(table)
    if promotion is None:
        raise TuningError(f"table '{table.name}' serves no promotion to roll back; its history lists what it served")
    restored = promotion["previous_version"]
    previous = None if promotion["previous_encoders"] is None else EncoderNames(**promotion["previous_encoders"])
    added = _rows_added_since(table, restored)
    if added:
        if previous is None:
            raise TuningError(
                f"{counted(len(added), 'row')} of table '{table.name}' were added after promotion-{promotion['number']}, and the "
                "version it restores records no encoder to embed them with; add them again after rolling back by hand "
                "(LanceDB restore), or keep serving the promotion"
            )
        backend = table_backend(_at_version(table, restored))
        same = document_encoder is not None and encoder_name(document_encoder) == previous.document_encoder
        if not same or backend_of(document_encoder) not in (None, backend):  # type: ignore[arg-type]
            # Loaded before the restore: a model that fails to load leaves the table as it was.
            document_encoder = load_embed_model(previous.document_encoder, backend=backend)
    retrying_commit(table, partial(table.restore, restored))
    if added:
        assert document_encoder is not None
        append_nodes(added, document_encoder, table, show_progress=False, total=len(added))
    return table.version, previous


def _at_version(table: lancedb.table.Table, version: int) -> lancedb.table.Table:
    """A second handle on `table`, checked out at `version`: `table` itself stays on the latest."""
    reader = table_connection(table).open_table(table.name)
    reader.checkout(version)
    return reader


def _rows_added_since(table: lancedb.table.Table, version: int) -> list[BaseNode]:
    """The rows of the latest version whose ids `version` does not hold, as nodes."""
    before = set(_at_version(table, version).to_arrow().column("id").to_pylist())
    rows = table.search().select(list(RESULT_COLUMNS)).limit(None).to_list()
    return [node_from_row(row) for row in rows if row["id"] not in before]


def history(table: lancedb.table.Table) -> list[Promotion]:
    """Every promotion of the table, oldest first, the one it serves marked, rolled-back ones included."""
    table.checkout_latest()
    serving = current_promotion(table)
    tags = _tags(table)
    reader = _at_version(table, table.version)
    out = []
    for name, version in sorted(tags.items(), key=lambda item: item[1]):
        match = _TAG.fullmatch(name)
        if match is None or match.group(2):
            continue
        reader.checkout(version)
        promotion = current_promotion(reader)
        if promotion is not None:
            out.append(_entry(promotion, version, serving, reader))
    if serving is not None and all(p.number != serving["number"] for p in out):  # killed before its tag
        out.append(_entry(serving, None, serving, table))
    return out


def _entry(
    promotion: dict[str, Any], version: int | None, serving: dict[str, Any] | None, table: lancedb.table.Table
) -> Promotion:
    previous = promotion["previous_encoders"]
    encoders = recorded_encoders(table)
    assert encoders is not None, "a promotion's version records its encoders"
    return Promotion(
        number=promotion["number"],
        version=version,
        previous_version=promotion["previous_version"],
        mode=promotion["mode"],
        encoders=encoders,
        previous_encoders=None if previous is None else EncoderNames(**previous),
        figures=promotion["figures"],
        serving=serving is not None and serving["number"] == promotion["number"],
        reranker=recorded_reranker(table),
        previous_reranker=promotion.get("previous_reranker"),
    )
