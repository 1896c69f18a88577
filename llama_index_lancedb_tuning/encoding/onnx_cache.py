"""The cache of ONNX exports: where it lives, and how it stays bounded.

Each export is a folder under `<cache>/onnx/`, where `<cache>` is `$LANCEDB_TUNE_CACHE` or
`~/.cache/llama-index-lancedb-tuning`. Every model directory (and every retraining of one) gets
its own export of about 110 MB for a MiniLM (fp32 plus int8), so the folder keeps only the
`$LANCEDB_TUNE_ONNX_EXPORTS` (default 8) most recently used and removes the others, except any
a running process has loaded, when one is added or reused; an evicted model is simply exported
again when next used. Removing the `onnx`
folder clears the cache at any time when no process is encoding with it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from ..errors import TuningError

CACHE_ENV = "LANCEDB_TUNE_CACHE"
KEEP_ENV = "LANCEDB_TUNE_ONNX_EXPORTS"
# About 1 GB of MiniLM exports: the models of a few runs, kept warm.
DEFAULT_KEEP = 8
# Touched at every use: file access times are unreliable (relatime, noatime mounts).
LAST_USED = "last_used"
_LOCK_SECONDS = 120
# `in_use.<pid>` in an export: a running process loaded it, so no eviction removes it.
IN_USE = "in_use"


def exports_dir(cache_dir: str | Path | None = None) -> Path:
    """The folder holding the exports: `<cache_dir or $LANCEDB_TUNE_CACHE or ~/.cache/llama-index-lancedb-tuning>/onnx`.

    Args:
        cache_dir: the cache folder to use instead of the environment's or the default.
    """
    base = cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "llama-index-lancedb-tuning"
    return Path(base).expanduser() / "onnx"


def export_dir(model_dir: Path, cache_dir: str | Path | None = None) -> Path:
    """The export folder of a model, keyed by its path and its weights' sizes and times, so a
    retrained model gets a fresh export; the model directory itself is never written to.

    Args:
        model_dir: the sentence-transformers model directory.
        cache_dir: as `exports_dir`.
    """
    weights = sorted(model_dir.glob("*.safetensors")) or sorted(model_dir.glob("*.bin"))
    stamp = [str(model_dir)] + [f"{w.name}:{w.stat().st_size}:{w.stat().st_mtime_ns}" for w in weights]
    return exports_dir(cache_dir) / hashlib.sha1("|".join(stamp).encode()).hexdigest()[:16]


def keep_limit() -> int:
    """How many exports the cache keeps: `$LANCEDB_TUNE_ONNX_EXPORTS`, default 8."""
    value = os.environ.get(KEEP_ENV, str(DEFAULT_KEEP)).strip()
    if not value.isdigit() or int(value) < 1:
        raise TuningError(f"{KEEP_ENV} must be a whole number of at least 1 (exports kept), got '{value}'")
    return int(value)


def claim(export: Path) -> None:
    """Mark an export folder used now and in use while this process runs (creating it), then evict the
    least recently used exports beyond `keep_limit()`.

    Args:
        export: the folder `export_dir` named.
    """
    try:
        with _locked(export.parent):
            export.mkdir(parents=True, exist_ok=True)
            (export / LAST_USED).touch()
            (export / f"{IN_USE}.{os.getpid()}").touch()
            _evict(export.parent, keep_limit())
    except OSError as exc:
        raise TuningError(
            f"cannot write the ONNX export cache {export.parent} ({exc.strerror or exc}); "
            f"set {CACHE_ENV} to a writable folder or use the torch backend"
        ) from None


def evict(exports: Path, keep: int | None = None) -> list[Path]:
    """Remove the least recently used exports beyond `keep`, never one a running process uses; the removed folders.

    Args:
        exports: the folder holding the exports (`exports_dir`).
        keep: exports kept (None: `keep_limit()`).
    """
    with _locked(exports):
        return _evict(exports, keep_limit() if keep is None else keep)


def clear_hint(exports: Path) -> str:
    """How to make room, for an error about the cache."""
    return f"free disk space, keep fewer exports ({KEEP_ENV}=2) or clear the ONNX cache (rm -rf {exports})"


def _evict(exports: Path, keep: int) -> list[Path]:
    folders = sorted((p for p in exports.iterdir() if p.is_dir()), key=_last_used, reverse=True)
    removed = [p for p in folders[keep:] if not _in_use(p)]
    for folder in removed:
        shutil.rmtree(folder, ignore_errors=True)
    return removed


def _in_use(export: Path) -> bool:
    """Whether a process that loaded this export still runs (one that has ended leaves a stale mark)."""
    pids = (marker.suffix[1:] for marker in export.glob(f"{IN_USE}.*"))
    return any(_running(int(pid)) for pid in pids if pid.isdigit())


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _last_used(export: Path) -> float:
    marker = export / LAST_USED
    # Exports written before the marker existed date from their last file.
    return (marker if marker.exists() else export).stat().st_mtime


@contextmanager
def _locked(exports: Path) -> Iterator[None]:
    """The cache to this process alone: exports are claimed and evicted by one process at a time."""
    exports.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(exports / ".lock"))
    try:
        lock.acquire(timeout=_LOCK_SECONDS)
    except Timeout:
        raise TuningError(
            f"the ONNX export cache is locked by another process ({lock.lock_file}) for over {_LOCK_SECONDS} s; "
            "wait for it, or remove that file if no other process is encoding"
        ) from None
    try:
        yield
    finally:
        lock.release()
