import numpy as np
import pytest
from lancedb.table import AsyncTable
from llama_index.core.schema import TextNode

from llama_index_lancedb_tuning import LanceDBIndex, TuningError, evaluate_retriever, hybrid_reranker, node_reranker
from llama_index_lancedb_tuning.encoding.embed_models import embed_queries, embed_texts


@pytest.fixture(scope="module")
def built(tmp_path_factory, small_nodes, embed_model):
    uri = str(tmp_path_factory.mktemp("lancedb"))
    return LanceDBIndex.build(small_nodes, embed_model, uri=uri, table_name="t", show_progress=False), uri


def test_vector_scores_are_cosine_similarities(built, small_dataset, embed_model):
    index, _ = built
    query = small_dataset.queries[small_dataset.query_ids[0]]
    hits = index.retriever("vector", 5).retrieve(query)
    assert len(hits) == 5
    q = embed_queries(embed_model, [query])[0]
    expected = embed_texts(embed_model, [h.node.text for h in hits]) @ q
    np.testing.assert_allclose([h.score for h in hits], expected, atol=1e-4)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_fts_scores_come_from_bm25_and_no_match_is_empty(built):
    index, _ = built
    hits = index.retriever("fts", 5).retrieve("reinforcement learning human feedback reward model")
    assert hits and all(h.score > 1.0 for h in hits)  # BM25 scores, not 1..0 rank placeholders
    assert len({round(h.score, 4) for h in hits}) > 1
    assert index.retriever("fts", 5).retrieve("qqqzzzxxy") == []


def test_hybrid_and_reranked_retrievers_return_k_scored_nodes(built, small_dataset):
    index, _ = built
    reranker = node_reranker("fusion", 5, index.embed_model, index.table)
    retrievers = index.retrievers(5, reranker, hybrid_reranker("rrf"))
    assert set(retrievers) == {"vector", "fts", "reranked_vector", "reranked_fts", "hybrid"}
    query = small_dataset.queries[small_dataset.query_ids[1]]
    for name, retriever in retrievers.items():
        hits = retriever.retrieve(query)
        assert 0 < len(hits) <= 5, name
        assert all(h.score is not None and h.score > 0 for h in hits), name


def test_batched_retrieval_matches_one_query_at_a_time(built, small_dataset):
    index, _ = built
    reranker = node_reranker("fusion", 5, index.embed_model, index.table)
    queries = [small_dataset.queries[q] for q in small_dataset.query_ids[:6]] + ["  ", "qqqzzzxxy"]
    for name, retriever in index.retrievers(5, reranker, hybrid_reranker("rrf")).items():
        batched = retriever.retrieve_many(queries, batch_size=4)  # several search batches, one partial
        looped = [retriever.retrieve(q) if q.strip() else [] for q in queries]
        assert [[h.node.node_id for h in hits] for hits in batched] == [[h.node.node_id for h in hits] for hits in looped], name
        for got, want in zip(batched, looped):
            np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-4, err_msg=name)
    assert index.retriever("vector", 5).retrieve_many(queries)[-2] == []


def _same_up_to_ties(got, want, name):
    """Same scores in the same order; ids may swap only among equal scores (LanceDB orders ties by limit)."""
    np.testing.assert_allclose([h.score for h in got], [h.score for h in want], atol=1e-4, err_msg=name)
    groups = {}
    for g, w in zip(got, want):
        key = round(w.score, 3)
        a, b = groups.setdefault(key, (set(), set()))
        a.add(g.node.node_id), b.add(w.node.node_id)
    tied_at_cut = round(want[-1].score, 3) if want else None
    for key, (a, b) in groups.items():
        assert a == b or key == tied_at_cut, name  # a tie cut by k may keep either row


