"""What a new user hit: slow and multi-line argument errors, help without defaults, a user's
table replaced, two runs in one directory, confident reports on tiny data, an unwritable --out."""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from filelock import FileLock

from llama_index_lancedb_tuning.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
ROWS = [
    (f"What does note {i} say about topic {i % 3}?", f"Note {i % 6} explains its own topic in a few words.") for i in range(12)
]


def write_csv(path: Path, rows) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(("query", "context"))
        writer.writerows(rows)
    return path


@pytest.fixture
def good_csv(tmp_path) -> Path:
    return write_csv(tmp_path / "good.csv", ROWS)


def one_line_error(capsys, argv: list[str]) -> str:
    code = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("lancedb-tune: error: "), captured.err
    return lines[0]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_flag_says_its_default_and_every_subcommand_has_an_example():
    for name, sub in _subparsers(build_parser()).items():
        assert sub.description and "example:\n  lancedb-tune " + name in sub.epilog
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help and ("default" in action.help or action.required), (name, action.option_strings, action.help)


def test_download_pack_help_names_the_real_flag(capsys):
    with pytest.raises(SystemExit):
        main(["download-pack", "--help"])
    text = capsys.readouterr().out
    assert "--overwrite" in text and "--force" not in text


def test_version_prints_the_package_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.strip() == f"lancedb-tune {version('llama-index-lancedb-tuning')}"


