"""Training-pair generation against a real OpenAI client and a local server, plus offline."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from llama_index.core.schema import TextNode
from llama_index.llms.openai import OpenAI
from openai_server import OpenAIServer  # tests/ is on sys.path under pytest's default import mode

from llama_index_lancedb_tuning.data.documents import load_documents
from llama_index_lancedb_tuning.data.qa_dataset import QADataset
from llama_index_lancedb_tuning.errors import TuningError
from llama_index_lancedb_tuning.pairs.llm_pairs import generate_llm_pairs, llm_from_spec, parse_questions
from llama_index_lancedb_tuning.pairs.offline_pairs import generate_offline_pairs, source_node_id
from llama_index_lancedb_tuning.pairs.pairs_file import progress_path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
FAST = {"retry_base_delay": 0.01, "retry_max_delay": 0.05, "show_progress": False}


def make_nodes(n: int) -> list[TextNode]:
    topics = ["llamas", "tokenizers", "reward models", "safety tuning", "context length", "GPU clusters"]
    return [
        TextNode(
            id_=f"doc-{i}:0",
            text=f"Section {i} covers {topics[i % len(topics)]}. It explains why {topics[i % len(topics)]} "
            f"matter for model number {i}, and how the team measured them in experiment {i * 7}.",
        )
        for i in range(n)
    ]


@pytest.fixture
def server():
    srv = OpenAIServer().start()
    yield srv
    srv.stop()


def client(server: OpenAIServer, timeout: float = 5.0) -> OpenAI:
    return OpenAI(model="gpt-4o-mini", api_key="sk-test", api_base=server.url, max_retries=0, timeout=timeout)


def test_happy_path_writes_a_qa_dataset(server, tmp_path):
    nodes = make_nodes(5)
    out = tmp_path / "pairs.json"
    dataset = generate_llm_pairs(nodes, client(server), out, questions_per_chunk=2, **FAST)

    raw = json.loads(out.read_text())
    assert set(raw) == {"queries", "corpus", "relevant_docs", "mode"}
    assert raw["corpus"] == {n.node_id: n.text for n in nodes}
    assert len(raw["queries"]) == 10
    assert sorted(d for docs in raw["relevant_docs"].values() for d in docs) == sorted(n.node_id for n in nodes for _ in range(2))
    qid, docs = next(iter(raw["relevant_docs"].items()))
    assert docs == ["doc-0:0"]
    assert raw["queries"][qid] == "What does the text say about Section 0 covers llamas. It explains?"
    reloaded = QADataset.from_json(out)
    assert reloaded.to_dict() == dataset.to_dict()
    # The prompt carries the passage and the requested count, through the chat endpoint.
    assert len(server.requests) == 5
    prompts = [r["messages"][-1]["content"] for r in server.requests]
    assert sum("Section 0 covers llamas" in p and "Write 2 different questions" in p for p in prompts) == 1


@pytest.mark.parametrize("status", [429, 500, 503])
def test_transient_http_errors_are_retried(server, tmp_path, status):
    server.script.extend([("status", status), ("status", status)])
    dataset = generate_llm_pairs(make_nodes(1), client(server), tmp_path / "p.json", **FAST)
    assert len(dataset.queries) == 2
    assert len(server.requests) == 3


def test_slow_reply_times_out_and_is_retried(server, tmp_path):
    server.script.append(("slow", 1.5))
    start = time.monotonic()
    dataset = generate_llm_pairs(make_nodes(1), client(server, timeout=0.3), tmp_path / "p.json", **FAST)
    assert len(dataset.queries) == 2
    assert len(server.requests) == 2
    assert time.monotonic() - start < 1.4  # did not wait for the slow reply


def test_persistent_failure_is_a_clear_error_and_keeps_finished_chunks(server, tmp_path):
    nodes = make_nodes(4)
    out = tmp_path / "p.json"
    server.rules["Section 1 covers"] = ("status", 500)
    with pytest.raises(TuningError, match=r"1 of 4 chunks failed after 2 retries .*doc-1:0.*rerun the same command"):
        generate_llm_pairs(nodes, client(server), out, max_retries=2, max_failed_fraction=0.0, **FAST)
    assert not out.exists()
    assert sum("Section 1 covers" in r["messages"][-1]["content"] for r in server.requests) == 3
    records = [json.loads(line) for line in progress_path(out).read_text().splitlines()[1:]]
    assert sorted(r["node_id"] for r in records) == ["doc-0:0", "doc-2:0", "doc-3:0"]

    # Once the server recovers, a rerun asks only for the missing chunk.
    server.rules.clear()
    asked = len(server.requests)
    dataset = generate_llm_pairs(nodes, client(server), out, **FAST)
    assert len(server.requests) == asked + 1
    assert len(dataset.queries) == 8

    # Within the allowed fraction, a failing chunk is left out and the run completes.
    server.rules["Section 2 covers"] = ("status", 503)
    dataset = generate_llm_pairs(
        make_nodes(6)[2:], client(server), tmp_path / "q.json", max_retries=1, max_failed_fraction=0.25, **FAST
    )
    assert sorted({d for docs in dataset.relevant_docs.values() for d in docs}) == ["doc-3:0", "doc-4:0", "doc-5:0"]


def test_auth_error_stops_at_once(server, tmp_path):
    server.script.append(("status", 401))
    with pytest.raises(TuningError, match="check the API key"):
        generate_llm_pairs(make_nodes(3), client(server), tmp_path / "p.json", max_concurrency=1, **FAST)
    assert len(server.requests) == 1


def test_empty_duplicate_and_garbled_questions_are_dropped(server, tmp_path):
    reply = "\n".join(
        [
            "Sure! Here are three questions:",
            "",
            "1. What is the reward model trained on?",
            "2) what is the REWARD model trained on?",
            "Q3: ?????",
            "- 12.5 / 3.1 = 4?",
            "**How long is the context window**",
            "Why?",
        ]
    )
    assert parse_questions(reply) == ["What is the reward model trained on?", "How long is the context window?"]
    assert parse_questions(reply, limit=1) == ["What is the reward model trained on?"]

    # Across chunks, a question two chunks share is kept once, for the first chunk.
    server.script.extend([("text", "What is shared here?\nWhat is only in one?"), ("text", "What is shared here?")])
    dataset = generate_llm_pairs(make_nodes(2), client(server), tmp_path / "p.json", max_concurrency=1, **FAST)
    assert sorted(dataset.queries.values()) == ["What is only in one?", "What is shared here?"]
    assert all(docs == ["doc-0:0"] for docs in dataset.relevant_docs.values())


def test_changed_settings_refuse_to_mix_with_old_progress(server, tmp_path):
    out = tmp_path / "p.json"
    generate_llm_pairs(make_nodes(1), client(server), out, **FAST)
    with pytest.raises(TuningError, match="other settings"):
        generate_llm_pairs(make_nodes(1), client(server), out, questions_per_chunk=3, **FAST)
    with pytest.raises(TuningError, match="placeholder"):
        generate_llm_pairs(make_nodes(1), client(server), out, prompt_template="Ask about {passage}", **FAST)


KILL_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, "tests")
    from llama_index.llms.openai import OpenAI
    from llama_index_lancedb_tuning.pairs.llm_pairs import generate_llm_pairs
    from test_generate import make_nodes
    llm = OpenAI(model="gpt-4o-mini", api_key="sk-test", api_base=sys.argv[1], max_retries=0, timeout=5)
    generate_llm_pairs(make_nodes(40), llm, sys.argv[2], max_concurrency=2, show_progress=False)
    """
)


