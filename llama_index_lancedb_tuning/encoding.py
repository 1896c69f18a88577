"""Texts to normalised vectors: the embedding model in one of three runtimes, and data-parallel
encoding of long text lists.

On a CPU, a small encoder such as MiniLM uses its cores better as several single-threaded
replicas, each encoding whole batches, than as one model whose every matrix product is split
across threads: batches of 16 short texts are too small for intra-op threading to pay off.
On 2 cores, 2 replicas encode about 13% faster than one 2-thread model, in torch and in ONNX
Runtime alike (BENCHMARKS.md). Replicas share nothing mutable (each has its own tokenizer,
whose Rust state is not safe to drive from two threads), are made once per model and kept by
the embedding object itself (`ReplicaPool`), so they live and go with it.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, get_args

import numpy as np
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.embeddings.huggingface import HuggingFaceEmbedding

from .config import Backend
from .errors import TuningError
from .models import ENCODE_BATCH, resolve_model, transformers_bars_off

BACKENDS: tuple[str, ...] = get_args(Backend)
# Beyond a few replicas, memory grows with no gain on laptop-class CPUs; larger machines keep
# intra-op threads inside each replica.
MAX_ENCODE_WORKERS = 4

BatchEncoder = Callable[[list[str]], np.ndarray]


def longest_first_batches(texts: list[str], batch_size: int) -> list[np.ndarray]:
    """Positions of `texts` in batches, longest texts first: each batch pads little, and the last
    batches are the quick ones."""
    order = np.argsort([-len(t) for t in texts], kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def check_backend(backend: str) -> None:
    """A known encoder backend, with its runtime installed."""
    if backend not in BACKENDS:
        raise TuningError(f"unknown backend '{backend}'; use one of {', '.join(BACKENDS)}")
    if backend != "torch" and importlib.util.find_spec("onnxruntime") is None:
        raise TuningError(f"backend '{backend}' needs onnxruntime: pip install 'llama-index-lancedb-tuning[onnx]'")


def load_embed_model(
    model: str | BaseEmbedding | None = None, embed_batch_size: int = ENCODE_BATCH, backend: Backend = "torch"
) -> BaseEmbedding:
    """Any LlamaIndex embedding as is; a path or hub id as a `HuggingFaceEmbedding`, or as an
    `OnnxEmbedding` run by ONNX Runtime (`onnx`: fp32, same vectors; `onnx-int8`: faster, less exact)."""
    if isinstance(model, BaseEmbedding):
        return model
    check_backend(backend)
    name = resolve_model(model)
    if backend != "torch":
        from .onnx_backend import OnnxEmbedding

        return OnnxEmbedding(name, int8=backend == "onnx-int8", embed_batch_size=embed_batch_size)
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


@dataclass
class ReplicaPool:
    """The single-threaded copies of one model that encode long lists in parallel, made once and kept
    by the embedding that owns them."""

    encoders: list[BatchEncoder] = field(default_factory=list)
    # One parallel encode per model at a time: two would share the replicas' tokenizers (and the cores).
    lock: threading.Lock = field(default_factory=threading.Lock)


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
    from .onnx_backend import OnnxEmbedding

    if isinstance(embed_model, OnnxEmbedding):
        return _Runtime(
            embed_model.replica_pool,
            lambda texts, _: embed_model.encode(texts),
            lambda threads: embed_model.replica(threads).encode,
            lambda _: nullcontext(),
        )
    st_model = getattr(embed_model, "_model", None)
    if isinstance(embed_model, HuggingFaceEmbedding) and st_model is not None:

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


def _parallel_encode(runtime: _Runtime, texts: list[str], batch_size: int, workers: int) -> np.ndarray:
    replicate, replicas = runtime.replicate, runtime.pool
    assert replicate is not None and replicas is not None, "only runtimes that keep replicas encode in parallel"
    threads = max(1, cpu_budget() // workers)
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


def encode_workers(n_texts: int, batch_size: int = ENCODE_BATCH) -> int:
    """Replicas worth starting for `n_texts`: at least two batches each, one core each at least."""
    return max(1, min(cpu_budget(), MAX_ENCODE_WORKERS, n_texts // (2 * batch_size)))


def embed_texts(
    embed_model: BaseEmbedding, texts: Sequence[str], batch_size: int = ENCODE_BATCH, workers: int | None = None
) -> np.ndarray:
    """Passage embeddings as float32, normalised; batched straight through the model when we can
    (LlamaIndex's path sends `embed_batch_size` texts per call through per-batch callbacks), in
    `workers` replicas (default: `encode_workers`) when the list is long enough to share."""
    texts = list(texts)
    runtime = _runtime(embed_model)
    if runtime is None:
        vectors = np.asarray(embed_model.get_text_embedding_batch(texts), dtype=np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(min=1e-12)
    workers = encode_workers(len(texts), batch_size) if workers is None else workers
    if workers > 1 and len(texts) > batch_size and runtime.replicate is not None:
        return _parallel_encode(runtime, texts, batch_size, workers)
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
