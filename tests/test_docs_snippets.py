"""Every ```python block in README.md, docs/*.md and examples/README.md runs as written.

Each markdown file's blocks run in order in one namespace (a later block may use names an
earlier block of the same file defined), from a fresh temporary working directory. A block
that cannot run here is marked by an HTML comment on the line before its fence,
`<!-- not run: REASON -->`; only those are skipped, and at most `MAX_NOT_RUN` of them.

What the docs may rely on without defining it (nothing else is provided):

- names `docs` (llama_index `Document`s, one per context of the first rows of the shared
  data_qa.csv) and `nodes` (those documents chunked into `TextNode`s, 128 model tokens);
- files in the working directory: `out/ref/model` (a link to the bundled base model, standing
  in for a model tuned by `lancedb-tune run ... --out out/ref`), `data_qa.csv` (the first
  `QA_ROWS` rows of the shared data_qa.csv, so a training snippet finishes in seconds) and
  `corpus/NNN.txt` (the texts of `docs`, one per file);
- S3: `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
  `AWS_REGION` point LanceDB at moto's S3 server on 127.0.0.1, which holds an empty bucket
  `bucket`, so `s3://bucket/...` snippets run offline with the storage options they show.
"""

from __future__ import annotations

import csv
import re
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA_QA = ROOT.parent / "shared" / "data" / "data_qa.csv"
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "examples" / "README.md"]
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(?P<reason>.+?)\s*-->$")
FENCE = re.compile(r"^```\s*(?P<lang>[\w+-]*)\s*$")
MAX_NOT_RUN = 2
QA_ROWS = 12
BUCKET = "bucket"


@dataclass
class Snippet:
    path: Path
    line: int  # 1-based line of the opening fence
    code: str
    not_run: str | None  # the reason given in the marker, or None when the block runs


def python_snippets(path: Path) -> list[Snippet]:
    """The ```python blocks of a markdown file, in order, with their not-run markers."""
    lines = path.read_text(encoding="utf-8").splitlines()
    snippets, i = [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip() == "```"), None)
        assert end is not None, f"{path.name}:{i + 1}: unclosed code fence"
        if fence["lang"] in ("python", "py"):
            marker = NOT_RUN.match(lines[i - 1].strip()) if i > 0 else None
            snippets.append(Snippet(path, i + 1, "\n".join(lines[i + 1 : end]) + "\n", marker["reason"] if marker else None))
        i = end + 1
    return snippets


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    moto_server = pytest.importorskip("moto.server", reason="moto[server] is in the test extra")
    boto3 = pytest.importorskip("boto3")
    port = _free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="x", aws_secret_access_key="x", region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    yield endpoint, client
    server.stop()


@pytest.fixture(scope="module")
def doc_fixtures(default_model_path):
    """The `docs` and `nodes` every markdown file may use, and the rows of the small data_qa.csv."""
    from llama_index.core import Document

    from llama_index_lancedb_tuning import chunk_corpus, model_tokenizer

    if not DATA_QA.exists():
        pytest.fail(f"shared data missing: {DATA_QA} (tests read ../shared/data beside the project)")
    with DATA_QA.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = [row for _, row in zip(range(QA_ROWS), reader)]
    context = header.index("context")
    texts = list(dict.fromkeys(row[context] for row in rows))
    docs = [Document(text=text, id_=f"doc{i}") for i, text in enumerate(texts)]
    nodes = chunk_corpus({d.doc_id: d.text for d in docs}, model_tokenizer(default_model_path), 128, 16)
    return header, rows, docs, nodes


@pytest.fixture
def doc_workdir(tmp_path, monkeypatch, default_model_path, doc_fixtures, s3_endpoint):
    """A working directory holding the documented fixture files, with S3 pointed at moto; returns the fixture names."""
    header, rows, docs, nodes = doc_fixtures
    endpoint, client = s3_endpoint
    (tmp_path / "out" / "ref").mkdir(parents=True)
    (tmp_path / "out" / "ref" / "model").symlink_to(default_model_path, target_is_directory=True)
    with (tmp_path / "data_qa.csv").open("w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    (tmp_path / "corpus").mkdir()
    for i, doc in enumerate(docs):
        (tmp_path / "corpus" / f"{i:03d}.txt").write_text(doc.text, encoding="utf-8")
    for key, value in {
        "AWS_ENDPOINT": endpoint,
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)
    for key in _bucket_keys(client):
        client.delete_object(Bucket=BUCKET, Key=key)  # each markdown file starts from an empty bucket
    monkeypatch.chdir(tmp_path)
    return {"docs": list(docs), "nodes": list(nodes)}


def _bucket_keys(client) -> list[str]:
    return [o["Key"] for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", [])]


def test_snippets_are_found_and_few_are_skipped():
    snippets = [s for path in DOC_FILES for s in python_snippets(path)]
    skipped = [s for s in snippets if s.not_run]
    print(
        f"{len(snippets)} python snippets, {len(skipped)} marked not run:",
        *(f"{s.path.name}:{s.line} ({s.not_run})" for s in skipped),
    )
    assert len(snippets) - len(skipped) >= 4, "the docs' python snippets were not found"
    assert len(skipped) <= MAX_NOT_RUN, [f"{s.path.name}:{s.line}" for s in skipped]


def test_parser_reads_markers_and_ignores_other_languages(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "Text.\n\n```python\nx = 1\n```\n\n```bash\npython train.py\n```\n\n"
        "<!-- not run: needs LanceDB Cloud -->\n```python\nimport lancedb\n```\n",
        encoding="utf-8",
    )
    found = python_snippets(page)
    assert [(s.line, s.code, s.not_run) for s in found] == [(3, "x = 1\n", None), (12, "import lancedb\n", "needs LanceDB Cloud")]


@pytest.mark.parametrize("path", [p for p in DOC_FILES if python_snippets(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_snippets_run(path, doc_workdir, s3_endpoint):
    namespace = {"__name__": f"snippets_of_{path.stem}", **doc_workdir}
    ran = [s for s in python_snippets(path) if not s.not_run]
    assert ran, f"{path.name}: every python snippet is marked not run"
    for snippet in ran:
        # Padded to the fence's line, so a traceback names the markdown file's own line numbers.
        exec(compile("\n" * snippet.line + snippet.code, str(path.relative_to(ROOT)), "exec"), namespace)
    if any(f"s3://{BUCKET}/" in s.code for s in ran):  # the writes went to moto, not past it to a real S3 or a folder
        assert _bucket_keys(s3_endpoint[1]), f"{path.name}: its s3:// snippets wrote nothing to the local bucket"