def test_killed_run_resumes_without_losing_or_duplicating_pairs(tmp_path):
    srv = OpenAIServer(delay=0.05).start()
    out = tmp_path / "pairs.json"
    sidecar = progress_path(out)
    cmd = [sys.executable, "-c", KILL_SCRIPT, srv.url, str(out)]
    try:
        proc = subprocess.Popen(cmd, cwd=ROOT)
        deadline = time.monotonic() + 240  # generous: the child's imports are slow on a busy machine
        while time.monotonic() < deadline and proc.poll() is None:
            if sidecar.exists() and sidecar.read_text().count("\n") > 12:
                break
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        time.sleep(0.3)  # let the server log requests the child sent just before dying
        done_before = [json.loads(line)["node_id"] for line in sidecar.read_text().splitlines()[1:]]
        assert 10 < len(done_before) < 40, "the kill should land mid-run"
        assert not out.exists()

        asked_before = len(srv.requests)
        subprocess.run(cmd, cwd=ROOT, check=True, timeout=240)
    finally:
        srv.stop()
    records = [json.loads(line) for line in sidecar.read_text().splitlines()[1:]]
    node_ids = [r["node_id"] for r in records]
    assert node_ids[: len(done_before)] == done_before
    assert sorted(node_ids) == sorted(n.node_id for n in make_nodes(40))  # each chunk exactly once
    # The restart asked only for chunks the killed run had not saved (plus at most its in-flight ones).
    assert len(srv.requests) - asked_before == 40 - len(done_before)
    dataset = QADataset.from_json(out)
    assert len(dataset.queries) == 80
    assert len(set(dataset.queries.values())) == 80