def test_shared_search_serves_every_query_type_with_lancedb_own_results(built, small_dataset):
    from llama_index_lancedb_tuning.search.shared_search import SharedSearch

    index, _ = built
    reranker = node_reranker("fusion", 5, index.embed_model, index.table)
    retrievers = index.retrievers(5, reranker, hybrid_reranker("rrf"))
    queries = [small_dataset.queries[q] for q in small_dataset.query_ids[:12]] + ["  ", "qqqzzzxxy"]
    vectors = embed_queries(index.embed_model, queries)
    alone = {name: r.retrieve_many(queries, vectors=vectors) for name, r in retrievers.items()}

    shared = SharedSearch(index.table, index.embed_model)
    lookups = []
    known_bm25 = shared.bm25
    shared.bm25 = lambda q, ids: lookups.append(q) or known_bm25(q, ids)
    searches = []
    async_query = AsyncTable.query  # every LanceDB query, the sync builders' included, starts here
    AsyncTable.query = lambda self: searches.append(1) or async_query(self)
    try:
        shared.prefetch(queries, vectors, vector_limit=20, fts_limit=20)  # the reranked types' 4 × k
        prefetch_searches = len(searches)
        together = {name: r.retrieve_many(queries, vectors=vectors, search=shared) for name, r in retrievers.items()}
    finally:
        AsyncTable.query = async_query
    # One batched vector search, one full-text search per non-blank query, one fetch of missing rows; none after.
    assert prefetch_searches == 1 + 13 + 1 and len(searches) == prefetch_searches
    # Both reranked types asked the shared search for BM25 scores (the no-match query has no full-text
    # candidates to rerank) and found them there: no table search ran after the prefetch.
    assert len(lookups) == 13 + 12
    for name in retrievers:
        for got, want in zip(together[name], alone[name]):
            _same_up_to_ties(got, want, name)
    assert together["vector"][12] == [] and together["fts"][13] == []


def test_full_text_queries_awaited_together_give_each_query_own_results(built, small_dataset):
    from llama_index_lancedb_tuning.search.shared_search import full_text_many
    from llama_index_lancedb_tuning.store.table import fts_ids

    index, _ = built
    queries = [small_dataset.queries[q] for q in small_dataset.query_ids[:12]] + ["qqqzzzxxy"]
    together = full_text_many(index.table, queries, 50)
    assert together == [fts_ids(index.table, q, 50) for q in queries]
    assert together[-1] == [] and all(together[:-1])


def test_evaluation_shares_searches_without_any_global_state(built, small_dataset):
    from llama_index_lancedb_tuning import evaluate_retriever, evaluate_retrievers

    index, _ = built
    reranker = node_reranker("fusion", 5, index.embed_model, index.table)
    retrievers = index.retrievers(5, reranker, hybrid_reranker("rrf"))
    together = evaluate_retrievers(retrievers, small_dataset, 5)
    for row in together:
        alone = evaluate_retriever(retrievers[row.query_type], small_dataset, 5, query_type=row.query_type)
        assert row.per_query == alone.per_query, row.query_type
        assert row.latency_ms > 0, row.query_type  # a shared search's cost is counted, not hidden
    import importlib
    import pkgutil
    import weakref

    import llama_index_lancedb_tuning as package

    containers = (dict, list, set, weakref.WeakKeyDictionary, weakref.WeakValueDictionary)
    for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
        module = importlib.import_module(info.name)
        # Module-level containers are constant lookup tables (UPPER_CASE), never state one caller leaves for another.
        state = [
            n
            for n, value in vars(module).items()
            if isinstance(value, containers) and not (n.lstrip("_").isupper() or n.startswith("__"))
        ]
        assert not state, (info.name, state)


def test_hybrid_fuses_deeper_legs_then_cuts_to_k(built, small_dataset):
    index, _ = built
    rrf = hybrid_reranker("rrf", rrf_k=5)
    differs = 0
    for q in small_dataset.query_ids[:20]:
        query = small_dataset.queries[q]
        vector = [h.node.node_id for h in index.retriever("vector", 15).retrieve(query)]
        fts = [h.node.node_id for h in index.retriever("fts", 15).retrieve(query)]
        # Reciprocal rank fusion by hand over both top-15 lists, ranks from 1 as LanceDB counts them.
        fused: dict[str, float] = {}
        for ranked in (vector, fts):
            for rank, node_id in enumerate(ranked, start=1):
                fused[node_id] = fused.get(node_id, 0.0) + 1 / (rank + 5)
        hits = index.retriever("hybrid", 5, hybrid_reranker=rrf, hybrid_overfetch=3).retrieve(query)
        assert len(hits) == 5
        np.testing.assert_allclose([h.score for h in hits], sorted(fused.values(), reverse=True)[:5], atol=1e-6)
        assert all(abs(fused[h.node.node_id] - h.score) < 1e-6 for h in hits)
        shallow = index.retriever("hybrid", 5, hybrid_reranker=rrf, hybrid_overfetch=1).retrieve(query)
        differs += [h.node.node_id for h in shallow] != [h.node.node_id for h in hits]
    assert differs > 0  # the depth changes some rankings, so the test above tells the two apart


