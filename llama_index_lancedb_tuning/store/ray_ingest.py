"""Ingest on Ray: nodes embedded by Ray Data workers, one model per worker, written into LanceDB by lance-ray.

The rows are the ones `store.write_nodes` writes: same columns, ids, metadata and vectors,
and the same full-text index, so the table is opened, searched and appended to like any
other. Each worker is a Ray Data actor that loads the model once and encodes whole blocks
of rows; lance-ray's sink writes every worker's fragments to the table's storage (a
directory, `s3://`, `gs://`, `az://`) and commits them as one Lance version, so a failed
ingest leaves the table as it was.

Ray and lance-ray are the `[ray]` extra. Ray is joined where it runs: a cluster named by
`RAY_ADDRESS` (or already joined with `ray.init`), else a local one on this machine's cores.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from ..config import Backend
from ..encoding.model_ids import ENCODE_BATCH, resolve_model
from ..errors import TuningError

if TYPE_CHECKING:  # the CLI imports check_ray before torch; the rest is imported where used
    import lancedb
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.schema import BaseNode

    from .table import TableMode

_INSTALL = "pip install 'llama-index-lancedb-tuning[ray]'"
# Texts per forward pass on a GPU worker; CPU workers keep ENCODE_BATCH, the best measured on CPU (encoding/model_ids.py).
GPU_ENCODE_BATCH = 128
# Rows handed to a worker per call, in encoder batches: enough to keep it busy between Ray's scheduling rounds.
_BATCHES_PER_CALL = 16
_EMBED_TEXT = "embed_text"


def check_ray() -> None:
    """Ray Data and lance-ray are installed (the `[ray]` extra), else one line saying how to install them."""
    missing = [name for name in ("ray", "lance_ray") if importlib.util.find_spec(name) is None]
    if missing:
        raise TuningError(f"engine 'ray' needs {' and '.join(missing)}: {_INSTALL}")


class NodeEncoder:
    """A Ray Data actor: loads the model once, then turns blocks of node rows into table rows with vectors.

    Args:
        model: a model directory or hub id every worker can load (a shared path, or one baked into the image).
        backend: the encoder runtime, as `load_embed_model` takes it.
        schema: the table's schema when appending to an existing table; None: this package's, at the model's dimension.
        threads: torch threads, the CPUs Ray gave the worker.
        encode_batch: texts per forward pass.
    """

    def __init__(self, model: str, backend: Backend, schema: pa.Schema | None, threads: int, encode_batch: int) -> None:
        import torch

        from ..encoding.embed_models import load_embed_model

        torch.set_num_threads(threads)
        self.model = load_embed_model(model, backend=backend)
        self.schema = schema
        self.encode_batch = encode_batch

    def __call__(self, batch: pa.Table) -> pa.Table:
        import numpy as np

        from ..encoding.embed_models import embed_texts
        from .table import table_schema

        # One replica: Ray already runs one worker per CPU share.
        vectors = embed_texts(self.model, batch.column(_EMBED_TEXT).to_pylist(), self.encode_batch, workers=1)
        if not np.isfinite(vectors).all():
            raise TuningError("the embedding model made non-finite vectors; it is broken (retrain it with a lower --lr)")
        dim = vectors.shape[1]
        schema = self.schema or table_schema(dim)
        table_dim = schema.field("vector").type.list_size
        if table_dim != dim:
            raise TuningError(
                f"the table holds {table_dim}-dim vectors but the model makes {dim}-dim ones; "
                "use the model the table was built with, or another table name"
            )
        columns = {name: batch.column(name) for name in schema.names if name != "vector"}
        columns["vector"] = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float32()), dim)
        return pa.Table.from_pydict({name: columns[name] for name in schema.names}, schema=schema)


def ray_write_nodes(
    nodes: Sequence[BaseNode],
    model: str | BaseEmbedding | None,
    uri: str,
    table_name: str,
    mode: TableMode = "create",
    storage_options: dict[str, str] | None = None,
    workers: int | None = None,
    cpus_per_worker: int = 1,
    gpus_per_worker: float = 0,
    show_progress: bool = True,
) -> lancedb.table.Table:
    """Embed `nodes` on Ray Data workers and write them as a LanceDB table, then build its full-text index.

    Args:
        nodes: the nodes to write; each keeps its id, source and metadata.
        model: a model directory or hub id (None: the bundled MiniLM), or an embedding `load_embed_model` made
            (torch or ONNX), whose directory is loaded again in the same runtime: workers load the model
            themselves, so a directory must be readable on every node of the cluster.
        uri: a LanceDB directory (on a cluster, one every machine mounts) or object-store URI (`s3://…`,
            `gs://…`, `az://…`); not LanceDB Cloud.
        table_name: the table to write.
        mode: `create` refuses an existing table; `append` adds to it (same dimension only); `overwrite` replaces it.
        storage_options: object-store credentials and endpoints, for LanceDB and every writer alike.
        workers: model replicas (None: as many as the cluster's CPUs, or GPUs, allow).
        cpus_per_worker: CPUs each replica holds and encodes with.
        gpus_per_worker: GPUs each replica holds (0: CPU workers); a GPU worker encodes larger batches.
        show_progress: Ray Data's progress bars.
    """
    check_ray()
    model_name, backend = worker_model(model)
    import ray
    from lance_ray import write_lance

    from .table import connect, ensure_fts_index, table_schema, table_to_extend

    if uri.startswith("db://"):
        raise TuningError("engine 'ray' writes Lance files to storage; use a directory or s3://, gs://, az:// URI, not db://")
    if not nodes:
        raise TuningError("no nodes to index; check that the documents produced text")
    db = connect(uri, storage_options)
    existing = table_to_extend(db, table_name, mode)
    if not ray.is_initialized():
        with warnings.catch_warnings():
            # Ray starts its processes with fork+exec, which lance's and LanceDB's fork warnings do not concern.
            warnings.filterwarnings("ignore", message="lance is not fork-safe|lancedb fork support")
            ray.init(include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    if workers is None:
        resources = ray.cluster_resources()
        workers = (
            int(resources.get("GPU", 0) // gpus_per_worker)
            if gpus_per_worker
            else int(resources.get("CPU", 1) // cpus_per_worker)
        )
    workers = max(1, min(workers, math.ceil(len(nodes) / ENCODE_BATCH)))
    encode_batch = GPU_ENCODE_BATCH if gpus_per_worker else ENCODE_BATCH
    schema = existing.schema if existing is not None else None
    rows = _node_rows(nodes, schema or table_schema(1))
    # Several blocks per worker, so a slow one does not hold the rest back.
    block = math.ceil(len(nodes) / (4 * workers))
    from ray.data import ActorPoolStrategy, from_arrow

    # TQDM_DISABLE is how the CLI's --quiet reaches every bar of the package; Ray Data's are not tqdm's.
    show_progress = show_progress and not os.environ.get("TQDM_DISABLE")
    # Inside: a dataset takes Ray Data's settings as they are when it is made.
    with _quiet_unless(show_progress):
        dataset = from_arrow([rows.slice(start, block) for start in range(0, len(nodes), block)]).map_batches(
            NodeEncoder,
            fn_constructor_kwargs={
                "model": model_name,
                "backend": backend,
                "schema": schema,
                "threads": cpus_per_worker,
                "encode_batch": encode_batch,
            },
            batch_size=encode_batch * _BATCHES_PER_CALL,
            batch_format="pyarrow",
            compute=ActorPoolStrategy(size=workers),
            num_cpus=cpus_per_worker,
            num_gpus=gpus_per_worker,
        )
        try:
            write_lance(
                dataset,
                _table_uri(uri, table_name),
                schema=schema,
                mode="append" if existing is not None else "overwrite" if mode == "overwrite" else "create",
                storage_options=storage_options,
                # Writers only encode Arrow and upload: at zero CPUs they stream beside encoders that hold every core.
                ray_remote_args={"num_cpus": 0},
            )
        except Exception as exc:
            mistake = _worker_mistake(exc)
            if mistake is None:
                raise
            raise mistake from None
    table = db.open_table(table_name)
    ensure_fts_index(table, replace=True)
    return table


def worker_model(model: str | BaseEmbedding | None) -> tuple[str, Backend]:
    """The model directory (or hub id) and runtime each worker loads for `model`."""
    from ..encoding.embed_models import backend_of

    if model is None or isinstance(model, str):
        return resolve_model(model), "torch"
    backend = backend_of(model)
    name = getattr(model, "model_name", None)
    if backend is not None and name:
        return resolve_model(name), backend
    raise TuningError(
        f"engine 'ray' loads the model on every worker, which it cannot do for a {type(model).__name__}; "
        "pass the model's directory or hub id"
    )


def _node_rows(nodes: Sequence[BaseNode], schema: pa.Schema) -> pa.Table:
    """The table's columns but `vector`, plus the text each node's vector is made from."""
    from llama_index.core.schema import MetadataMode

    from .table import node_columns

    columns = node_columns(nodes, schema)
    columns[_EMBED_TEXT] = [n.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
    fields = [f for f in schema if f.name != "vector"] + [pa.field(_EMBED_TEXT, pa.string())]
    try:
        return pa.Table.from_pydict(columns, schema=pa.schema(fields))
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise TuningError(f"the nodes' metadata does not fit the table's metadata columns: {exc}") from None


def _table_uri(uri: str, table_name: str) -> str:
    """Where LanceDB keeps the table: `<uri>/<name>.lance`; a local directory made absolute, since workers have their own."""
    base = uri if "://" in uri else str(Path(uri).expanduser().resolve())
    return f"{base.rstrip('/')}/{table_name}.lance"


def _worker_mistake(exc: BaseException) -> TuningError | None:
    """The `TuningError` a worker raised, however deep Ray wrapped it; None for any other failure."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, TuningError):
            return TuningError(str(current))
        seen.add(id(current))
        current = getattr(current, "cause", None) or current.__cause__ or current.__context__
    return None


@contextmanager
def _quiet_unless(show_progress: bool) -> Iterator[None]:
    """Ray Data's bars, banner and progress log off unless asked for; its settings are process-wide, so restored after."""
    from ray.data import DataContext

    context: Any = DataContext.get_current()
    ray_logger = logging.getLogger("ray.data")
    before = context.enable_progress_bars, context.print_on_execution_start, ray_logger.level
    if not show_progress:
        context.enable_progress_bars = context.print_on_execution_start = False
        ray_logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        context.enable_progress_bars, context.print_on_execution_start = before[:2]
        ray_logger.setLevel(before[2])
