"""A run directory may be a folder that holds other things (`--out .`): --force, a change of settings
and the cleanup after a failed run remove only what lancedb-tune wrote, and the lock goes on exit."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from llama_index_lancedb_tuning import TuningError
from llama_index_lancedb_tuning.cli import main
from llama_index_lancedb_tuning.tuning.run_directory import claim_tables, locked_output, prepare_output

SETTINGS = {"data_sha1": "a", "config": {"k": 5}}
OTHER_SETTINGS = {"data_sha1": "b", "config": {"k": 5}}
ROWS = [
    (f"What does note {i} say about topic {i % 3}?", f"Note {i % 6} explains its own topic in a few words.") for i in range(12)
]


def user_folder(path: Path) -> Path:
    """A project folder a user might pass as --out: notes, sources, a git checkout, a LanceDB table."""
    (path / "src").mkdir(parents=True)
    (path / "src" / "app.py").write_text("print('mine')\n")
    (path / ".git").mkdir()
    (path / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (path / "notes.txt").write_text("my notes\n")
    return path


def assert_user_files_intact(path: Path) -> None:
    assert (path / "src" / "app.py").read_text() == "print('mine')\n"
    assert (path / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert (path / "notes.txt").read_text() == "my notes\n"


def finished_run(out: Path) -> None:
    """What a finished run leaves, written the way the pipeline writes it."""
    with locked_output(out):
        prepare_output(out, False, SETTINGS)
        uri = Path(claim_tables(out, ["baseline", "tuned"]))
        for name in ("baseline", "tuned"):
            (uri / f"{name}.lance").mkdir(parents=True)
        (out / "baseline_results.json").write_text("[]")
        (out / "model").mkdir()
        (out / "model" / "model.safetensors").write_bytes(b"weights")
        (out / "report.md").write_text("# report\n")
        (out / "report.json").write_text("{}")


def test_force_removes_what_the_run_wrote_and_nothing_else(tmp_path):
    out = user_folder(tmp_path / "project")
    (out / "lancedb" / "docs.lance").mkdir(parents=True)  # the user's own table beside the run's
    finished_run(out)
    with locked_output(out):
        prepare_output(out, True, SETTINGS)
    assert_user_files_intact(out)
    assert (out / "lancedb" / "docs.lance").is_dir()
    for name in ("report.json", "report.md", "baseline_results.json", "model", "tables.json", "lancedb/baseline.lance"):
        assert not (out / name).exists(), name


def test_a_change_of_settings_starts_over_without_touching_other_files(tmp_path):
    out = user_folder(tmp_path / "project")
    prepare_output(out, False, SETTINGS)
    prepare_output(out, False, OTHER_SETTINGS)  # nothing cached yet: the user's files are no cached stage
    (out / "baseline_results.json").write_text("[]")
    with pytest.raises(TuningError, match="unfinished run made with other data or settings"):
        prepare_output(out, False, SETTINGS)
    prepare_output(out, True, SETTINGS)
    assert not (out / "baseline_results.json").exists()
    assert_user_files_intact(out)


@pytest.mark.parametrize("entry", ["model", "report.md", "settings.json"])
def test_a_name_the_run_writes_but_did_not_write_is_refused_even_when_forced(tmp_path, entry):
    out = tmp_path / "project"
    out.mkdir()
    if entry == "model":
        (out / "model").mkdir()
        (out / "model" / "mine.bin").write_bytes(b"my model")
    else:
        (out / entry).write_text("mine")
    for force in (False, True):
        with pytest.raises(TuningError, match=rf"{entry} was not written by lancedb-tune.*choose another --out"):
            prepare_output(out, force, SETTINGS)
    assert (out / "model" / "mine.bin").exists() if entry == "model" else (out / entry).read_text() == "mine"


def test_a_run_directory_made_before_the_manifest_is_still_the_runs(tmp_path):
    out = tmp_path / "old_run"
    out.mkdir()
    for name in ("tables.json", "settings.json", "report.json"):
        (out / name).write_text("[]" if name == "tables.json" else "{}")
    (out / "notes.txt").write_text("mine")
    with pytest.raises(TuningError, match="already holds a finished report; pass --force"):
        prepare_output(out, False, SETTINGS)
    prepare_output(out, True, SETTINGS)
    assert not (out / "report.json").exists() and (out / "notes.txt").read_text() == "mine"


def test_the_lock_file_goes_when_the_run_ends(tmp_path):
    out = tmp_path / "out"
    with locked_output(out):
        assert (out / ".lock").exists()
        (out / "report.json").write_text("{}")
    assert not (out / ".lock").exists() and (out / "report.json").exists()
    with locked_output(out):  # and the next run takes the lock as before
        assert (out / ".lock").exists()
    assert not (out / ".lock").exists()


def test_a_run_that_fails_early_takes_its_bookkeeping_away_and_only_that(tmp_path):
    out = user_folder(tmp_path / "project")
    with pytest.raises(RuntimeError), locked_output(out):
        prepare_output(out, False, SETTINGS)
        claim_tables(out, ["baseline"])
        raise RuntimeError("the model failed to load")
    assert sorted(p.name for p in out.iterdir()) == [".git", "notes.txt", "src"]
    assert_user_files_intact(out)
    fresh = tmp_path / "fresh"
    with pytest.raises(RuntimeError), locked_output(fresh):
        prepare_output(fresh, False, SETTINGS)
        raise RuntimeError("the model failed to load")
    assert not fresh.exists()  # made by the run, and empty again


def test_a_refused_directory_keeps_the_users_files_of_bookkeeping_names(tmp_path):
    out = tmp_path / "project"
    out.mkdir()
    (out / "settings.json").write_text('{"editor": "mine"}')
    with pytest.raises(TuningError, match="was not written by lancedb-tune"), locked_output(out):
        prepare_output(out, False, SETTINGS)
    assert (out / "settings.json").read_text() == '{"editor": "mine"}'


def test_run_force_through_the_cli_keeps_the_users_files(tmp_path, capsys):
    data = tmp_path / "qa.csv"
    with data.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([("query", "context"), *ROWS])
    out = user_folder(tmp_path / "project")
    argv = ["run", str(data), "--out", str(out), "--epochs", "1", "--batch-size", "4", "--quiet"]
    assert main(argv) == 0
    written = {p.name for p in out.iterdir()} - {"src", ".git", "notes.txt"}
    assert written <= set(json.loads((out / "manifest.json").read_text())), "a run entry --force would not remove"
    assert main([*argv, "--force"]) == 0, capsys.readouterr().err
    assert_user_files_intact(out)
    assert (out / "report.json").exists() and not (out / ".lock").exists()
    assert sorted(json.loads((out / "tables.json").read_text())) == ["baseline", "tuned"]
