"""Tuning the embedding model of a table an app already has, on the table's own nodes.

Two recipes. `query`: the table's stored vectors stay as they are, frozen, and only a query
encoder is trained against them (`QueryOnlyLoss`); no row is rewritten, and new documents
are still embedded by the table's original model. `full`: both sides are tuned and every
row is re-embedded with the tuned model (ids, text and metadata kept).
"""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

from .config import FinetuneConfig, TuneMode
from .dataset import QADataset
from .encoders import EncoderNames, encoder_name, record_encoders, table_backend
from .encoding import load_embed_model
from .errors import TuningError
from .index import LanceDBIndex
from .store import rewrite_vectors, table_nodes

if TYPE_CHECKING:
    from .finetune import FinetuneResult

TUNE_MODES: tuple[str, ...] = get_args(TuneMode)
# Set by the recipe itself: an override would contradict the mode or the table's model.
_RECIPE_FIELDS = ("freeze_passages",)


def default_output_dir(index: LanceDBIndex, mode: TuneMode) -> Path:
    """Beside a local table: `<uri>/<table>.<mode>-tuned-v<version>`, new for each tuning of the table."""
    table = index.table
    uri = getattr(table, "uri", None)  # a LanceDB Cloud table has none
    if not isinstance(uri, str) or ("://" in uri and not uri.startswith("file://")):
        raise TuningError(f"table '{table.name}' is not on local disk; pass output_dir= for the tuned model")
    return Path(uri.removeprefix("file://")).parent / f"{table.name}.{mode}-tuned-v{table.version}"


def tuning_config(index: LanceDBIndex, mode: TuneMode, overrides: dict[str, Any]) -> FinetuneConfig:
    """The fine-tuning settings: quiet, from the table's document encoder, frozen passages for `query`."""
    if mode not in TUNE_MODES:
        raise TuningError(f"unknown tuning mode '{mode}'; use query (table kept) or full (table re-embedded)")
    known = {f.name for f in fields(FinetuneConfig)} - set(_RECIPE_FIELDS)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TuningError(
            f"unknown fine-tuning setting {', '.join(unknown)}; use FinetuneConfig's fields: {', '.join(sorted(known))}"
        )
    base = overrides.get("base_model") or encoder_name(index.embed_model)
    if base is None:
        raise TuningError("the table's embed_model has no model path to tune from; pass base_model=PATH_OR_HUB_ID")
    settings = {"show_progress": False, **overrides, "base_model": base, "freeze_passages": mode == "query"}
    return FinetuneConfig(**settings)


def tune_index(
    index: LanceDBIndex,
    train: QADataset,
    mode: TuneMode = "query",
    output_dir: str | Path | None = None,
    **overrides: Any,
) -> tuple[LanceDBIndex, FinetuneResult]:
    """Tune the table's model on `train` and return the index that serves the result, with the `FinetuneResult`.

    Training nodes are the table's rows, grouped by the document each came from (its `source_id`
    metadata, else its `ref_doc_id`), so `train`'s corpus ids must be those documents' ids.
    Validation queries are carved from `train` as `EmbeddingFinetuner` does.

    Args:
        index: the table and its models.
        train: labeled queries over the table's documents.
        mode: `query` (the table is not rewritten) or `full` (the table is re-embedded).
        output_dir: where the tuned model goes; default beside a local table (required otherwise).
        **overrides: `FinetuneConfig` fields (epochs, learning_rate, batch_size...).
    """
    from .finetune import EmbeddingFinetuner  # torch and sentence-transformers: only once tuning starts

    config = tuning_config(index, mode, overrides)
    document_name = encoder_name(index.embed_model)
    if mode == "query" and document_name is None:
        raise TuningError(
            "the table's embed_model has no model path to record beside the tuned query encoder; open it with a path or hub id"
        )
    out = Path(output_dir).expanduser() if output_dir is not None else default_output_dir(index, mode)
    if out.is_dir() and any(out.iterdir()):
        raise TuningError(f"{out} exists and is not empty; pass another output_dir= for the tuned model")
    nodes = table_nodes(index.table)
    stored = {n.node_id: n.embedding for n in nodes} if mode == "query" else None
    result = EmbeddingFinetuner(config).fit(train, out, nodes, stored_vectors=stored)  # type: ignore[arg-type]
    tuned_name = str(out.resolve())
    tuned = load_embed_model(tuned_name, backend=table_backend(index.table))  # the runtime of the table's vectors
    if mode == "query":
        record_encoders(index.table, EncoderNames(tuned_name, document_name))  # type: ignore[arg-type]
        return LanceDBIndex(index.table, index.embed_model, tuned), result
    rewrite_vectors(index.table, tuned)
    record_encoders(index.table, EncoderNames(tuned_name, tuned_name))
    return LanceDBIndex(index.table, tuned), result
