"""The IR metrics agree with sentence-transformers' InformationRetrievalEvaluator and LlamaIndex's
retrieval metrics where their definitions agree, and differ by the stated relation where they do not."""

from __future__ import annotations

import json
import math
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from llama_index_lancedb_tuning.config import METRICS, FinetuneConfig, RunConfig, SearchConfig
from llama_index_lancedb_tuning.data.qa_dataset import QADataset
from llama_index_lancedb_tuning.errors import TuningError
from llama_index_lancedb_tuning.evaluation.ir_metrics import first_ranks, per_query_scores, query_scores
from llama_index_lancedb_tuning.evaluation.metrics import EvalResult
from llama_index_lancedb_tuning.evaluation.report import comparison_table

K = 5
# (results as (document, score), best first; relevant documents). Tied scores are in ascending id
# order, the order sentence-transformers breaks ties in, so both rank the same list.
CASES = {
    "first": ([("d1", 0.9), ("d2", 0.8), ("d3", 0.7)], {"d1"}),
    "ties": ([("d1", 0.9), ("d2", 0.5), ("d3", 0.5), ("d4", 0.5), ("d5", 0.1)], {"d3", "d5"}),
    "miss": ([("x1", 0.9), ("x2", 0.8), ("x3", 0.7), ("x4", 0.6), ("x5", 0.5)], {"d1"}),
    "duplicates": ([("d2", 0.9), ("d2", 0.8), ("d1", 0.7), ("d1", 0.6), ("d5", 0.5)], {"d1", "d5"}),
    "several relevant": ([("d1", 0.9), ("x", 0.8), ("d2", 0.7), ("d3", 0.6), ("y", 0.5)], {"d1", "d2", "d3", "d4"}),
    "more relevant than k": ([("r2", 0.9), ("x", 0.8), ("r5", 0.7), ("r1", 0.6), ("y", 0.5)], {f"r{i}" for i in range(1, 8)}),
    "deeper than k": ([("x", 0.9), ("y", 0.8), ("z", 0.7), ("w", 0.6), ("v", 0.5), ("d1", 0.4)], {"d1"}),
}
ST_KEYS = {
    "hit_rate": "accuracy@k",
    "mrr": "mrr@k",
    "ndcg": "ndcg@k",
    "recall": "recall@k",
    "precision": "precision@k",
    "map": "map@k",
}


def _ours(name: str) -> dict[str, float]:
    results, relevant = CASES[name]
    return query_scores([doc for doc, _ in results], dict.fromkeys(relevant, 1), K)


