import numpy as np
from llama_index.core.schema import NodeRelationship, NodeWithScore, RelatedNodeInfo, TextNode

from llama_index_lancedb_tuning.evaluation.ir_metrics import per_query_scores
from llama_index_lancedb_tuning.evaluation.metrics import EvalResult, bootstrap_ci, mcnemar_p, ranked_sources, sign_test_p
from llama_index_lancedb_tuning.evaluation.report import comparison_plot, comparison_table


def _hit(doc):
    return NodeWithScore(
        node=TextNode(text="x", relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=doc)}), score=1.0
    )


def test_reciprocal_rank_counts_source_documents_and_empty_lists_are_misses():
    results = [[_hit("a"), _hit("b")], [_hit("c"), _hit("c"), _hit("b")], [], [_hit("z")] * 6 + [_hit("b")]]
    assert ranked_sources(results)[1] == ["c", "c", "b"]
    rr = per_query_scores(ranked_sources(results), [{"b": 1}] * 4, k=5)["mrr"]
    assert rr.tolist() == [0.5, 1 / 3, 0.0, 0.0]


def test_bootstrap_ci_brackets_the_mean():
    values = np.array([1.0] * 30 + [0.0] * 10)
    low, high = bootstrap_ci(values)
    assert low < 0.75 < high and 0.55 < low and high < 0.9


def test_mcnemar_exact():
    before = np.array([0] * 10 + [1] * 10)
    after = np.array([1] * 10 + [1] * 10)
    assert mcnemar_p(before, after) == 2 * 0.5**10
    assert mcnemar_p(before, before) == 1.0


def test_the_sign_test_is_mcnemar_on_hits_and_drops_ties():
    rng = np.random.default_rng(0)
    before, after = rng.integers(0, 2, 30).astype(float), rng.integers(0, 2, 30).astype(float)
    assert sign_test_p(before, after) == mcnemar_p(before, after)
    # 9 queries better, 1 worse, 5 tied: the ties carry no evidence either way.
    scores_before = np.array([0.2] * 9 + [0.9] + [0.5] * 5)
    scores_after = np.array([0.3] * 9 + [0.1] + [0.5] * 5)
    assert sign_test_p(scores_before, scores_after) == 2 * (1 + 10) / 2**10


def test_table_and_plot(tmp_path):
    rows = [
        EvalResult("baseline", "vector", None, 0.5, 0.4, (0.4, 0.6), 44, 1.0, per_query=[0.0, 1.0]),
        EvalResult("tuned", "vector", None, 0.75, 0.6, (0.6, 0.9), 44, 1.0, p_vs_baseline=0.03, per_query=[1.0, 1.0]),
    ]
    table = comparison_table(rows)
    assert "| Vector search | — | 44 | 0.500 [0.400, 0.600] | 0.750 [0.600, 0.900] |" in table
    assert "+0.250" in table
    png = comparison_plot(rows, tmp_path / "r.png")
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_any_retriever_with_retrieve_many_is_scored_batched():
    from llama_index.core.base.base_retriever import BaseRetriever

    from llama_index_lancedb_tuning import QADataset, evaluate_retrievers

    class DocRetriever(BaseRetriever):  # a user's own retriever: retrieve_many takes the queries only
        def _retrieve(self, query_bundle):
            return self.retrieve_many([query_bundle.query_str])[0]

        def retrieve_many(self, queries):
            return [[_hit("d1")] if "first" in q else [_hit("d3"), _hit("d2")] for q in queries]

    dataset = QADataset({"q1": "first", "q2": "second"}, {"d1": "a", "d2": "b", "d3": "c"}, {"q1": ["d1"], "q2": ["d2"]})
    [result] = evaluate_retrievers({"custom": DocRetriever()}, dataset, k=5)
    assert (result.hit_rate, result.mrr, result.n) == (1.0, 0.75, 2)
