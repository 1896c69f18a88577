"""Tuning the embedding model of a table an app already has, on the table's own nodes.

Four modes of the one recipe (`recipe`). `query`: the table's stored vectors stay as they are, frozen, and only a query
encoder is trained against them (`QueryOnlyLoss`); no row is rewritten, and new documents
are still embedded by the table's original model. `adapter`: the same, with the table's own
embedding (any LlamaIndex one, an API's too) kept as well: a small map on its query vectors is
trained (`training.adapter`). `full`: both sides are tuned and every row is re-embedded with
the tuned model (ids, text and metadata kept). `reranker`: a cross-encoder learns to reorder the
table's candidates for the reranked query types; the encoders and the rows stay.

Either way the table serves the old model until the gate (`gate`) passes the tuned one: a full
candidate is scored in a scratch copy of the table, and only a promotion (`versions`) writes
to the table, as a new tagged version.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from itertools import chain, count
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import lancedb
import pyarrow as pa
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.postprocessor.types import BaseNodePostprocessor

from ..config import (
    DEFAULT_TUNE_MODE,
    SERVING_QUERY_TYPE,
    FinetuneConfig,
    QueryType,
    RerankerSpec,
    SearchConfig,
    TuneMode,
)
from ..data.qa_dataset import QADataset
from ..encoding.adapted_embedding import CACHE_FILES as ADAPTER_CACHE_FILES
from ..encoding.embed_models import encoder_name
from ..errors import TuningError
from ..evaluation.metrics import EvalResult
from ..search.index import LanceDBIndex
from ..store.encoder_record import EncoderNames
from ..store.table import ensure_fts_index, table_nodes
from ..store.versions import promote, reembedded_rows
from .gate import UNGATED, GateVerdict, gate_queries
from .recipe import TuningRecipe

if TYPE_CHECKING:
    from ..training.finetuner import FinetuneResult

TUNE_MODES: tuple[str, ...] = get_args(TuneMode)
# Set by the recipe itself: an override would contradict the mode or the table's model.
_RECIPE_FIELDS = ("freeze_passages",)


@dataclass
class TuneResult:
    """What a tuning did: the model it trained, whether the gate put it in service, and why.

    Args:
        model_path: the tuned model (saved whether promoted or not; each attempt in its own folder).
        promoted: whether the table serves it now.
        reason: the gate's verdict in one line.
        version: the table version serving now (a new one when promoted).
        serving: the serving model's figures on the gate's validation queries (None without the gate).
        tuned: the tuned model's figures on the same queries.
        p_value: McNemar's p of the paired hits.
        metrics: the fine-tuning's own `metrics.json`.
        train_seconds: seconds of fine-tuning.
    """

    model_path: Path
    promoted: bool
    reason: str
    version: int
    serving: EvalResult | None = None
    tuned: EvalResult | None = None
    p_value: float | None = None
    metrics: dict = field(default_factory=dict)
    train_seconds: float = 0.0


def _resumable(folder: Path, mode: TuneMode) -> bool:
    """Whether `folder` may take the tuned model: empty, or an adapter's that a killed tuning left with only
    the query vectors it had embedded (the next tuning reuses them instead of calling the embedding again)."""
    names = {p.name for p in folder.iterdir()}
    return not names or (mode == "adapter" and names <= set(ADAPTER_CACHE_FILES))


def default_output_dir(index: LanceDBIndex, mode: TuneMode) -> Path:
    """Beside a local table: `<uri>/<table>.<mode>-tuned-v<version>`, new for each tuning of the table.

    A tuning the gate refused keeps its model there, and trying again on the same version is the
    normal next step, so each later attempt gets the next free `...-v<version>-<attempt>` folder
    (an adapter's folder holding only the query vectors of a killed attempt counts as free).
    """
    table = index.table
    uri = getattr(table, "uri", None)  # a LanceDB Cloud table has none
    if not isinstance(uri, str) or ("://" in uri and not uri.startswith("file://")):
        raise TuningError(f"table '{table.name}' is not on local disk; pass output_dir= for the tuned model")
    first = Path(uri.removeprefix("file://")).parent / f"{table.name}.{mode}-tuned-v{table.version}"
    attempts = (first.with_name(f"{first.name}-{n}") for n in count(2))
    return next(path for path in chain([first], attempts) if not path.exists() or _resumable(path, mode))


def tuning_config(index: LanceDBIndex, mode: TuneMode, overrides: dict[str, Any]) -> FinetuneConfig:
    """The fine-tuning settings: quiet, from the table's document encoder (the recipe sets what the mode fixes)."""
    if mode not in TUNE_MODES:
        raise TuningError(
            f"unknown tuning mode '{mode}'; use query or adapter (table kept: a tuned query encoder, or an adapter on "
            "the table's embedding), full (table re-embedded) or reranker (a cross-encoder for the reranked types)"
        )
    known = {f.name for f in fields(FinetuneConfig)} - set(_RECIPE_FIELDS)
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TuningError(
            f"unknown fine-tuning setting {', '.join(unknown)}; use FinetuneConfig's fields: {', '.join(sorted(known))}"
        )
    if mode == "adapter" and overrides.get("base_model"):
        raise TuningError("an adapter maps the table's own embedding; drop base_model= or tune with mode='query' or 'full'")
    base = overrides.get("base_model") or encoder_name(index.embed_model)
    if base is None and mode not in ("adapter", "reranker"):
        raise TuningError("the table's embed_model has no model path to tune from; pass base_model=PATH_OR_HUB_ID")
    settings = {"show_progress": False, **overrides, "base_model": base}
    return FinetuneConfig(**settings)


@contextmanager
def _scratch_index(rows: pa.Table, tuned: BaseEmbedding) -> Iterator[LanceDBIndex]:
    """The re-embedded rows in a throwaway local table, to score before anything is promoted."""
    with tempfile.TemporaryDirectory(prefix="lancedb-tune-candidate-") as scratch:
        table = lancedb.connect(scratch).create_table("candidate", rows)
        ensure_fts_index(table)
        yield LanceDBIndex(table, tuned)


def tune_index(
    index: LanceDBIndex,
    train: QADataset,
    mode: TuneMode = DEFAULT_TUNE_MODE,
    output_dir: str | Path | None = None,
    search: SearchConfig | None = None,
    gate: bool = True,
    eval_dataset: QADataset | None = None,
    query_type: QueryType = SERVING_QUERY_TYPE,
    reranker: RerankerSpec | BaseNodePostprocessor | None = None,
    **overrides: Any,
) -> tuple[LanceDBIndex, TuneResult]:
    """Tune the table's model on `train`; return the index serving afterwards and what happened.

    Training nodes are the table's rows, grouped by the document each came from (its `source_id`
    metadata, else its `ref_doc_id`), so `train`'s corpus ids must be those documents' ids.

    Args:
        index: the table and its models.
        train: labeled queries over the table's documents.
        mode: `query` or `adapter` (the table is not rewritten), `full` (the table is re-embedded) or
            `reranker` (a cross-encoder reranks the reranked types; a promotion records it with the table).
        output_dir: where the tuned model goes; default beside a local table (required otherwise).
        search: how the gate searches and its k (None: the defaults).
        gate: False promotes without the gate.
        eval_dataset: the gate's queries (None: the `val_fraction` of `train` the fine-tuner never trains on).
        query_type: the query type that answers the users; the gate decides on it.
        reranker: the reranked types' postprocessor instead of `search.reranker`.
        **overrides: `FinetuneConfig` fields (epochs, learning_rate, batch_size, reranker_negatives...).
    """
    config = tuning_config(index, mode, overrides)
    recipe = TuningRecipe(mode, config, search or SearchConfig(), query_type, reranker)
    document_name, query_name = encoder_name(index.embed_model), encoder_name(index.query_model)
    if mode != "full" and (document_name is None or (mode == "reranker" and query_name is None)):
        raise TuningError(
            "the table's embed_model has no model_name to record beside the tuned query side; open it with a path or hub id, "
            "or give the embedding a model_name"
        )
    out = Path(output_dir).expanduser() if output_dir is not None else default_output_dir(index, mode)
    if out.is_dir() and not _resumable(out, mode):
        raise TuningError(f"{out} exists and is not empty; pass another output_dir= for the tuned model")
    fit, held_out = gate_queries(train, eval_dataset, config) if gate else (train, None)
    trained = recipe.fit(fit, out, table_nodes(index.table), index)
    serving = EncoderNames(query_name, document_name) if query_name and document_name else None
    if mode == "reranker":
        return index, _promote_reranker(index, recipe, trained, held_out, serving)
    tuned_name = str(out.resolve())
    if mode == "full":
        tuned = recipe.encoder(out, index.table)
        rows = reembedded_rows(index.table, tuned)
    else:
        query_tuned, rows = recipe.query_tuned(index, out), None
    verdict = UNGATED
    if held_out is not None:
        if rows is None:
            verdict = recipe.gate().verdict(index, query_tuned, held_out)
        else:
            with _scratch_index(rows, tuned) as candidate:
                verdict = recipe.gate().verdict(index, candidate, held_out)
    result = _tune_result(trained, verdict, index.table.version)
    if not verdict.promoted:
        return index, result
    names = EncoderNames(tuned_name, tuned_name if mode == "full" else document_name)  # type: ignore[arg-type]
    result.version = promote(index.table, names, serving, verdict.figures(), rows, mode)
    if rows is None:
        return query_tuned, result
    return LanceDBIndex(index.table, tuned), result


def _tune_result(trained: FinetuneResult, verdict: GateVerdict, version: int) -> TuneResult:
    return TuneResult(
        model_path=trained.model_path,
        promoted=verdict.promoted,
        reason=verdict.reason,
        version=version,
        serving=verdict.serving,
        tuned=verdict.tuned,
        p_value=verdict.p_value,
        metrics=trained.metrics,
        train_seconds=trained.train_seconds,
    )


def _promote_reranker(
    index: LanceDBIndex, recipe: TuningRecipe, trained: FinetuneResult, held_out: QADataset | None, serving: EncoderNames | None
) -> TuneResult:
    """Gate the cross-encoder `trained` saved against the serving reranker on the same table, and record it
    with the table if it passes (the encoders as they are: `serving`)."""
    spec = recipe.trained_reranker(trained.model_path)
    verdict = UNGATED if held_out is None else recipe.gate(spec).verdict(index, index, held_out)
    result = _tune_result(trained, verdict, index.table.version)
    if verdict.promoted:
        assert serving is not None  # tune_index checks both names before training
        current = recipe.search.reranker if recipe.reranker is None else recipe.reranker
        replaced = None if isinstance(current, BaseNodePostprocessor) else str(current)
        result.version = promote(index.table, serving, serving, verdict.figures(), None, "reranker", (str(spec), replaced))
    return result