def _reduced(results: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Our rule spelled for a library that counts every result: a document's later results become misses."""
    seen: set[str] = set()
    out = []
    for rank, (doc, score) in enumerate(results, start=1):
        out.append((doc if doc not in seen else f"repeat-{rank}", score))
        seen.add(doc)
    return out


def _sentence_transformers(names: list[str]) -> dict[str, float]:
    from sentence_transformers.evaluation import InformationRetrievalEvaluator

    queries = {name: name for name in names}
    relevant = {name: CASES[name][1] for name in names}
    corpus = {doc: doc for name in names for doc, _ in _reduced(CASES[name][0])} | {d: d for r in relevant.values() for d in r}
    at_k = [K]
    evaluator = InformationRetrievalEvaluator(
        queries, corpus, relevant, accuracy_at_k=at_k, precision_recall_at_k=at_k, mrr_at_k=at_k, ndcg_at_k=at_k, map_at_k=at_k
    )
    lists = [[{"corpus_id": doc, "score": score} for doc, score in _reduced(CASES[name][0])] for name in names]
    got = evaluator.compute_metrics(lists)
    return {ours: float(got[theirs][K]) for ours, theirs in ST_KEYS.items()}


@pytest.mark.parametrize("name", list(CASES))
def test_each_query_agrees_with_sentence_transformers(name):
    theirs = _sentence_transformers([name])
    ours = _ours(name)
    for metric in METRICS:
        assert ours[metric] == pytest.approx(theirs[metric], abs=1e-6), metric


def test_the_means_agree_with_sentence_transformers():
    names = list(CASES)
    theirs = _sentence_transformers(names)
    ranked = [[doc for doc, _ in CASES[n][0]] for n in names]
    ours = per_query_scores(ranked, [dict.fromkeys(CASES[n][1], 1) for n in names], K)
    for metric in METRICS:
        assert float(ours[metric].mean()) == pytest.approx(theirs[metric], abs=1e-6), metric
    row = EvalResult.from_scores(ours, "m", "vector", None, 0.0)
    assert row.ndcg == round(theirs["ndcg"], 4) and row.map == round(theirs["map"], 4)
    assert row.recall == round(theirs["recall"], 4) and row.precision == round(theirs["precision"], 4)
    assert row.intervals["hit_rate"] == row.ci95 and set(row.intervals) == set(METRICS)
    for metric in METRICS:
        low, high = row.intervals[metric]
        assert low <= row.mean(metric) <= high
        assert row.per_query_metrics[metric] == ours[metric].tolist()


def test_the_list_order_is_the_ranking_where_sentence_transformers_reorders_ties_by_id():
    # Tied d3 before d2: sentence-transformers puts d2 first (ascending id); we keep the retriever's order.
    from sentence_transformers.evaluation import InformationRetrievalEvaluator

    evaluator = InformationRetrievalEvaluator({"q": "q"}, {"d2": "", "d3": ""}, {"q": {"d3"}}, mrr_at_k=[K])
    tied = [{"corpus_id": "d3", "score": 0.5}, {"corpus_id": "d2", "score": 0.5}]
    assert evaluator.compute_metrics([tied])["mrr@k"][K] == 0.5
    assert query_scores(["d3", "d2"], {"d3": 1}, K)["mrr"] == 1.0
    by_rank = [{"corpus_id": d["corpus_id"], "score": -rank} for rank, d in enumerate(tied)]
    assert evaluator.compute_metrics([by_rank])["mrr@k"][K] == 1.0


@pytest.mark.parametrize("name", [n for n in CASES if n != "deeper than k"])
def test_each_query_against_llamaindex_metrics(name):
    from llama_index.core.evaluation.retrieval.metrics import MRR, NDCG, AveragePrecision, HitRate, Precision, Recall

    results, relevant = CASES[name]
    retrieved = [doc for doc, _ in results][:K]  # the node sources, a retriever's top k
    reduced = [doc for doc, _ in _reduced(results)][:K]
    expected = sorted(relevant)
    ours = _ours(name)

    def score(metric, ids):
        return metric.compute(expected_ids=expected, retrieved_ids=ids).score

    # The same definitions: any hit, the first relevant rank, and recall over the distinct documents.
    assert ours["hit_rate"] == score(HitRate(), retrieved)
    assert ours["mrr"] == pytest.approx(score(MRR(), retrieved), abs=1e-6)
    assert ours["recall"] == pytest.approx(score(Recall(), retrieved), abs=1e-6)
    # LlamaIndex's precision divides by the distinct documents retrieved, ours by k.
    assert ours["precision"] == pytest.approx(score(Precision(), retrieved) * len(set(retrieved)) / K, abs=1e-6)
    # Its AP divides by every relevant document, ours by min(k, relevant), as sentence-transformers' map@k.
    cut = min(K, len(relevant))
    assert ours["map"] == pytest.approx(score(AveragePrecision(), reduced) * len(relevant) / cut, abs=1e-6)
    # Its nDCG (linear gain, binary) takes the ideal DCG over every relevant document, ours over the first k of them.
    ideal_all, ideal_k = (sum(1 / math.log2(i + 1) for i in range(1, n + 1)) for n in (len(relevant), cut))
    assert ours["ndcg"] == pytest.approx(score(NDCG(mode="linear"), reduced) * ideal_all / ideal_k, abs=1e-6)
    if len(relevant) <= K:
        assert ours["ndcg"] == pytest.approx(score(NDCG(), reduced), abs=1e-6)
        assert ours["map"] == pytest.approx(score(AveragePrecision(), reduced), abs=1e-6)


def test_a_document_counts_once_at_the_rank_of_its_first_result():
    assert first_ranks(["d2", "d2", "d1", "d1", "d5", "d9"], K) == {"d2": 1, "d1": 3, "d5": 5}
    scores = query_scores(["d1", "d1", "d1"], {"d1": 1, "d2": 1}, K)
    assert scores["recall"] == 0.5 and scores["precision"] == 1 / K and scores["map"] == 0.5
    # LlamaIndex's AP and nDCG credit each repeat of a relevant document again.
    from llama_index.core.evaluation.retrieval.metrics import NDCG

    assert NDCG().compute(expected_ids=["d1", "d2"], retrieved_ids=["d1", "d1", "d1"]).score > scores["ndcg"]


def test_graded_ndcg_by_hand():
    grades = {"a": 3, "b": 1, "z": 2, "n": 0}  # n: judged, not relevant
    scores = query_scores(["x", "b", "a", "n"], grades, 3)
    dcg = 1 / math.log2(3) + 3 / math.log2(4)
    ideal = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    assert scores["ndcg"] == pytest.approx(dcg / ideal, abs=1e-9)
    assert scores["ndcg"] == pytest.approx(0.4474995, abs=1e-6)
    # The other metrics count the three grades above 0 as relevant, whatever their size.
    assert scores["recall"] == pytest.approx(2 / 3) and scores["precision"] == pytest.approx(2 / 3)
    assert scores["map"] == pytest.approx((1 / 2 + 2 / 3) / 3) and scores["mrr"] == 0.5
    # The ideal ordering puts the highest grade first: a list in that order scores 1.
    assert query_scores(["a", "z", "b"], grades, 3)["ndcg"] == pytest.approx(1.0)
    # Cut at k: the ideal DCG counts only as many grades as k.
    assert query_scores(["a"], grades, 1)["ndcg"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least one relevant document"):
        query_scores(["a"], {"a": 0}, 3)


def test_graded_relevance_lives_in_the_dataset_and_survives_splits_and_json(tmp_path):
    queries = {f"q{i}": f"query {i}" for i in range(10)}
    corpus = {"a": "A", "b": "B", "c": "C"}
    relevant = {q: ["a", "b"] for q in queries}
    graded = QADataset(queries, corpus, relevant, relevance_scores={"q0": {"a": 3, "c": 2}})
    assert graded.grades("q0") == {"a": 3, "b": 1, "c": 2} and graded.grades("q1") == {"a": 1, "b": 1}
    train, test = graded.split(0.2, 0)
    holder = train if "q0" in train.queries else test
    assert holder.relevance_scores == {"q0": {"a": 3, "c": 2}}
    assert (test if holder is train else train).relevance_scores == {}
    graded.save_json(tmp_path / "graded.json")
    assert QADataset.from_json(tmp_path / "graded.json").relevance_scores == graded.relevance_scores
    plain = QADataset(queries, corpus, relevant)
    plain.save_json(tmp_path / "plain.json")
    assert "relevance_scores" not in json.loads((tmp_path / "plain.json").read_text())
    assert plain.split(0.2, 0)[0].relevance_scores is None
    bad = {**graded.to_dict(), "relevance_scores": {"q0": {"a": "high"}}}
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    with pytest.raises(TuningError, match="query 'q0' grades 'a' 'high'"):
        QADataset.from_json(tmp_path / "bad.json")


def test_graded_scores_reach_the_rows(tmp_path):
    from llama_index.core.base.base_retriever import BaseRetriever
    from llama_index.core.schema import NodeRelationship, NodeWithScore, RelatedNodeInfo, TextNode

    from llama_index_lancedb_tuning import evaluate_retrievers

    def hit(doc):
        return NodeWithScore(node=TextNode(text=doc, relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=doc)}))

    class Fixed(BaseRetriever):
        def _retrieve(self, query_bundle):
            return [hit("b"), hit("a")]

    dataset = QADataset({"q": "q"}, {"a": "A", "b": "B"}, {"q": ["a", "b"]}, relevance_scores={"q": {"a": 3}})
    [row] = evaluate_retrievers({"vector": Fixed()}, dataset, k=2)
    expected = (1 + 3 / math.log2(3)) / (3 + 1 / math.log2(3))
    assert row.ndcg == round(expected, 4) and row.hit_rate == 1.0 and row.recall == 1.0 and row.precision == 1.0
    assert set(row.to_dict()) >= {"ndcg", "recall", "precision", "map", "hit_rate", "mrr", "intervals"}
    assert "per_query_metrics" not in row.to_dict() and "per_query" not in row.to_dict()