def _cli_without_heavy_imports(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The CLI in a fresh process; exit 99 if it imported a heavy library before answering."""
    code = (
        "import sys; from llama_index_lancedb_tuning.cli import main; code = main(sys.argv[1:]); "
        "heavy = [m for m in ('torch', 'sentence_transformers', 'transformers', 'lancedb') if m in sys.modules]; "
        "sys.exit(code if not heavy else 99)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code, *argv], check=False, capture_output=True, text=True, env=env, cwd=cwd)


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["run", "{csv}", "--k", "-3"], "--k must be at least 1, got -3"),
        (["run", "{csv}", "--chunk-size", "-1"], "--chunk-size must be at least 0, got -1"),
        (["run", "{csv}", "--lr", "inf"], "--lr must be a finite number, got inf"),
        (["run", "{csv}", "--lr", "nan"], "--lr must be a finite number, got nan"),
        (["run", "{csv}", "--loss", "bogus"], "argument --loss: invalid choice: 'bogus'"),
        (["run", "{tmp}/missing.csv"], "missing.csv: no such file; check the path"),
        (["evaluate", "{tmp}"], "is a directory; pass a labeled CSV file"),
        (["generate", "{tmp}", "--chunk-overlap", "200"], "--chunk-overlap (200) must be smaller than --chunk-size (128)"),
        # File and data mistakes too: the data is read and checked before the pipeline is imported.
        (["run", "{tmp}/wrong_column.csv"], "no column 'query' (columns: question, passage)"),
        (["run", "{tmp}/one_row.csv"], "only 1 query: too few to hold out test queries"),
        (["run", "{csv}", "--k", "50"], "is larger than the corpus"),
        (["run", "{tmp}/report.pdf"], "is a PDF, not a labeled CSV"),
        (["evaluate", "{csv}", "--model", "{tmp}/no_such_model"], "does not exist; check the path"),
        (["generate", "{tmp}/fake.pdf"], "is not a PDF (it has no %PDF- header)"),
        (["run", "--table", "{tmp}/none", "--table-name", "t", "--queries", "{csv}"], "--table {tmp}/none: no such LanceDB"),
        (["run", "--table", "{tmp}", "--table-name", "t", "--queries", "{csv}"], "has no table 't' (it holds: no tables)"),
        (["run", "--table", "{csv}", "--table-name", "t", "--queries", "{csv}"], "is a file, not a LanceDB directory"),
        (["run", "{csv}", "--base-model", "{tmp}/no_such_model"], "does not exist; check the path"),
        (["run", "{csv}", "--test-size", "1.5"], "--test-size must be between 0 and 1, got 1.5"),
        (["run", "{sample}", "--test-size", "0.99"], "test size 0.99 holds out 119 of 120 queries, leaving 1 training query"),
        (["evaluate", "{csv}", "--model", "{tmp}/old_run"], "is a lancedb-tune run directory; pass {tmp}/old_run/model"),
        (["run", "{csv}", "--base-model", "{tmp}/old_run"], "is a lancedb-tune run directory; pass {tmp}/old_run/model"),
    ],
)
def test_argument_mistakes_answer_in_one_line_before_torch_is_imported(tmp_path, good_csv, argv, expected):
    (tmp_path / "wrong_column.csv").write_text("question,passage\nwhat?,that\n")
    write_csv(tmp_path / "one_row.csv", ROWS[:1])
    (tmp_path / "report.pdf").write_bytes(b"%PDF-1.7\n" + bytes(range(256)))
    (tmp_path / "fake.pdf").write_text("plain text under a .pdf name")
    (tmp_path / "old_run" / "model").mkdir(parents=True)
    (tmp_path / "old_run" / "report.json").write_text("{}")
    expected = expected.format(tmp=tmp_path)
    sample = ROOT / "examples" / "sample_qa.csv"
    argv = [a.format(csv=good_csv, tmp=tmp_path, sample=sample) for a in argv] + ["--out", str(tmp_path / "out")]
    start = time.perf_counter()
    proc = _cli_without_heavy_imports(argv, tmp_path)
    elapsed = time.perf_counter() - start
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr  # 99: a heavy library was imported before the mistake was named
    assert len(lines) == 1 and expected in lines[0] and proc.stdout == "", proc.stderr
    assert elapsed < 3, elapsed  # loose: importing torch alone takes longer on this machine
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("command", ["history", "rollback"])
def test_a_wrong_uri_is_named_without_creating_it(tmp_path, command):
    (tmp_path / "labels.csv").write_text("query,context\n")
    for uri, expected in [
        ("missing/db", "--uri missing/db: no such LanceDB directory; check the path"),
        ("labels.csv", "--uri labels.csv is a file, not a LanceDB directory; pass the folder that holds the table"),
        (".", "--uri . has no table 'docs' (it holds: no tables); check --table-name"),
    ]:
        proc = _cli_without_heavy_imports([command, "--uri", uri, "--table-name", "docs"], tmp_path)
        assert proc.returncode == 2 and proc.stderr.strip() == f"lancedb-tune: error: {expected}", proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.csv"]


@pytest.mark.parametrize("command, what", [("run", "a directory for the run"), ("generate", "the JSON file to write")])
def test_an_empty_out_is_refused_not_taken_for_the_current_folder(tmp_path, good_csv, command, what):
    proc = _cli_without_heavy_imports([command, str(good_csv), "--out", ""], tmp_path)
    assert proc.returncode == 2 and proc.stderr.strip().startswith(f"lancedb-tune: error: --out is empty; pass {what}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.csv"]


def test_a_finished_report_is_refused_before_torch_is_imported(tmp_path, good_csv):
    from llama_index_lancedb_tuning.tuning.run_files import take

    out = tmp_path / "out"
    out.mkdir()
    take(out)
    (out / "report.json").write_text("{}")
    proc = _cli_without_heavy_imports(["run", str(good_csv), "--out", str(out)], tmp_path)
    assert proc.returncode == 2 and "already holds a finished report; pass --force" in proc.stderr, proc.stderr


def test_a_one_row_csv_names_the_real_problem_once(tmp_path, capsys):
    data = write_csv(tmp_path / "one.csv", ROWS[:1])
    line = one_line_error(capsys, ["run", str(data), "--out", str(tmp_path / "out")])
    assert "only 1 query: too few to hold out test queries" in line and "--k" not in line


def test_evaluate_refuses_a_table_it_did_not_create_and_leaves_it_intact(tmp_path, good_csv, capsys):
    import lancedb

    out = tmp_path / "out"
    db = lancedb.connect(str(out / "lancedb"))
    db.create_table("model", data=[{"id": str(i), "vector": [0.1, 0.2]} for i in range(3)])
    line = one_line_error(capsys, ["evaluate", str(good_csv), "--out", str(out), "--quiet"])
    assert "already holds a table 'model' that lancedb-tune did not create; choose another --out" in line
    assert lancedb.connect(str(out / "lancedb")).open_table("model").count_rows() == 3


def test_a_second_command_into_a_locked_directory_is_refused(tmp_path, good_csv, capsys):
    out = tmp_path / "out"
    out.mkdir()
    with FileLock(out / ".lock", timeout=0):  # what a running command holds
        line = one_line_error(capsys, ["evaluate", str(good_csv), "--out", str(out)])
    assert "is in use by another lancedb-tune run; wait for it to finish or choose another --out" in line
    assert not (out / "report.json").exists()


def test_generate_into_an_unwritable_place_fails_before_generating(tmp_path, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Some text worth asking about. " * 20)
    blocker = tmp_path / "file.txt"
    blocker.write_text("a file, not a folder")
    line = one_line_error(capsys, ["generate", str(docs), "--out", str(blocker / "pairs.json")])
    assert "cannot write --out" in line and "choose another --out" in line
    if os.geteuid() != 0:  # root writes through permissions
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        line = one_line_error(capsys, ["generate", str(docs), "--out", str(locked / "pairs.json")])
        assert "cannot write --out" in line


def test_a_tiny_evaluation_warns_in_the_log_and_the_report(tmp_path, good_csv, capsys, caplog):
    out = tmp_path / "out"
    assert main(["evaluate", str(good_csv), "--out", str(out), "--k", "1", "--quiet"]) == 0
    report = json.loads((out / "report.json").read_text())
    (warning,) = report["warnings"]
    assert "the test set has only 12 queries" in warning and "needs about 62 queries" in warning
    assert warning in (out / "report.md").read_text()
    assert any(warning == r.getMessage() for r in caplog.records)
    assert json.loads((out / "tables.json").read_text()) == ["model"]
    # Its own table is overwritten when redone.
    assert main(["evaluate", str(good_csv), "--out", str(out), "--k", "1", "--quiet", "--force"]) == 0
