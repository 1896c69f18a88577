"""Texts to normalised vectors: the embedding model in one of three runtimes, and data-parallel
encoding of long text lists.

The default runtime, `auto`, is int8 ONNX Runtime on a CPU and torch where CUDA is: on CPUs
without AVX-512 or VNNI there is no faster fp32 path, and int8 weights encode MiniLM 1.4–1.8×
as fast as torch at no measurable hit-rate cost (BENCHMARKS.md). A table records the runtime that made
its vectors, so that its queries are embedded by the same one.

On a CPU, a small encoder such as MiniLM uses its cores better as several single-threaded
replicas, each encoding whole batches, than as one model whose every matrix product is split
across threads: batches of 16 short texts are too small for intra-op threading to pay off.
On 2 cores, 2 replicas encode about 13% faster than one 2-thread model, in torch and in ONNX
Runtime alike (BENCHMARKS.md). That holds only for cores nobody else is using: replicas are
started for the cores a short sample finds free, and when fewer than two are, one
multi-threaded model encodes alone. Replicas share nothing mutable (each has its own tokenizer,
whose Rust state is not safe to drive from two threads), are made once per model and kept by
the embedding object itself (`ReplicaPool`), so they live and go with it.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import numpy as np
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.embeddings.huggingface import HuggingFaceEmbedding

from ..common.llama_index_internals import sentence_transformer_of
from ..config import Backend, EncoderBackend
from ..errors import TuningError
from .model_ids import ENCODE_BATCH, resolve_model, transformers_bars_off
from .replicas import BatchEncoder, ReplicaPool, longest_first_batches

BACKENDS: tuple[str, ...] = get_args(Backend)
# The vector column's metadata key naming the runtime that made a table's vectors.
BACKEND_KEY = "lancedb:tag:encoder_backend"
# Beyond a few replicas, memory grows with no gain on laptop-class CPUs; larger machines keep
# intra-op threads inside each replica.
MAX_ENCODE_WORKERS = 4
# A core counts as free while other work keeps less than this share of it busy.
BUSY_SHARE_TOLERATED = 0.3
LOAD_SAMPLE_S = 0.1


def _onnx_installed() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def check_backend(backend: str) -> None:
    """A known encoder backend, with its runtime installed."""
    if backend not in BACKENDS:
        raise TuningError(f"unknown backend '{backend}'; use one of {', '.join(BACKENDS)}")
    if backend in ("onnx", "onnx-int8") and not _onnx_installed():
        raise TuningError(f"backend '{backend}' needs ONNX Runtime: pip install onnxruntime onnx")


def resolve_backend(backend: Backend = "auto") -> EncoderBackend:
    """The runtime `backend` stands for: `auto` is torch where CUDA is, else int8 ONNX Runtime
    (torch if ONNX Runtime is missing)."""
    check_backend(backend)
    if backend != "auto":
        return backend
    import torch

    return "torch" if torch.cuda.is_available() or not _onnx_installed() else "onnx-int8"


def backend_of(embed_model: BaseEmbedding) -> EncoderBackend | None:
    """The runtime of a model `load_embed_model` can make again; None for other embeddings."""
    from .onnx_runtime import OnnxEmbedding

    if isinstance(embed_model, OnnxEmbedding):
        return "onnx-int8" if embed_model.int8 else "onnx"
    return "torch" if isinstance(embed_model, HuggingFaceEmbedding) else None


def encoder_name(model: BaseEmbedding) -> str | None:
    """The hub id or the absolute path a LlamaIndex embedding loads from, when it has one.

    A relative path is made absolute: the name is recorded with the table and must load from
    wherever the app runs next.
    """
    name = getattr(model, "model_name", None)
    if not isinstance(name, str) or not name or name == "unknown":
        return None
    path = Path(name).expanduser()
    return str(path.absolute()) if path.exists() else name


def load_embed_model(
    model: str | BaseEmbedding | None = None, embed_batch_size: int = ENCODE_BATCH, backend: Backend = "auto"
) -> BaseEmbedding:
    """Any LlamaIndex embedding as is; a path or hub id as a `HuggingFaceEmbedding` (`torch`, on
    CUDA when there is one), or as an `OnnxEmbedding` run by ONNX Runtime on the CPU (`onnx`: fp32,
    the torch vectors; `onnx-int8`: faster, close to them). `auto` picks per machine (`resolve_backend`).

    Args:
        model: a LlamaIndex embedding, a model directory or hub id; None: the bundled MiniLM.
        embed_batch_size: texts per encoder call.
        backend: `auto`, `torch`, `onnx` or `onnx-int8`.
    """
    if isinstance(model, BaseEmbedding):
        return model
    runtime = resolve_backend(backend)
    name = resolve_model(model)
    if runtime != "torch":
        from .onnx_runtime import OnnxEmbedding

        return OnnxEmbedding(name, int8=runtime == "onnx-int8", embed_batch_size=embed_batch_size)
    try:
        with transformers_bars_off():
            return HuggingFaceEncoder(model_name=name, embed_batch_size=embed_batch_size)
    except Exception as exc:  # hub/transformers raise many types for "not found / offline"
        raise TuningError(
            f"cannot load embedding model '{model}': {type(exc).__name__}; pass a local model directory or a reachable hub id"
        ) from None


def cpu_budget() -> int:
    """Cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class HuggingFaceEncoder(HuggingFaceEmbedding):
    """`HuggingFaceEmbedding` that keeps its own `ReplicaPool` for `embed_texts` (what `load_embed_model` makes)."""

    _replicas: ReplicaPool = PrivateAttr(default_factory=ReplicaPool)


