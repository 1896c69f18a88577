import ast
import importlib.util
import sys
import time
import traceback

import numpy as np
import pytest
from cohere_server import CohereServer, rank_documents  # tests/ is on sys.path under pytest's default import mode
from llama_index.core.evaluation import RetrieverEvaluator
from llama_index.core.llms import MockLLM
from llama_index.core.schema import MetadataMode, TextNode

from llama_index_lancedb_tuning import QADataset, TuningError, evaluate_retriever
from llama_index_lancedb_tuning.config import RERANK_OVERFETCH
from llama_index_lancedb_tuning.data.chunking import SOURCE_ID_KEY
from llama_index_lancedb_tuning.encoding.embed_models import embed_queries, embed_texts
from llama_index_lancedb_tuning.pack import BaseLlamaPack, FinetunedLanceDBRetrieverPack, write_pack_source
from llama_index_lancedb_tuning.search.cohere_rerank import COHERE_MODEL, cohere_reranker

TYPES = ("vector", "fts", "reranked_vector", "reranked_fts", "hybrid")
SECRET = "sk-test-NEVER-PRINT-7f3a9c"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def built(tmp_path_factory, small_nodes, embed_model):
    uri = str(tmp_path_factory.mktemp("packdb"))
    pack = FinetunedLanceDBRetrieverPack(nodes=small_nodes, embed_model=embed_model, uri=uri, table_name="t", similarity_top_k=5)
    return pack, uri


@pytest.fixture(scope="module")
def cohere_server():
    with CohereServer() as server:
        yield server


def _reopen(uri, embed_model, **kwargs):
    return FinetunedLanceDBRetrieverPack.from_table(uri=uri, table_name="t", embed_model=embed_model, **kwargs)


def test_modules_and_base_class(built):
    pack, _ = built
    modules = pack.get_modules()
    assert {"vector_store", "index", "embed_model", "retrievers", "reranker", "query_engine"} <= set(modules)
    assert set(modules["retrievers"]) == set(TYPES)
    assert modules["retriever"] is modules["retrievers"]["hybrid"]  # query_type defaults to hybrid
    assert isinstance(pack, BaseLlamaPack)
    try:  # llama-index-core <= 0.14.20: the pack must be a real LlamaIndex pack
        from llama_index.core.llama_pack import BaseLlamaPack as Upstream
    except ImportError:
        assert callable(BaseLlamaPack.get_modules) and callable(BaseLlamaPack.run)
    else:
        assert issubclass(FinetunedLanceDBRetrieverPack, Upstream)


def test_five_retrievers_return_real_scores(built, small_dataset, embed_model):
    pack, _ = built
    query = small_dataset.queries[small_dataset.query_ids[3]]
    hits = {qt: pack.retrievers[qt].retrieve(query) for qt in TYPES}
    for qt, found in hits.items():
        assert 0 < len(found) <= 5, qt
        assert all(h.score is not None and np.isfinite(h.score) and h.score > 0 for h in found), qt
        assert [h.score for h in found] == sorted((h.score for h in found), reverse=True), qt
    q = embed_queries(embed_model, [query])[0]
    cosine = embed_texts(embed_model, [h.node.text for h in hits["vector"]]) @ q
    np.testing.assert_allclose([h.score for h in hits["vector"]], cosine, atol=1e-4)
    table = pack.get_modules()["table"]
    bm25 = {
        r["id"]: r["_score"]
        for r in table.search(query, query_type="fts", fts_columns="text").select(["id", "_score"]).limit(5).to_list()
    }
    assert [h.node.node_id for h in hits["fts"]] == list(bm25)
    np.testing.assert_allclose([h.score for h in hits["fts"]], list(bm25.values()), rtol=1e-6)
    assert hits["fts"][0].score > 1.0  # BM25, not a 1..0 rank placeholder


