"""Bad input gets one clear line and a non-zero exit, before any model is loaded, and leaves no report behind."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.schema import TextNode

from llama_index_lancedb_tuning import LanceDBIndex, QADataset, TuningError, load_labeled_csv
from llama_index_lancedb_tuning.cli import main
from llama_index_lancedb_tuning.store.table import connect, write_nodes

ROOT = Path(__file__).resolve().parents[1]
GOOD_ROWS = [
    (f"What does note {i} say about topic {i % 3}?", f"Note {i % 6} explains its own topic in a few words.") for i in range(12)
]


class ExpensiveWork(BaseException):
    """Raised by any model load or training; BaseException so no `except Exception` hides it."""


@pytest.fixture
def no_models(monkeypatch):
    """Make loading a tokenizer or model, or training, fail the test: cheap checks must come first."""
    import sentence_transformers
    import transformers

    import llama_index_lancedb_tuning.search.index as index_module
    import llama_index_lancedb_tuning.training.finetuner as finetuner_module

    def refuse(*args, **kwargs):
        raise ExpensiveWork("a model was loaded before the bad input was noticed")

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", refuse)
    monkeypatch.setattr(sentence_transformers.SentenceTransformer, "__init__", refuse)
    monkeypatch.setattr(index_module, "load_embed_model", refuse)
    monkeypatch.setattr(finetuner_module.EmbeddingFinetuner, "fit", refuse)


def write_csv(path: Path, rows, header=("query", "context")) -> Path:
    import csv

    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def good_csv(tmp_path) -> Path:
    return write_csv(tmp_path / "good.csv", GOOD_ROWS)  # 12 queries over 6 contexts


def fail(capsys, argv: list[str], out: Path | None = None) -> str:
    """Run the CLI in-process; it must exit 2 with exactly one `lancedb-tune: error:` line and no report."""
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, (code, captured.err)
    assert "Traceback" not in captured.err and captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lancedb-tune: error: "), captured.err
    if out is not None:
        assert not (out / "report.json").exists() and not (out / "report.md").exists()
    return lines[0]


# -- bad data files ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, content, extra, expected",
    [
        ("misnamed.csv", "question,passage\nq,p\n", [], r"no column 'query' \(columns: question, passage\).*--query-column"),
        ("nocontext.csv", "query,context\nq,p\n", ["--context-column", "ctx"], r"no column 'ctx'.*--context-column"),
        ("empty.csv", "", [], r"is empty; it needs a header row"),
        ("header.csv", "query,context\n", [], r"no rows with both a query and a context"),
        ("blanks.csv", "query,context\n,some context\na query,\n  ,  \n", [], r"no rows with both a query and a context"),
        (
            "latin1.csv",
            "query,context\ncaf\xe9,cr\xe8me\n".encode("latin-1"),
            [],
            r"not UTF-8 text \(byte \d+\); re-save the CSV as UTF-8",
        ),
        ("bad.json", "{not json", [], r"not a QA dataset JSON file"),
        ("list.json", "[1, 2]", [], r"missing keys.*EmbeddingQAFinetuneDataset"),
        (
            "orphan.json",
            json.dumps({"queries": {"q1": "what?"}, "corpus": {"d1": "text"}, "relevant_docs": {"q1": ["d9"]}}),
            [],
            r"query 'q1' points at 'd9', which is not in the corpus; add that document to 'corpus' or fix relevant_docs",
        ),
        (
            "norel.json",
            json.dumps({"queries": {"q1": "what?"}, "corpus": {"d1": "text"}, "relevant_docs": {}}),
            [],
            r"query 'q1' has no relevant_docs",
        ),
    ],
)
@pytest.mark.parametrize("command", ["run", "evaluate"])
def test_bad_dataset_files_fail_with_one_line(tmp_path, capsys, no_models, command, name, content, extra, expected):
    data = tmp_path / name
    data.write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))
    out = tmp_path / "out"
    line = fail(capsys, [command, str(data), "--out", str(out), *extra], out)
    assert re.search(expected, line), line
    assert not out.exists()  # refused before anything was written


def test_missing_file_and_directory_as_dataset(tmp_path, capsys, no_models):
    out = tmp_path / "out"
    assert "no such file; check the path" in fail(capsys, ["evaluate", str(tmp_path / "nope.csv"), "--out", str(out)], out)
    assert "is a directory; pass a labeled CSV file" in fail(capsys, ["evaluate", str(tmp_path), "--out", str(out)], out)
    line = fail(capsys, ["run", str(tmp_path), "--out", str(out)], out)
    assert "is a documents directory; pass a labeled CSV to evaluate on with --queries" in line


def test_documents_directory_without_readable_documents(tmp_path, good_csv, capsys, no_models):
    out = tmp_path / "out"
    binary = tmp_path / "bin"
    binary.mkdir()
    (binary / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    line = fail(capsys, ["run", str(binary), "--queries", str(good_csv), "--out", str(out)], out)
    assert "no .pdf, .md, .markdown, .txt, .csv files" in line and "point at a folder of documents" in line
    blank = tmp_path / "blank"
    blank.mkdir()
    (blank / "a.txt").write_text("   \n\n")
    (blank / "b.md").write_text("")
    line = fail(capsys, ["run", str(blank), "--queries", str(good_csv), "--out", str(out)], out)
    assert "found no readable text" in line


def test_empty_and_repeated_rows_are_skipped_and_merged_with_a_warning(tmp_path, caplog):
    path = write_csv(
        tmp_path / "mixed.csv", [("q one?", "ctx a"), ("", "ctx b"), ("q two?", "  "), ("q one?", "ctx c"), ("q one?", "ctx a")]
    )
    with caplog.at_level(logging.WARNING):
        ds = load_labeled_csv(path)
    assert len(ds) == 1 and sorted(ds.corpus.values()) == ["ctx a", "ctx c"]
    assert len(ds.relevant_docs[ds.query_ids[0]]) == 2
    messages = [r.getMessage() for r in caplog.records]
    assert any("skipped 2 rows with an empty query or context" in m for m in messages), messages
    assert any("2 rows repeated an earlier query" in m for m in messages), messages


# -- bad options ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--k", "0"], "--k must be at least 1, got 0"),
        (["--k", "7"], "k=7 is larger than the corpus (6 documents)"),
        (["--chunk-overlap", "-1"], "--chunk-overlap must be at least 0"),
        (["--chunk-size", "16", "--chunk-overlap", "16"], "--chunk-overlap (16) must be smaller than --chunk-size (16)"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--batch-size", "1"], "--batch-size must be at least 2"),
        (["--lr", "-0.1"], "--lr must be a positive number"),
        (["--reranker", "nope"], "unknown reranker 'nope'"),
        (["--reranker", "cross-encoder"], "cross-encoder reranker needs a model"),
        (["--base-model", "./no/such/model"], "model path ./no/such/model does not exist"),
    ],
)
def test_bad_run_options_fail_before_any_model_loads(tmp_path, good_csv, capsys, no_models, extra, expected):
    out = tmp_path / "out"
    assert expected in fail(capsys, ["run", str(good_csv), "--out", str(out), *extra], out)
    assert not out.exists()


def test_cohere_without_key_fails_before_any_model_loads(tmp_path, good_csv, capsys, no_models, monkeypatch):
    for name in ("COHERE_API_KEY", "CO_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    out = tmp_path / "out"
    assert "needs an API key" in fail(capsys, ["evaluate", str(good_csv), "--out", str(out), "--reranker", "cohere"], out)


def test_model_directory_without_weights(tmp_path, good_csv, capsys, no_models):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "tokenizer.json").write_text("{}")
    out = tmp_path / "out"
    line = fail(capsys, ["evaluate", str(good_csv), "--model", str(model), "--out", str(out)], out)
    assert f"model directory {model} has no weights" in line and "pass a saved sentence-transformers model" in line
    line = fail(capsys, ["run", str(good_csv), "--base-model", str(model), "--out", str(out)], out)
    assert "has no weights" in line
    assert not out.exists()


def test_unknown_model_id_offline(tmp_path, good_csv, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    line = fail(capsys, ["evaluate", str(good_csv), "--model", "no-such-org/no-such-model", "--out", str(out)], out)
    assert "cannot load the tokenizer of model 'no-such-org/no-such-model'" in line and "local model directory" in line
    assert not out.exists() or not any(out.iterdir())


# -- output directories -----------------------------------------------------------------


def test_finished_report_is_refused_without_force(tmp_path, good_csv, capsys, no_models):
    from llama_index_lancedb_tuning.tuning.run_files import take

    out = tmp_path / "out"
    out.mkdir()
    take(out)  # a directory a run wrote
    (out / "report.json").write_text('{"done": true}')
    for command in ("run", "evaluate"):
        line = fail(capsys, [command, str(good_csv), "--out", str(out)])
        assert "already holds a finished report; pass --force" in line
        assert json.loads((out / "report.json").read_text()) == {"done": True}  # untouched


def test_a_report_the_run_did_not_write_is_refused_even_when_forced(tmp_path, good_csv, capsys, no_models):
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.json").write_text('{"mine": true}')
    for command in ("run", "evaluate"):
        line = fail(capsys, [command, str(good_csv), "--out", str(out), "--force"])
        assert f"{out / 'report.json'} was not written by lancedb-tune" in line and "choose another --out" in line
        assert json.loads((out / "report.json").read_text()) == {"mine": True}


def test_output_path_that_is_a_file(tmp_path, good_csv, capsys, no_models):
    out = tmp_path / "taken"
    out.write_text("not a directory")
    assert "is a file; pass a directory" in fail(capsys, ["evaluate", str(good_csv), "--out", str(out)])
    assert out.read_text() == "not a directory"


def test_unfinished_run_with_other_settings_is_not_mixed_in(tmp_path, good_csv):
    """A killed run's cached stages are reused only by the same command; else refused unless forced."""
    from llama_index_lancedb_tuning.tuning.run_loop import RunConfig, prepare_output, run_settings

    dataset = load_labeled_csv(good_csv)
    out = tmp_path / "out"
    prepare_output(out, False, run_settings(dataset, RunConfig(k=3), None))
    (out / "baseline_results.json").write_text("[]")  # a finished stage of the killed run
    prepare_output(out, False, run_settings(dataset, RunConfig(k=3), None))  # same command: resumes
    assert (out / "baseline_results.json").exists()
    with pytest.raises(TuningError, match="unfinished run made with other data or settings.*--force"):
        prepare_output(out, False, run_settings(dataset, RunConfig(k=4), None))
    with pytest.raises(TuningError, match="other data or settings"):
        prepare_output(out, False, run_settings(dataset.subset(dataset.query_ids[:5]), RunConfig(k=3), None))
    prepare_output(out, True, run_settings(dataset, RunConfig(k=4), None))  # forced: starts over
    assert not (out / "baseline_results.json").exists()