@dataclass
class _Runtime:
    """What the parallel path needs from a model it can drive directly."""

    pool: ReplicaPool | None  # where its replicas are kept; None: it has none, so it encodes alone
    encode: Callable[[list[str], int], np.ndarray]  # every text, in batches of the given size
    replicate: Callable[[int], BatchEncoder] | None  # makes a single-batch encoder at this many threads; None: no replicas (GPU)
    threads: Callable[[int], Any]  # a context manager running the replicas at this many threads each (ONNX: set per session)


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Torch's thread count is process-wide: other torch work in the process runs at `n` meanwhile."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _runtime(embed_model: BaseEmbedding) -> _Runtime | None:
    from .onnx_runtime import OnnxEmbedding

    if isinstance(embed_model, OnnxEmbedding):
        return _Runtime(
            embed_model.replica_pool,
            lambda texts, _: embed_model.encode(texts),
            lambda threads: embed_model.replica(threads).encode,
            lambda _: nullcontext(),
        )
    st_model = sentence_transformer_of(embed_model)
    if st_model is not None:

        def encode(texts: list[str], batch_size: int) -> np.ndarray:
            return st_model.encode(
                texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
            )

        def replicate(_: int) -> BatchEncoder:
            replica = copy.deepcopy(st_model)  # its own tokenizer as well as weights
            return lambda texts: replica.encode(
                texts, batch_size=len(texts), normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
            )

        on_cpu = st_model.device.type == "cpu"  # a GPU model batches on its own; copies would only share it
        pool = embed_model._replicas if isinstance(embed_model, HuggingFaceEncoder) else None
        return _Runtime(pool, encode, replicate if on_cpu and pool is not None else None, _torch_threads)
    return None


