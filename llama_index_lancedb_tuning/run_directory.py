"""The run directory's bookkeeping: one run at a time holds its lock, a finished report is
never overwritten unless forced, an unfinished one resumes only with the same settings, and the
LanceDB tables it writes are claimed before they are created.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from .errors import TuningError
from .jsonfile import read_json, write_json


def claim_tables(out: Path, table_names: list[str]) -> str:
    """The LanceDB uri under `out` where these tables may be overwritten: each was created there
    by this tool, or is not there yet.

    The tables it creates are recorded in `out/tables.json` before they are written, so a table
    a user keeps in `out/lancedb` is never replaced.
    """
    uri = out / "lancedb"
    owned = read_json(out / _TABLES_FILE) or []
    for name in table_names:
        # A local LanceDB table is the directory NAME.lance under the uri.
        if name not in owned and (uri / f"{name}.lance").exists():
            raise TuningError(f"{uri} already holds a table '{name}' that lancedb-tune did not create; choose another --out")
    write_json(out / _TABLES_FILE, sorted({*owned, *table_names}))
    return str(uri)


_TABLES_FILE = "tables.json"
_LOCK_FILE = ".lock"


@contextmanager
def locked_output(out: Path) -> Iterator[None]:
    """Create `out` and hold its lock: a second run into the same directory is refused while this one runs."""
    if out.exists() and not out.is_dir():
        raise TuningError(f"--out {out} is a file; pass a directory for the report")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TuningError(f"cannot create output directory {out} ({exc.strerror}); choose another --out") from None
    lock = FileLock(out / _LOCK_FILE)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise TuningError(f"{out} is in use by another lancedb-tune run; wait for it to finish or choose another --out") from None
    try:
        yield
    finally:
        lock.release()
        if created and all(p.name in (_LOCK_FILE, _TABLES_FILE, "settings.json") for p in out.iterdir()):
            shutil.rmtree(out)  # a run that failed before any stage finished leaves no directory behind


def _clear(out: Path) -> None:
    """Empty `out` but for its lock, which the running command holds."""
    for entry in out.iterdir():
        if entry.name != _LOCK_FILE:
            shutil.rmtree(entry) if entry.is_dir() else entry.unlink()


def prepare_output(out: Path, force: bool, settings: dict | None = None) -> None:
    """Refuse a finished report (unless forced); resume an unfinished run only if made with the same `settings`.

    Call it inside `locked_output(out)`.
    """
    if (out / "report.json").exists():
        if not force:
            raise TuningError(f"{out} already holds a finished report; pass --force to redo it or choose another --out")
        _clear(out)
    settings_path = out / "settings.json"
    if settings is not None and settings_path.exists() and json.loads(settings_path.read_text()) != settings:
        if not force and any(p.name not in (settings_path.name, _LOCK_FILE) for p in out.iterdir()):
            raise TuningError(
                f"{out} holds an unfinished run made with other data or settings; rerun that command to resume it, "
                "pass --force to start over, or choose another --out"
            )
        _clear(out)  # nothing cached yet, or forced: start over
    out.mkdir(parents=True, exist_ok=True)
    if settings is not None and not settings_path.exists():
        write_json(settings_path, settings, indent=2)  # cached stages below are only reused for these settings