# -- LanceDB tables ---------------------------------------------------------------------


def test_table_built_with_another_dimension_is_refused_and_left_intact(tmp_path):
    nodes = [TextNode(id_=f"n{i}", text=f"node {i}") for i in range(6)]
    db = connect(str(tmp_path))
    write_nodes(nodes, MockEmbedding(embed_dim=8), db, "t", show_progress=False)
    with pytest.raises(TuningError, match="holds 8-dim vectors but the model makes 16-dim ones"):
        LanceDBIndex.open(MockEmbedding(embed_dim=16), uri=str(tmp_path), table_name="t")
    with pytest.raises(TuningError, match="holds 8-dim vectors but the model makes 16-dim ones"):
        write_nodes([TextNode(id_="x", text="x")], MockEmbedding(embed_dim=16), db, "t", mode="append", show_progress=False)
    with pytest.raises(TuningError, match="holds 8-dim vectors"):
        LanceDBIndex(db.open_table("t"), MockEmbedding(embed_dim=16)).add([TextNode(id_="y", text="y")])
    assert db.open_table("t").count_rows() == 6


# -- real processes: the exit code a shell sees -----------------------------------------


def test_cli_subprocess_exit_codes(tmp_path, good_csv):
    bad = write_csv(tmp_path / "bad.csv", [("q", "c")], header=("question", "passage"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    cli = [sys.executable, "-m", "llama_index_lancedb_tuning.cli"]
    procs = [
        subprocess.Popen(
            [*cli, "run", str(bad), "--out", str(tmp_path / "o1")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        ),
        subprocess.Popen(
            [*cli, "evaluate", str(good_csv), "--model", "no-such-org/no-such-model", "--out", str(tmp_path / "o2")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        ),
    ]
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (stdout, stderr) in zip(procs, results):
        assert proc.returncode == 2, stderr
        assert "Traceback" not in stderr and stdout == ""
        assert stderr.strip().splitlines()[-1].startswith("lancedb-tune: error: ")
    assert "no column 'query'" in results[0][1]
    assert "cannot load the tokenizer of model 'no-such-org/no-such-model'" in results[1][1]
    assert not (tmp_path / "o1").exists()


# -- fuzzing: the loaders either load or raise TuningError ------------------------------


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


_csv_text = st.lists(
    st.lists(
        st.sampled_from(["query", "context", "", "q?", "ctx", '"', ",", "\n", "\r", "\x00", "é", " ", "a,b", '""']), max_size=8
    ).map("".join),
    max_size=6,
).map("\n".join)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.one_of(
        st.binary(max_size=300),
        _csv_text.map(lambda t: t.encode("utf-8")),
        st.text(max_size=200).map(lambda t: t.encode("utf-8", "surrogatepass")),
    )
)
def test_fuzz_csv_loader_loads_or_raises_tuning_error(fuzz_dir, data):
    path = fuzz_dir / "fuzz.csv"
    path.write_bytes(data)
    try:
        ds = load_labeled_csv(path)
    except TuningError as exc:
        assert str(path) in str(exc)  # names the file it is about
        return
    assert len(ds) >= 1 and all(ds.relevant_docs[q] for q in ds.query_ids)
    assert all(d in ds.corpus for docs in ds.relevant_docs.values() for d in docs)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.sampled_from(["q1", "d1", "text", ""]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["queries", "corpus", "relevant_docs", "mode", "q1", "d1"]), inner, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=_json)
def test_fuzz_json_loader_loads_or_raises_tuning_error(fuzz_dir, raw):
    path = fuzz_dir / "fuzz.json"
    path.write_text(json.dumps(raw))
    try:
        ds = QADataset.from_json(path)
    except TuningError:
        return
    assert all(d in ds.corpus for q in ds.query_ids for d in ds.relevant_docs[q])


# -- API keys stay secret ---------------------------------------------------------------

SECRET = "sk-secret-XYZ"


def assert_no_secret(*texts: str, root: Path | None = None) -> None:
    for text in texts:
        assert SECRET not in text
    for path in root.rglob("*") if root else []:
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


@pytest.fixture
def docs_dir(tmp_path) -> Path:
    docs = tmp_path / "docs"
    docs.mkdir()
    for i, topic in enumerate(["glaciers", "volcanoes", "coral reefs"]):
        (docs / f"{i}.txt").write_text(
            f"This note covers {topic} in some detail. It says why {topic} change over long periods of time."
        )
    return docs


def test_openai_key_never_reaches_output_logs_reports_or_errors(tmp_path, docs_dir, capsys, caplog, monkeypatch):
    from openai_server import OpenAIServer

    from llama_index_lancedb_tuning.data.chunking import chunk_corpus, model_tokenizer
    from llama_index_lancedb_tuning.data.documents import load_documents
    from llama_index_lancedb_tuning.encoding.model_ids import resolve_model
    from llama_index_lancedb_tuning.pairs.llm_pairs import generate_llm_pairs, llm_from_spec

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    server = OpenAIServer().start()
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    errors = []
    try:
        with caplog.at_level(logging.DEBUG):
            server.rules[""] = ("status", 401)  # a refused key: fatal at once
            code = main(["generate", str(docs_dir), "--out", str(tmp_path / "p1.json"), "--llm", "openai:gpt-4o-mini", "--quiet"])
            assert code == 2
            nodes = chunk_corpus(load_documents(docs_dir), model_tokenizer(resolve_model(None)), 128, 16)
            for status in (500, 429):  # transient failures until the retries run out
                server.rules[""] = ("status", status)
                with pytest.raises(TuningError) as info:
                    generate_llm_pairs(
                        nodes,
                        llm_from_spec("openai:gpt-4o-mini"),
                        tmp_path / f"p{status}.json",
                        max_retries=2,
                        retry_base_delay=0.01,
                        retry_max_delay=0.02,
                        show_progress=False,
                    )
                errors.append(f"{info.value!s} {info.value!r} {info.value.__cause__!r} {info.value.__context__!r}")
            server.rules.clear()  # and a run that works
            assert (
                main(["generate", str(docs_dir), "--out", str(tmp_path / "ok.json"), "--llm", "openai:gpt-4o-mini", "--quiet"])
                == 0
            )
    finally:
        server.stop()
    assert len(server.requests) >= 1 + 2 * 3
    captured = capsys.readouterr()
    assert "lancedb-tune: error:" in captured.err and "check the API key" in captured.err
    assert_no_secret(captured.out, captured.err, caplog.text, *errors, *(repr(r.__dict__) for r in caplog.records), root=tmp_path)


class _EchoingServer:
    """An OpenAI-compatible endpoint that quotes the caller's key back in its 401, as some proxies do."""

    def __init__(self) -> None:
        import threading
        from http.server import BaseHTTPRequestHandler

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                key = self.headers.get("Authorization", "").removeprefix("Bearer ")
                body = json.dumps(
                    {"error": {"message": f"Incorrect API key provided: {key}.", "type": "invalid_request_error"}}
                ).encode()
                self.send_response(401)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        from openai_server import _QuietServer

        # Quiet: the SDK may drop a connection after the 401; the server must not print that into captured stderr.
        self.server = _QuietServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_cli_redacts_a_key_the_server_quotes_back(tmp_path, docs_dir, capsys, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    server = _EchoingServer()
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    try:
        code = main(["generate", str(docs_dir), "--out", str(tmp_path / "p.json"), "--llm", "openai:gpt-4o-mini", "--quiet"])
    finally:
        server.stop()
    captured = capsys.readouterr()
    assert code == 2 and "Incorrect API key provided: <OPENAI_API_KEY>" in captured.err
    assert len(captured.err.strip().splitlines()) == 1
    assert_no_secret(captured.out, captured.err, root=tmp_path)