def _parallel_encode(runtime: _Runtime, texts: list[str], batch_size: int, workers: int, threads: int) -> np.ndarray:
    replicate, replicas = runtime.replicate, runtime.pool
    assert replicate is not None and replicas is not None, "only runtimes that keep replicas encode in parallel"
    batches = longest_first_batches(texts, batch_size)
    with replicas.lock:
        replicas.encoders.extend(replicate(threads) for _ in range(workers - len(replicas.encoders)))
        free: queue.SimpleQueue[BatchEncoder] = queue.SimpleQueue()
        for encoder in replicas.encoders[:workers]:
            free.put(encoder)
        own = threading.local()

        def encode_batch(batch: np.ndarray) -> np.ndarray:
            if not hasattr(own, "encode"):
                own.encode = free.get()  # each pool thread keeps one replica
            return own.encode([texts[i] for i in batch])

        with runtime.threads(threads), ThreadPoolExecutor(workers, thread_name_prefix="encode") as pool:
            encoded = list(pool.map(encode_batch, batches))
    vectors = np.empty((len(texts), encoded[0].shape[1]), dtype=np.float32)
    for batch, part in zip(batches, encoded):
        vectors[batch] = part
    return vectors


def busy_cores(sample_s: float = LOAD_SAMPLE_S) -> float:
    """Cores other processes kept busy over a short sample (this process's own use and work at a
    lower priority, which yields to ours, do not count)."""
    import psutil

    me = psutil.Process()

    def used() -> tuple[float, float, float]:
        t, own = psutil.cpu_times(), me.cpu_times()
        busy = t.user + t.system + sum(getattr(t, name, 0.0) for name in ("irq", "softirq", "steal"))
        return busy, own.user + own.system, time.monotonic()

    before = used()
    time.sleep(sample_s)
    after = used()
    others = (after[0] - before[0]) - (after[1] - before[1])
    return max(0.0, others / max(after[2] - before[2], 1e-6))


def replica_plan(n_texts: int, batch_size: int, cores: int, busy: float) -> tuple[int, int]:
    """(replicas, threads each) for `n_texts` on `cores` cores of which other work keeps `busy` busy:
    one replica per free core (at most `MAX_ENCODE_WORKERS`, with two batches each at least), the
    free cores shared between them. One replica means one model at its own thread setting."""
    free = max(1, math.floor(cores - busy + BUSY_SHARE_TOLERATED))
    workers = max(1, min(free, MAX_ENCODE_WORKERS, n_texts // (2 * batch_size)))
    return workers, max(1, free // workers)


def encode_plan(n_texts: int, batch_size: int = ENCODE_BATCH) -> tuple[int, int]:
    """`replica_plan` for this machine now: the cores this process may use, and how busy they are
    (sampled only when the list is long enough to share)."""
    if n_texts // (2 * batch_size) < 2:
        return 1, cpu_budget()
    return replica_plan(n_texts, batch_size, cpu_budget(), busy_cores())


def embed_texts(
    embed_model: BaseEmbedding, texts: Sequence[str], batch_size: int = ENCODE_BATCH, workers: int | None = None
) -> np.ndarray:
    """Passage embeddings as float32, normalised; batched straight through the model when we can
    (LlamaIndex's path sends `embed_batch_size` texts per call through per-batch callbacks), in
    `workers` replicas (default: `encode_plan`'s, sized to the free cores) when the list is long
    enough to share and the model runs on the CPU."""
    texts = list(texts)
    runtime = _runtime(embed_model)
    if runtime is None:
        vectors = np.asarray(embed_model.get_text_embedding_batch(texts), dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)
    if runtime.replicate is not None and len(texts) > batch_size:
        if workers is None:
            workers, threads = encode_plan(len(texts), batch_size)
        else:
            threads = max(1, cpu_budget() // workers)
        if workers > 1:
            return _parallel_encode(runtime, texts, batch_size, workers, threads)
    return runtime.encode(texts, batch_size).astype(np.float32, copy=False)


def embed_queries(embed_model: BaseEmbedding, queries: Sequence[str], batch_size: int = ENCODE_BATCH) -> np.ndarray:
    """Query embeddings as float32, normalised, with the model's query instruction if it has one."""
    runtime = _runtime(embed_model)
    if runtime is not None:
        prompt = getattr(embed_model, "query_instruction", None)
        texts = [f"{prompt} {q}".strip() if prompt else q for q in queries]
        return runtime.encode(texts, batch_size).astype(np.float32)
    vectors = np.asarray([embed_model.get_query_embedding(q) for q in queries], dtype=np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)