def test_hit_rates_equal_llamaindex_retriever_evaluator(built, small_dataset, small_nodes):
    pack, _ = built
    for qt in TYPES:
        # Reranked types cost more per query: fewer queries keep the test quick on a busy machine.
        data = small_dataset.subset(small_dataset.query_ids[: 8 if qt.startswith("reranked") else 20])
        retriever = pack.retrievers[qt]
        ours = evaluate_retriever(retriever, data, k=pack.similarity_top_k, query_type=qt)
        evaluator = RetrieverEvaluator.from_metric_names(["hit_rate", "mrr"], retriever=retriever)
        for qid, rr in zip(data.query_ids, ours.per_query):
            relevant = set(data.relevant_docs[qid])
            expected = [n.node_id for n in small_nodes if n.metadata[SOURCE_ID_KEY] in relevant]
            result = evaluator.evaluate(data.queries[qid], expected_ids=expected)
            assert len(result.retrieved_ids) <= pack.similarity_top_k
            assert result.metric_vals_dict["hit_rate"] == float(rr > 0), (qt, qid)
            assert result.metric_vals_dict["mrr"] == pytest.approx(rr), (qt, qid)


def test_reopen_gives_identical_results_without_reembedding(built, small_dataset, embed_model, monkeypatch):
    pack, uri = built
    table = pack.get_modules()["table"]
    version, rows = table.version, table.count_rows()
    import llama_index_lancedb_tuning.search.index as index_module
    import llama_index_lancedb_tuning.store.table as store_module

    def no_embedding(*args, **kwargs):
        raise AssertionError("reopening must not embed passages")

    monkeypatch.setattr(store_module, "embed_texts", no_embedding)
    monkeypatch.setattr(index_module, "append_nodes", no_embedding)
    reopened = _reopen(uri, embed_model, reranker=None)  # reranked types use FusionRerank, which embeds candidates
    monkeypatch.undo()
    for i, qid in enumerate(small_dataset.query_ids[:3]):
        q = small_dataset.queries[qid]
        for qt in TYPES if i == 0 else ("vector", "fts", "hybrid"):
            a = [(h.node.node_id, round(h.score, 5)) for h in pack.retrievers[qt].retrieve(q)]
            b = [(h.node.node_id, round(h.score, 5)) for h in reopened.retrievers[qt].retrieve(q)]
            assert a == b, qt
    assert (table.version, table.count_rows()) == (version, rows)


def test_default_mode_leaves_an_existing_table_intact(built, small_nodes, embed_model):
    pack, uri = built
    table = pack.get_modules()["table"]
    ids = sorted(table.to_arrow()["id"].to_pylist())
    with pytest.raises(TuningError, match="already exists.*mode='append'.*mode='overwrite'"):
        FinetunedLanceDBRetrieverPack(nodes=small_nodes[:2], embed_model=embed_model, uri=uri, table_name="t")
    table.checkout_latest()
    assert sorted(table.to_arrow()["id"].to_pylist()) == ids


def test_append_keeps_fulltext_current(tmp_path, small_nodes, embed_model):
    pack = FinetunedLanceDBRetrieverPack(
        nodes=small_nodes[:3], embed_model=embed_model, uri=str(tmp_path), table_name="t", query_type="fts"
    )
    pack.add(nodes=[TextNode(text="Zanzibar pangolins migrate at dusk.")])
    assert pack.run("pangolins Zanzibar")[0].node.text == "Zanzibar pangolins migrate at dusk."
    later = FinetunedLanceDBRetrieverPack(
        nodes=[TextNode(text="Quokkas photobomb tourists on Rottnest.")],
        embed_model=embed_model,
        uri=str(tmp_path),
        table_name="t",
        mode="append",
    )
    assert later.get_modules()["table"].count_rows() == 5
    assert later.retrievers["fts"].retrieve("quokkas Rottnest")[0].node.text.startswith("Quokkas")


def test_other_dimension_is_a_clear_error(built):
    from llama_index.core.embeddings import MockEmbedding

    _, uri = built
    with pytest.raises(TuningError, match="384-dim vectors but the model makes 8-dim"):
        _reopen(uri, MockEmbedding(embed_dim=8))