def test_hit_rates_on_real_data_are_in_the_expected_range(built, small_dataset):
    index, _ = built
    result = evaluate_retriever(index.retriever("vector", 5), small_dataset, 5)
    # 40 queries over 20 contexts: the untuned MiniLM finds most of them, not all.
    assert 0.6 <= result.hit_rate <= 0.98
    assert result.n == 40 and result.ci95[0] <= result.hit_rate <= result.ci95[1]
    batched = result.per_query
    looped = [
        evaluate_retriever(index.retriever("vector", 5), small_dataset.subset([q]), 5).per_query[0]
        for q in small_dataset.query_ids[:5]
    ]
    assert batched[:5] == looped


def test_existing_table_is_never_overwritten_by_default(built, small_nodes, embed_model):
    index, uri = built
    rows = index.table.count_rows()
    with pytest.raises(TuningError, match="already exists.*mode='append'.*mode='overwrite'"):
        LanceDBIndex.build(small_nodes[:3], embed_model, uri=uri, table_name="t", show_progress=False)
    assert index.table.count_rows() == rows


def test_reopen_gives_identical_results_without_reembedding(built, small_dataset, embed_model):
    index, uri = built
    reopened = LanceDBIndex.open(embed_model, uri=uri, table_name="t")
    for qid in small_dataset.query_ids[:5]:
        q = small_dataset.queries[qid]
        a = [(h.node.node_id, round(h.score, 5)) for h in index.retriever("hybrid", 5).retrieve(q)]
        b = [(h.node.node_id, round(h.score, 5)) for h in reopened.retriever("hybrid", 5).retrieve(q)]
        assert a == b


def test_append_keeps_fulltext_current_and_tolerates_new_metadata(tmp_path, small_nodes, embed_model):
    index = LanceDBIndex.build(small_nodes[:5], embed_model, uri=str(tmp_path), table_name="t", show_progress=False)
    extra = TextNode(text="Zanzibar pangolins migrate at dusk.", metadata={"brand_new_key": 1})  # no source relationship
    index.add([extra])
    hits = index.retriever("fts", 3).retrieve("pangolins Zanzibar")
    assert hits[0].node.text == extra.text and hits[0].node.metadata["brand_new_key"] == 1
    index.add(small_nodes[5:7])
    assert index.table.count_rows() == 8


def test_other_dimension_is_a_clear_error(built):
    from llama_index.core.embeddings import MockEmbedding

    _, uri = built
    with pytest.raises(TuningError, match="384-dim vectors but the model makes 8-dim"):
        LanceDBIndex.open(MockEmbedding(embed_dim=8), uri=uri, table_name="t")


def test_k_larger_than_corpus_returns_what_there_is(tmp_path, small_nodes, embed_model):
    index = LanceDBIndex.build(small_nodes[:3], embed_model, uri=str(tmp_path), table_name="t", show_progress=False)
    assert len(index.retriever("vector", 50).retrieve("llama")) == 3


def test_llamaindex_vector_store_reads_our_table(built, small_dataset):
    index, _ = built
    query = small_dataset.queries[small_dataset.query_ids[2]]
    ours = [h.node.node_id for h in index.retriever("vector", 5).retrieve(query)]
    theirs = [h.node.node_id for h in index.vector_store_index().as_retriever(similarity_top_k=5).retrieve(query)]
    assert ours == theirs