def test_offline_pairs_are_deterministic_and_cite_their_node(tmp_path):
    nodes = [
        TextNode(id_=f"n{i}", text=" ".join(f"Sentence {j} of node {i} talks about topic {i * 10 + j}." for j in range(6)))
        for i in range(8)
    ]
    first = generate_offline_pairs(nodes, seed=7)
    again = generate_offline_pairs(nodes, seed=7)
    other = generate_offline_pairs(nodes, seed=8)
    assert first.to_dict() == again.to_dict()
    assert first.queries != other.queries
    assert len(first.queries) >= len(nodes)
    assert all(q.strip() for q in first.queries.values())
    for qid, docs in first.relevant_docs.items():
        assert len(docs) == 1 and docs[0] in first.corpus
    assert {n.node_id for n in nodes} <= {source_node_id(d) for docs in first.relevant_docs.values() for d in docs}


def test_llm_from_spec(monkeypatch):
    assert llm_from_spec("offline") is None
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(TuningError, match="OPENAI_API_KEY"):
        llm_from_spec("openai:gpt-4o-mini")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    llm = llm_from_spec("openai:gpt-4o-mini")
    assert isinstance(llm, OpenAI)
    assert (llm.model, llm.api_base, llm.api_key) == ("gpt-4o-mini", "http://127.0.0.1:9/v1", "sk-test")
    with pytest.raises(TuningError, match="pip install llama-index-llms-ollama"):
        llm_from_spec("ollama:llama3")
    for bad in ("gpt-4", "openai:", "anthropic:claude"):
        with pytest.raises(TuningError, match="openai:MODEL"):
            llm_from_spec(bad)


def test_load_documents_reads_text_markdown_and_csv(tmp_path):
    (tmp_path / "notes.md").write_text("# Title\n\nMarkdown body.\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "plain.txt").write_text("Plain text.\n")
    (tmp_path / "sub" / "rows.csv").write_text("query,context\nq1,first context\nq2,second context\n")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    docs = load_documents(tmp_path)
    assert docs == {
        "notes.md": "# Title\n\nMarkdown body.",
        "sub/plain.txt": "Plain text.",
        "sub/rows.csv:r1": "query: q1\ncontext: first context",
        "sub/rows.csv:r2": "query: q2\ncontext: second context",
    }
    assert load_documents(tmp_path / "sub" / "plain.txt") == {"plain.txt": "Plain text."}


def test_load_documents_reads_pdf_pages(tmp_path):
    pdf = SHARED / "uber_2021.pdf"
    if not pdf.exists():
        pytest.skip("shared uber_2021.pdf not present")
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter()
    for page in PdfReader(pdf).pages[:3]:
        writer.add_page(page)
    with (tmp_path / "uber.pdf").open("wb") as fh:
        writer.write(fh)
    docs = load_documents(tmp_path / "uber.pdf")
    assert list(docs) == ["uber.pdf:p1", "uber.pdf:p2", "uber.pdf:p3"]
    assert docs["uber.pdf:p1"].startswith("UNITED STATES\nSECURITIES AND EXCHANGE COMMISSION")
    assert docs["uber.pdf:p3"].startswith("UBER TECHNOLOGIES, INC.\nTABLE OF CONTENTS")


def test_load_documents_errors(tmp_path):
    with pytest.raises(TuningError, match="no such file or directory"):
        load_documents(tmp_path / "missing")
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    with pytest.raises(TuningError, match="no .pdf"):
        load_documents(tmp_path)
    with pytest.raises(TuningError, match="unsupported file type '.png'"):
        load_documents(tmp_path / "image.png")
    (tmp_path / "blank.txt").write_text("  \n")
    with pytest.raises(TuningError, match="no readable text"):
        load_documents(tmp_path)


def test_unwritable_out_is_one_clear_line_before_any_request(server, tmp_path, capsys):
    from llama_index_lancedb_tuning.cli import main

    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the output folder should be")  # unwritable even for root
    with pytest.raises(TuningError, match=r"^cannot write pairs progress to .*not-a-dir.*; choose another --out$"):
        generate_llm_pairs(make_nodes(2), client(server), blocker / "pairs.json", **FAST)
    assert server.requests == []  # refused before any LLM call was paid for

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text(" ".join(f"Sentence {j} explains why glaciers move in winter number {j}." for j in range(8)))
    code = main(["generate", str(docs), "--out", str(blocker / "pairs.json"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("lancedb-tune: error: cannot write --out ") and "choose another --out" in err  # checked before chunking
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