def test_run_without_llm_returns_nodes_and_engine_answers_with_them(built, small_dataset):
    pack, _ = built
    query = small_dataset.queries[small_dataset.query_ids[0]]
    nodes = pack.run(query)
    assert isinstance(nodes, list) and 0 < len(nodes) <= 5 and all(n.score is not None for n in nodes)
    response = pack.query_engine.query(query)
    assert [n.node.node_id for n in response.source_nodes] == [n.node.node_id for n in nodes]


def test_query_engine_with_an_llm(built, small_dataset, embed_model):
    _, uri = built
    pack = _reopen(uri, embed_model, llm=MockLLM(max_tokens=8), query_type="vector")
    query = small_dataset.queries[small_dataset.query_ids[0]]
    response = pack.query_engine.query(query)
    assert str(response).strip() and len(response.source_nodes) == 5
    assert str(pack.run(query)) == str(response)


def test_download_pack_copy_imports_and_runs(tmp_path, small_nodes, embed_model, small_dataset):
    dest = write_pack_source(tmp_path / "my_pack")
    source = (dest / "base.py").read_text()
    assert "from llama_index_lancedb_tuning.search.index import" in source
    assert not [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.ImportFrom) and n.level]
    spec = importlib.util.spec_from_file_location("my_pack_copy", dest / "__init__.py", submodule_search_locations=[str(dest)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["my_pack_copy"] = module
    try:
        spec.loader.exec_module(module)
        copy_cls = module.FinetunedLanceDBRetrieverPack
        assert copy_cls is not FinetunedLanceDBRetrieverPack and copy_cls.__module__ == "my_pack_copy.base"
        pack = copy_cls(
            nodes=small_nodes[:8], embed_model=embed_model, uri=str(tmp_path / "db"), table_name="t", query_type="vector"
        )
        hits = pack.run(small_dataset.corpus[small_nodes[0].metadata[SOURCE_ID_KEY]][:200])
        assert hits and hits[0].node.node_id == small_nodes[0].node_id
    finally:
        for name in [m for m in sys.modules if m == "my_pack_copy" or m.startswith("my_pack_copy.")]:
            del sys.modules[name]
    with pytest.raises(TuningError, match="not empty.*overwrite"):
        write_pack_source(dest)
    (dest / "notes.txt").write_text("mine")
    write_pack_source(dest, overwrite=True)
    assert (dest / "notes.txt").read_text() == "mine"


# --- Cohere, through the real SDK against a local server --------------------------------


def _key_absent(exc: BaseException) -> bool:
    return SECRET not in "".join(traceback.format_exception(exc)) and SECRET not in repr(exc)


def test_cohere_pack_returns_nodes_in_the_servers_order(built, embed_model, cohere_server, monkeypatch, small_dataset):
    _, uri = built
    monkeypatch.setenv("COHERE_API_KEY", SECRET)
    monkeypatch.setenv("CO_API_URL", cohere_server.url)
    pack = _reopen(uri, embed_model, reranker="cohere", query_type="reranked_vector")
    query = small_dataset.queries[small_dataset.query_ids[5]]
    hits = pack.run(query)
    request = cohere_server.requests[-1]
    assert request["path"] == "/v2/rerank" and request["headers"]["Authorization"] == f"Bearer {SECRET}"
    assert (
        request["body"]["model"] == COHERE_MODEL
        and request["body"]["top_n"] == 5
        and len(request["body"]["documents"]) == 5 * RERANK_OVERFETCH
    )
    expected = rank_documents(query, request["body"]["documents"], 5)
    assert [h.node.get_content(metadata_mode=MetadataMode.EMBED) for h in hits] == [
        request["body"]["documents"][r["index"]] for r in expected
    ]
    assert [h.score for h in hits] == [r["relevance_score"] for r in expected]
    assert pack.retrievers["reranked_fts"].retrieve(query)


def test_cohere_errors_are_retried_then_clear(built, embed_model, cohere_server):
    _, uri = built
    reranker = cohere_reranker(5, api_key=SECRET, base_url=cohere_server.url, timeout=5, max_retries=2, backoff=0.01)
    pack = _reopen(uri, embed_model, reranker=reranker, query_type="reranked_vector")
    before = len(cohere_server.requests)
    cohere_server.script(("error", 429))
    assert len(pack.run("revenue growth")) == 5  # one retry, then the normal reply
    assert len(cohere_server.requests) == before + 2
    cohere_server.script(("error", 500), ("error", 500), ("error", 500))
    with pytest.raises(TuningError, match=r"HTTP 500 after 3 attempts") as err:
        pack.run("revenue growth")
    assert len(cohere_server.requests) == before + 5
    assert _key_absent(err.value) and "***" in str(err.value)  # the server echoed the key; we redacted it
    cohere_server.script(("error", 401))
    with pytest.raises(TuningError, match="HTTP 401.*COHERE_API_KEY") as err:
        pack.run("revenue growth")
    assert _key_absent(err.value)


def test_cohere_slow_reply_times_out(built, embed_model, cohere_server):
    _, uri = built
    reranker = cohere_reranker(5, api_key=SECRET, base_url=cohere_server.url, timeout=0.5, max_retries=2, backoff=0.01)
    pack = _reopen(uri, embed_model, reranker=reranker, query_type="reranked_vector")
    cohere_server.script(("slow", 30))
    start = time.perf_counter()
    with pytest.raises(TuningError, match=r"timed out after 0.5s") as err:
        pack.run("revenue growth")
    assert time.perf_counter() - start < 5
    assert _key_absent(err.value)


def test_cohere_needs_a_key(monkeypatch, embed_model):
    monkeypatch.delenv("COHERE_API_KEY", raising=False)
    monkeypatch.delenv("CO_API_KEY", raising=False)
    with pytest.raises(TuningError, match="COHERE_API_KEY"):
        cohere_reranker(5)


def test_documents_are_respaced_before_indexing_unless_kept(tmp_path, embed_model):
    from llama_index.core import Document

    documents = [
        Document(text="Wehaveimplementedaqualityassuranceprocess for every annotation batch.", doc_id="qa"),
        Document(text="Reward models score helpfulness and safety separately.", doc_id="rm"),
    ]
    fixed = FinetunedLanceDBRetrieverPack(
        documents=documents, embed_model=embed_model, uri=str(tmp_path), table_name="fixed", query_type="fts"
    )
    hits = fixed.run("quality assurance")
    assert hits and hits[0].node.metadata[SOURCE_ID_KEY] == "qa"
    assert hits[0].node.text.startswith("We have implemented a quality assurance process")
    kept = FinetunedLanceDBRetrieverPack(
        documents=documents,
        embed_model=embed_model,
        uri=str(tmp_path),
        table_name="kept",
        query_type="fts",
        fix_glued_words=False,
    )
    assert kept.run("quality assurance") == []  # one glued term: BM25 cannot see the words inside it


def test_evaluate_refuses_labels_that_point_at_no_document_of_the_table(built, small_dataset):
    pack, _ = built
    stray = QADataset(
        dict(small_dataset.queries),
        {f"other-{d}": t for d, t in small_dataset.corpus.items()},
        {q: [f"other-{d}" for d in docs] for q, docs in small_dataset.relevant_docs.items()},
    )
    with pytest.raises(TuningError, match=r"point at no document of table 't'"):
        pack.evaluate(stray)


def test_evaluate_refuses_a_k_beyond_the_tables_documents(built, small_dataset):
    pack, _ = built
    n_docs = len(small_dataset.corpus)
    with pytest.raises(TuningError, match=rf"k=1000 is larger than the corpus \({n_docs} documents\).*pass k={n_docs} or less"):
        pack.evaluate(small_dataset, k=1000)
