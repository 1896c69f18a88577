"""The ONNX export cache stays bounded: the least recently used exports go, never one this process uses.
Fake exports stand in for real ones (a folder with a model.onnx), aged by their files' times."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llama_index_lancedb_tuning import TuningError
from llama_index_lancedb_tuning.encoding import onnx_cache
from llama_index_lancedb_tuning.encoding.onnx_runtime import FP32_FILE, export_onnx

DAY = 86_400


def fake_export(folder: Path, days_ago: float, marker: bool = True) -> Path:
    """An export folder last used `days_ago` (by its marker, or by its own time for one from before markers)."""
    folder.mkdir(parents=True)
    (folder / FP32_FILE).write_bytes(b"onnx")
    (folder / "pooling.json").write_text('{"pooling": "mean", "max_seq_length": 256}')
    stamp = time.time() - days_ago * DAY
    if marker:
        (folder / onnx_cache.LAST_USED).touch()
        os.utime(folder / onnx_cache.LAST_USED, (stamp, stamp))
    os.utime(folder, (stamp, stamp))
    return folder


def test_using_an_export_evicts_the_least_recently_used_beyond_eight(tmp_path, default_model_path, monkeypatch):
    monkeypatch.delenv(onnx_cache.KEEP_ENV, raising=False)
    exports = onnx_cache.exports_dir(tmp_path)
    # The model's own export is the oldest of all until it is used; two others predate the marker file.
    current = fake_export(onnx_cache.export_dir(Path(default_model_path), tmp_path), days_ago=30)
    others = [fake_export(exports / f"old{i:02d}", days_ago=i + 1, marker=i % 5 != 0) for i in range(12)]

    assert export_onnx(default_model_path, cache_dir=tmp_path) == current / FP32_FILE

    kept = sorted(p.name for p in exports.iterdir() if p.is_dir())
    assert kept == sorted([current.name, *(p.name for p in others[:7])])
    assert (current / FP32_FILE).read_bytes() == b"onnx"  # reused, not exported again


def test_an_export_a_running_process_uses_is_never_evicted(tmp_path):
    exports = onnx_cache.exports_dir(tmp_path)
    in_use = exports / "in-use"
    onnx_cache.claim(in_use)  # by this process
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    left_behind = fake_export(exports / "left-behind", days_ago=80)
    (left_behind / f"{onnx_cache.IN_USE}.{ended.pid}").touch()  # its process has ended
    for folder, days in ((in_use, 90), (left_behind, 80)):
        stamp = time.time() - days * DAY
        os.utime(folder / onnx_cache.LAST_USED, (stamp, stamp))
    others = [fake_export(exports / f"other{i}", days_ago=i + 1) for i in range(4)]

    removed = onnx_cache.evict(exports, keep=2)

    assert sorted(removed) == sorted([*others[2:], left_behind])
    assert sorted(p.name for p in exports.iterdir() if p.is_dir()) == ["in-use", "other0", "other1"]


def test_the_number_kept_comes_from_the_environment(tmp_path, monkeypatch):
    exports = onnx_cache.exports_dir(tmp_path)
    for i in range(5):
        fake_export(exports / f"e{i}", days_ago=i + 1)
    monkeypatch.setenv(onnx_cache.KEEP_ENV, "2")
    onnx_cache.evict(exports)
    assert sorted(p.name for p in exports.iterdir() if p.is_dir()) == ["e0", "e1"]
    monkeypatch.setenv(onnx_cache.KEEP_ENV, "many")
    with pytest.raises(TuningError, match="LANCEDB_TUNE_ONNX_EXPORTS must be a whole number of at least 1"):
        onnx_cache.evict(exports)


def test_the_cache_lives_where_the_environment_says(tmp_path, monkeypatch):
    monkeypatch.setenv(onnx_cache.CACHE_ENV, str(tmp_path / "cache"))
    assert onnx_cache.exports_dir() == tmp_path / "cache" / "onnx"
    monkeypatch.delenv(onnx_cache.CACHE_ENV)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert onnx_cache.exports_dir() == tmp_path / ".cache" / "llama-index-lancedb-tuning" / "onnx"


def test_an_unwritable_cache_is_named_with_the_fix(tmp_path, default_model_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(TuningError) as refused:
        export_onnx(default_model_path, cache_dir=blocker)
    message = str(refused.value)
    assert f"cannot write the ONNX export cache {blocker / 'onnx'}" in message
    assert "set LANCEDB_TUNE_CACHE to a writable folder" in message