def _rows(model: str, ranks: list[int | None]) -> EvalResult:
    """A row of queries with one relevant document each, found at these ranks (None: missed)."""
    ranked = [["other"] * (rank - 1) + ["answer"] if rank else ["other"] for rank in ranks]
    return EvalResult.from_scores(per_query_scores(ranked, [{"answer": 1}] * len(ranks), K), model, "hybrid", None, 0.0)


def test_report_md_shows_the_metrics_asked_for_and_report_json_has_them_all(tmp_path):
    from llama_index_lancedb_tuning.tuning.run_directory import write_report

    rows = [_rows("baseline", [1, 2, None, 3]), _rows("tuned", [1, 1, 2, None])]
    assert (
        "| Query type | reranker | n | baseline hit@5 [95% CI] | tuned hit@5 [95% CI] | baseline MRR@5 | tuned MRR@5 | baseline nDCG@5 | tuned nDCG@5 |"
        in (comparison_table(rows))
    )
    report = {"tuned_model": None, "base_model": "m", "dataset": {"n_test_queries": 4, "n_train_queries": 0}}
    report["results"] = [r.to_dict() for r in rows]
    write_report(tmp_path, report, rows, K, RunConfig(metrics="map,recall").metrics)
    head = (tmp_path / "report.md").read_text().split("| Query type")[1].splitlines()[0]
    assert (
        head
        == " | reranker | n | baseline MAP@5 | tuned MAP@5 | baseline recall@5 | tuned recall@5 | Δ hit | p (McNemar) | verdict |"
    )
    assert (
        f"| {rows[0].map:.3f} | {rows[1].map:.3f} | {rows[0].recall:.3f} | {rows[1].recall:.3f} |"
        in (tmp_path / "report.md").read_text()
    )
    saved = json.loads((tmp_path / "report.json").read_text())["results"]
    assert all({"ndcg", "recall", "precision", "map"} <= set(r) for r in saved)
    # A row without a figure (read from an older run directory) shows a dash, not a number.
    old = EvalResult("baseline", "hybrid", None, 0.5, 0.4, (0.2, 0.8), 4, 1.0)
    assert "| — |" in comparison_table([old], K, ("ndcg",))


