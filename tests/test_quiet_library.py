"""A library is quiet: building a pack and querying it prints nothing, on stdout or stderr, at any log level."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import DATA_QA

ROOT = Path(__file__).resolve().parents[1]

APP = textwrap.dedent(
    """
    import logging, sys
    logging.basicConfig(level=logging.INFO)  # an app that logs INFO: sentence-transformers would show "Batches" bars
    import pandas as pd
    from llama_index.core import Document
    from llama_index_lancedb_tuning import FinetunedLanceDBRetrieverPack

    rows = pd.read_csv(sys.argv[1]).drop_duplicates("context").head(6)
    docs = [Document(text=t, doc_id=f"d{i}") for i, t in enumerate(rows["context"])]
    pack = FinetunedLanceDBRetrieverPack(documents=docs, uri=sys.argv[2], table_name="docs")
    for query_type, retriever in pack.get_modules()["retrievers"].items():
        for query in rows["query"]:
            assert retriever.retrieve(query), query_type
    assert pack.run("How was Llama 2-Chat made safer?")
    """
)


# As a user writes it: LlamaIndex's LanceDB store (so lancedb) imported before this package, no
# logging configured, documents read with SimpleDirectoryReader, every query type run.
PLAIN_APP = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import lancedb
    import pandas as pd
    from llama_index.core import SimpleDirectoryReader
    from llama_index.vector_stores.lancedb import LanceDBVectorStore
    from llama_index_lancedb_tuning import FinetunedLanceDBRetrieverPack

    rows = pd.read_csv(sys.argv[1]).drop_duplicates("context").head(6)
    folder = Path("docs")
    folder.mkdir()
    for i, text in enumerate(rows["context"]):
        (folder / f"d{i}.txt").write_text(text)
    docs = SimpleDirectoryReader(str(folder)).load_data()
    pack = FinetunedLanceDBRetrieverPack(documents=docs, uri=sys.argv[2], table_name="docs")
    for query_type, retriever in pack.get_modules()["retrievers"].items():
        for query in rows["query"][:3]:
            assert retriever.retrieve(query), query_type
    assert pack.run("How was Llama 2-Chat made safer?")
    print("ok")
    """
)


@pytest.fixture(scope="module")
def onnx_cache_dir(tmp_path_factory):
    """One ONNX export for this module's apps."""
    return tmp_path_factory.mktemp("onnx-cache")


def run_app(tmp_path, cache, *argv):
    return subprocess.run(
        [sys.executable, *argv],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={
            "PATH": "/usr/bin:/bin",
            "HF_HUB_OFFLINE": "1",
            "PYTHONPATH": str(ROOT),
            "HOME": str(tmp_path),
            "LANCEDB_TUNE_CACHE": str(cache),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        },
    )


def test_a_plain_app_that_imported_lancedb_first_prints_only_its_own_output(tmp_path, onnx_cache_dir):
    done = run_app(tmp_path, onnx_cache_dir, "-c", PLAIN_APP, str(DATA_QA), str(tmp_path / "lancedb"))
    assert done.returncode == 0, done.stderr[-3000:]
    # No LanceDB "WARN ... _score / _distance" lines, no INFO lines from any library.
    assert done.stderr == "", done.stderr[-3000:]
    assert done.stdout == "ok\n"


def test_the_pack_example_prints_no_logs(tmp_path, onnx_cache_dir):
    done = run_app(tmp_path, onnx_cache_dir, str(ROOT / "examples" / "pack_query_engines.py"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr == "", done.stderr[-3000:]
    assert not [line for line in done.stdout.splitlines() if " - INFO - " in line or "WARN" in line]


def test_building_and_querying_a_pack_prints_nothing(tmp_path, onnx_cache_dir):
    done = run_app(tmp_path, onnx_cache_dir, "-c", APP, str(DATA_QA), str(tmp_path / "lancedb"))
    assert done.returncode == 0, done.stderr[-3000:]
    # Our own loggers may speak at INFO in an app that asks for it; nothing else may print.
    noise = [line for line in (done.stdout + done.stderr).splitlines() if not line.startswith("INFO:llama_index_lancedb_tuning")]
    noise = [line for line in noise if not line.startswith("INFO:")]  # other libraries' INFO records the app asked for
    assert noise == [], "\n".join(noise[:20])


@pytest.mark.parametrize("fusion", ["rrf", "linear"])
def test_hybrid_legs_run_here_give_lancedbs_own_hybrid_answer(tmp_path, fusion, embed_model, small_nodes, small_dataset):
    from llama_index_lancedb_tuning import LanceDBIndex, hybrid_reranker
    from llama_index_lancedb_tuning.encoding.embed_models import embed_queries
    from llama_index_lancedb_tuning.store.table import RESULT_COLUMNS

    index = LanceDBIndex.build(small_nodes, embed_model, uri=str(tmp_path), table_name="t", show_progress=False)
    reranker = hybrid_reranker(fusion)
    retriever = index.retriever("hybrid", 4, hybrid_reranker=reranker)
    queries = [small_dataset.queries[q] for q in small_dataset.query_ids[:8]] + ["zebra quokka xylophone"]
    for query in queries:
        vector = embed_queries(embed_model, [query])[0]  # as the retriever embeds it: alone
        search = index.table.search(query_type="hybrid").vector(vector).text(query).distance_type("cosine")
        rows = search.rerank(reranker).select(list(RESULT_COLUMNS)).limit(retriever.search_depth).to_list()[:4]
        hits = retriever.retrieve(query)
        assert [h.node.node_id for h in hits] == [r["id"] for r in rows]
        assert [h.score for h in hits] == [r["_relevance_score"] for r in rows]
