"""JSON files that survive a kill: written atomically, and a torn file reads as absent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..errors import TuningError


def write_json(path: str | Path, data: Any, **dumps: Any) -> None:
    """Write JSON atomically: a killed write never leaves half a file.

    Args:
        path: the file to write; its folder must exist.
        data: anything `json.dumps` accepts.
        **dumps: passed to `json.dumps` (e.g. `indent=2`).
    """
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text(json.dumps(data, **dumps), encoding="utf-8")
        tmp.replace(path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise TuningError(f"cannot write {path} ({exc.strerror}); choose a writable location") from None


def read_json(path: str | Path) -> Any | None:
    """A JSON file's content, or None if it is absent or was torn by a kill mid-write."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None
