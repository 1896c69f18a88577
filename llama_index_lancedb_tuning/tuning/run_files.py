"""Which entries of a run directory lancedb-tune wrote: `--force`, a change of settings and the
cleanup after a failed run remove those and nothing else, so a run into a folder that holds other
files (`--out .`) never deletes them.

A run takes a directory by writing `manifest.json`, the names it may write there, once none of
them is already present; a directory that holds one of those names it did not write is refused.
Standard library only, so the CLI checks before torch is imported.
"""

from __future__ import annotations

import json
import shutil
from contextlib import suppress
from pathlib import Path

from ..common.jsonfile import write_json
from ..errors import TuningError

LOCK_FILE = ".lock"
TABLES_FILE = "tables.json"
SETTINGS_FILE = "settings.json"
MANIFEST_FILE = "manifest.json"
LANCEDB_DIR = "lancedb"
REPORT_FILE = "report.json"
# Every entry a run or an evaluation writes at the top of its directory. `lancedb` is shared:
# only the tables claimed in tables.json are the run's, and the folder only if the run made it.
RUN_ENTRIES = (
    REPORT_FILE,
    "report.md",
    "report.png",
    "model",
    "baseline_results.json",
    "pairs.json",
    "pairs.json.progress.jsonl",
    "adaptation_pairs.json",
    SETTINGS_FILE,
    TABLES_FILE,
)
# What a run writes before any stage finishes: a run that fails this early takes them away again.
_BOOKKEEPING = (SETTINGS_FILE, TABLES_FILE, MANIFEST_FILE)


def _read_list(path: Path) -> list[str] | None:
    try:
        names = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return names if isinstance(names, list) else None


def owned_entries(out: Path) -> list[str]:
    """The names in `out` this package wrote or may write; none for a directory it never took."""
    names = _read_list(out / MANIFEST_FILE)
    if names is not None:
        return names
    # Runs made before the manifest existed claimed their tables, and wrote only RUN_ENTRIES.
    return list(RUN_ENTRIES) if (out / TABLES_FILE).is_file() else []


def claimed_tables(out: Path) -> list[str]:
    """The LanceDB tables under `out/lancedb` this package created (or is about to)."""
    return _read_list(out / TABLES_FILE) or []


def check_run_directory(out: Path, force: bool) -> None:
    """Refuse a directory a run must not write into: a file, one holding a run entry this package did
    not write, or (unless `force`) a finished report.

    Args:
        out: the run directory, which need not exist yet.
        force: whether a finished report may be redone.
    """
    if out.exists() and not out.is_dir():
        raise TuningError(f"--out {out} is a file; pass a directory for the report")
    owned = set(owned_entries(out))
    for name in RUN_ENTRIES:
        if name not in owned and (out / name).exists():
            raise TuningError(
                f"{out / name} was not written by lancedb-tune, and a run writes that name; move it or choose another --out"
            )
    if (out / REPORT_FILE).exists() and not force:
        raise TuningError(f"{out} already holds a finished report; pass --force to redo it or choose another --out")


def take(out: Path) -> None:
    """Record the names a run may write in `out`, once checked by `check_run_directory`."""
    if (out / MANIFEST_FILE).exists():
        return
    names = sorted({*RUN_ENTRIES, MANIFEST_FILE})
    if not (out / LANCEDB_DIR).exists():
        names.append(LANCEDB_DIR)  # made by the run: removable once its tables are gone
    write_json(out / MANIFEST_FILE, names)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def clear(out: Path) -> None:
    """Remove what a run wrote in `out`, but for its manifest and lock: its files, the tables it
    claimed, and `lancedb/` if it made it and nothing else is there. Every other entry stays."""
    owned = owned_entries(out)
    tables = out / LANCEDB_DIR
    for name in claimed_tables(out):
        _remove(tables / f"{name}.lance")  # a local LanceDB table is the directory NAME.lance
    for name in owned:
        if name in (MANIFEST_FILE, LANCEDB_DIR):
            continue
        _remove(out / name)
        _remove(out / f"{name}.tmp")  # a write a kill interrupted
    if LANCEDB_DIR in owned:
        with suppress(OSError):
            tables.rmdir()  # only when empty: a table someone else keeps there stays


def holds_results(out: Path) -> bool:
    """Whether `out` holds anything a run wrote beyond its bookkeeping: a finished stage or a table."""
    bookkeeping = {*_BOOKKEEPING, LANCEDB_DIR}
    if any((out / name).exists() for name in owned_entries(out) if name not in bookkeeping):
        return True
    return any((out / LANCEDB_DIR / f"{name}.lance").exists() for name in claimed_tables(out))


def remove_bookkeeping(out: Path) -> None:
    """After a run that finished no stage: its bookkeeping files go, so it leaves no trace."""
    if holds_results(out):
        return
    owned = owned_entries(out)
    for name in _BOOKKEEPING:
        if name in owned:
            (out / name).unlink(missing_ok=True)
    if LANCEDB_DIR in owned:
        with suppress(OSError):
            (out / LANCEDB_DIR).rmdir()  # only when empty
