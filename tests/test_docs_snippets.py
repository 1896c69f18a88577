"""Every ```python block in README.md, docs/*.md and examples/README.md runs as written.

Each markdown file's blocks run in order in one namespace (a later block may use names an
earlier block of the same file defined) that starts empty: a name a snippet uses without
defining or importing it is a NameError, and fails the test. A block that cannot run here is
marked by an HTML comment on the line before its fence, `<!-- not run: REASON -->`; only those
are skipped, and at most `MAX_NOT_RUN` of them.

The blocks run from a fresh temporary directory laid out as a clone's root, so the paths they
name resolve as they would for a user there:

- `examples/` and `docs/` are the repository's own (linked, read only), and `../shared/data/`
  is the shared data beside the project (`SHARED_DATA`);
- `out/sample/model`, the model `lancedb-tune run examples/sample_qa.csv --out out/sample`
  (README, "Run it") would have tuned, is a link to the bundled base model: running that
  command here would take longer than every snippet together, and a snippet's code is the same
  whichever model the directory holds;
- S3: `AWS_ENDPOINT`, `AWS_ALLOW_HTTP`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
  `AWS_REGION` point LanceDB at moto's S3 server on 127.0.0.1, which holds an empty bucket
  `bucket`, so `s3://bucket/...` snippets run offline with the storage options they show.
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import SHARED_DATA

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "examples" / "README.md"]
NOT_RUN = re.compile(r"^<!--\s*not run:\s*(?P<reason>.+?)\s*-->$")
FENCE = re.compile(r"^```\s*(?P<lang>[\w+-]*)\s*$")
MAX_NOT_RUN = 2
BUCKET = "bucket"
TUNED_MODEL = Path("out") / "sample" / "model"


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


@pytest.fixture
def clone_root(tmp_path, monkeypatch, default_model_path, s3_endpoint):
    """A working directory laid out as a clone's root beside ../shared, with S3 pointed at moto."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"shared data missing: {SHARED_DATA} (tests read ../shared/data beside the project)")
    endpoint, client = s3_endpoint
    root = tmp_path / "clone"
    root.mkdir()
    (tmp_path / "shared").symlink_to(SHARED_DATA.parent, target_is_directory=True)
    for name in ("examples", "docs"):
        (root / name).symlink_to(ROOT / name, target_is_directory=True)
    (root / TUNED_MODEL).parent.mkdir(parents=True)
    (root / TUNED_MODEL).symlink_to(default_model_path, target_is_directory=True)
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
    monkeypatch.chdir(root)
    return root


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


def run_snippets(path: Path) -> list[Snippet]:
    """Run a markdown file's runnable blocks in order in one namespace that starts empty; return them."""
    namespace = {"__name__": f"snippets_of_{path.stem}"}
    ran = [s for s in python_snippets(path) if not s.not_run]
    for snippet in ran:
        # Padded to the fence's line, so a traceback names the markdown file's own line numbers.
        exec(compile("\n" * snippet.line + snippet.code, str(path), "exec"), namespace)
    return ran


def test_a_name_no_snippet_defines_is_an_error(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("```python\nfrom pathlib import Path\n```\n\n```python\nprint(Path, docs)\n```\n", encoding="utf-8")
    with pytest.raises(NameError, match="'docs'"):
        run_snippets(page)


@pytest.mark.parametrize("path", [p for p in DOC_FILES if python_snippets(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_markdown_snippets_run(path, clone_root, s3_endpoint):
    ran = run_snippets(path)
    assert ran, f"{path.name}: every python snippet is marked not run"
    if any(f"s3://{BUCKET}/" in s.code for s in ran):  # the writes went to moto, not past it to a real S3 or a folder
        assert _bucket_keys(s3_endpoint[1]), f"{path.name}: its s3:// snippets wrote nothing to the local bucket"