def test_a_bad_metrics_name_is_one_line_before_torch_loads(tmp_path):
    import subprocess

    (tmp_path / "qa.csv").write_text("query,context\nwhat?,that\n")
    code = (
        "import sys; from llama_index_lancedb_tuning.cli import main; code = main(sys.argv[1:]); "
        "sys.exit(99 if 'torch' in sys.modules else code)"
    )
    argv = ["evaluate", str(tmp_path / "qa.csv"), "--out", str(tmp_path / "out"), "--metrics", "ndcg,bleu"]
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, check=False)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "lancedb-tune: error: unknown --metrics 'bleu'; use a comma list of hit_rate, mrr, ndcg, recall, precision, map"
    ]
    assert not (tmp_path / "out").exists()


def test_gate_metric_ndcg_decides_the_verdict():
    from llama_index_lancedb_tuning.pack import FinetunedLanceDBRetrieverPack
    from llama_index_lancedb_tuning.tuning.gate import Gate, judge
    from llama_index_lancedb_tuning.tuning.recipe import TuningRecipe
    from llama_index_lancedb_tuning.tuning.run_loop import _gate_verdict

    # Every query still found, but 8 of 10 a rank lower: hit rate ties, nDCG falls.
    serving, tuned = _rows("serving", [1] * 10), _rows("tuned", [2] * 8 + [1] * 2)
    assert judge(serving, tuned, K).promoted
    verdict = judge(serving, tuned, K, "ndcg")
    assert not verdict.promoted and verdict.p_value == round(2 / 2**8, 4)
    assert verdict.reason == (
        "not promoted: hybrid nDCG@5 on 10 validation queries 1.000 -> 0.705 (0 better, 8 worse; sign test p=0.008): "
        "significantly worse; the serving model stays"
    )
    assert verdict.figures()["metric"] == "ndcg" and verdict.figures()["tuned"]["ndcg"] == tuned.ndcg
    # The setting reaches the gate: from SearchConfig through the recipe, and from the pack's finetune.
    gate = TuningRecipe("full", FinetuneConfig(), SearchConfig(gate_metric="ndcg")).gate()
    assert isinstance(gate, Gate) and gate.metric == "ndcg"
    scored = {"serving": serving, "tuned": tuned}
    assert not Gate(lambda index, queries: scored[index], K, gate.metric).verdict("serving", "tuned", None).promoted  # type: ignore[arg-type]
    pack = SimpleNamespace(reranker_spec="fusion", hybrid_fusion="rrf")
    assert FinetunedLanceDBRetrieverPack._search(pack, K, "ndcg").gate_metric == "ndcg"  # type: ignore[arg-type]
    # A run without a gate judges its scored queries on the same metric.
    unvalidated = _gate_verdict(RunConfig(gate_metric="ndcg", gate=False), None, ([serving], [tuned]))
    assert not unvalidated.promoted and "hybrid nDCG@5 1.000 -> 0.705" in unvalidated.reason
    assert _gate_verdict(RunConfig(gate=False), None, ([serving], [tuned])).promoted
    # Hit rate keeps McNemar's test and its wording.
    gained = judge(_rows("serving", [None] * 4 + [1] * 6), _rows("tuned", [1] * 10), K)
    assert gained.reason == "promoted: hybrid hit@5 on 10 validation queries 0.600 -> 1.000 (+4 queries, McNemar p=0.125)"
    assert np.isclose(gained.p_value, 0.125)
