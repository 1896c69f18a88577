"""The resumable record of an LLM generation run: an append-only JSONL of finished chunks.

A killed run loses at most the chunks in flight: each line is fsynced as it is written, a
torn last line is cut off on reopening, and the first line pins the settings the records
were made with, so a rerun never mixes questions from another prompt or model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import TuningError


def progress_path(output_path: str | Path) -> Path:
    """Where `generate_llm_pairs` keeps finished chunks while it writes `output_path`."""
    output_path = Path(output_path)
    return output_path.with_name(output_path.name + ".progress.jsonl")


class ProgressFile:
    """Finished chunks, keyed by the caller (node id and text hash), each with its questions.

    Args:
        path: The JSONL file; created with its settings header if absent.
        settings: What the records depend on (prompt, questions per chunk, model); an existing
            file made with other settings is refused.
    """

    def __init__(self, path: Path, settings: dict[str, Any]) -> None:
        self.path = path
        self.done: dict[str, list[str]] = {}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():
                self._load(settings)
            else:
                self._append({"settings": settings})
        except OSError as exc:
            raise self._unwritable(exc) from None

    def _unwritable(self, exc: OSError) -> TuningError:
        return TuningError(f"cannot write pairs progress to {self.path} ({exc.strerror or exc}); choose another --out")

    def _load(self, settings: dict[str, Any]) -> None:
        raw = self.path.read_bytes()
        good_end = 0
        header_seen = False
        for line in raw.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break  # torn last write of a killed run
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                break
            good_end += len(line)
            if not header_seen:
                header_seen = True
                if record.get("settings") != settings:
                    raise TuningError(
                        f"{self.path} holds pairs generated with other settings (prompt, questions per chunk "
                        "or model); rerun with the same settings or delete it to start over"
                    )
                continue
            self.done[record["key"]] = record["questions"]
        if good_end < len(raw):
            with self.path.open("r+b") as fh:
                fh.truncate(good_end)
        if not header_seen:
            self._append({"settings": settings})

    def _append(self, record: dict[str, Any]) -> None:
        try:
            with self.path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:  # e.g. the disk filled up mid-run
            raise self._unwritable(exc) from None

    def add(self, key: str, node_id: str, questions: list[str]) -> None:
        """Record one finished chunk durably before it counts as done."""
        self._append({"key": key, "node_id": node_id, "questions": questions})
        self.done[key] = questions
