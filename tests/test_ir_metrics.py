"""Our IR metrics agree with two peers on the same ranked lists: sentence-transformers'
`InformationRetrievalEvaluator` and LlamaIndex's retrieval metric classes, to 1e-6; and result rows,
report.md and the CLI carry them."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
from llama_index.core.evaluation.retrieval.metrics import MRR, NDCG, AveragePrecision, HitRate, Precision, Recall
from llama_index.core.schema import NodeRelationship, NodeWithScore, RelatedNodeInfo, TextNode
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

from llama_index_lancedb_tuning import QADataset
from llama_index_lancedb_tuning.config import METRIC_NAMES, SearchConfig
from llama_index_lancedb_tuning.errors import TuningError
from llama_index_lancedb_tuning.evaluation.evaluator import evaluate_retriever
from llama_index_lancedb_tuning.evaluation.ir_metrics import query_metrics, ranked_documents
from llama_index_lancedb_tuning.evaluation.report import comparison_table

K = 5
# (ranked documents, relevant documents): misses, a hit at the top, late hits, several relevant,
# (more relevant documents than k, where the peers' conventions part, has its own test).
CASES = {
    "q1": (["a", "b", "c", "d", "e"], {"c"}),
    "q2": (["b", "a", "f", "g", "h"], {"b", "g"}),
    "q3": (["x", "y", "z", "w", "v"], {"a"}),
    "q4": (["a", "c", "d", "b", "e"], {"a", "b", "c"}),
    "q5": (["e", "d", "c", "b", "a"], {"a", "b", "c", "d"}),
}


def _ours(case):
    documents, relevant = case
    return query_metrics(documents, dict.fromkeys(relevant, 1), K)


def test_means_agree_with_sentence_transformers_information_retrieval_evaluator():
    corpus = {d: d for d in "abcdefghxyzwv"}
    queries = {q: q for q in CASES}
    evaluator = InformationRetrievalEvaluator(
        queries,
        corpus,
        {q: relevant for q, (_, relevant) in CASES.items()},
        accuracy_at_k=[K],
        precision_recall_at_k=[K],
        mrr_at_k=[K],
        ndcg_at_k=[K],
        map_at_k=[K],
        show_progress_bar=False,
    )
    # Scores that sort into each ranked list; the evaluator re-sorts by score.
    results = [[{"corpus_id": d, "score": 1.0 - i / 10} for i, d in enumerate(documents)] for documents, _ in CASES.values()]
    theirs = evaluator.compute_metrics(results)
    ours = {name: np.mean([_ours(case)[name] for case in CASES.values()]) for name in METRIC_NAMES}
    pairs = {"hit_rate": "accuracy", "mrr": "mrr", "ndcg": "ndcg", "recall": "recall", "precision": "precision", "map": "map"}
    for name, peer in pairs.items():
        assert ours[name] == pytest.approx(theirs[f"{peer}@k"][K], abs=1e-6), name


def test_per_query_values_agree_with_llamaindex_metric_classes():
    peers = {"hit_rate": HitRate(), "mrr": MRR(), "ndcg": NDCG(), "recall": Recall(), "precision": Precision()}
    peers["map"] = AveragePrecision()
    for query, case in CASES.items():  # at most k relevant documents each: the peers' conventions agree
        documents, relevant = case
        ours = _ours(case)
        for name, metric in peers.items():
            theirs = metric.compute(expected_ids=sorted(relevant), retrieved_ids=documents).score
            assert ours[name] == pytest.approx(theirs, abs=1e-6), (query, name)


def test_with_more_relevant_documents_than_k_the_ideal_is_cut_at_k_as_beir_does():
    documents, relevant = ["a", "x", "b", "y", "c"], set("abcdefg")  # 7 relevant, k = 5
    ours = query_metrics(documents, dict.fromkeys(relevant, 1), K)
    llama = NDCG().compute(expected_ids=sorted(relevant), retrieved_ids=documents).score
    ideal_at_k = sum(1 / math.log2(r + 1) for r in range(1, K + 1))
    ideal_all = sum(1 / math.log2(r + 1) for r in range(1, len(relevant) + 1))
    assert ours["ndcg"] == pytest.approx(llama * ideal_all / ideal_at_k, abs=1e-9)  # LlamaIndex's ideal is not cut
    assert ours["map"] == pytest.approx((1 + 2 / 3 + 3 / 5) / K, abs=1e-9)  # divided by min(k, relevant)


def test_graded_ndcg_uses_the_grade_as_gain():
    documents = ["b", "a", "z", "c"]
    grades = {"a": 3, "b": 1, "c": 2}
    dcg = 1 / math.log2(2) + 3 / math.log2(3) + 2 / math.log2(5)
    ideal = 3 / math.log2(2) + 2 / math.log2(3) + 1 / math.log2(4)
    metrics = query_metrics(documents, grades, 4)
    assert metrics["ndcg"] == pytest.approx(dcg / ideal, abs=1e-12)
    assert metrics["recall"] == 1.0 and metrics["precision"] == 0.75 and metrics["mrr"] == 1.0


def test_a_document_counts_once_at_its_first_rank():
    assert ranked_documents(["a", "a", "b", "a", "c", "d"], 5) == ["a", "b", "c"]


def _hit(doc):
    return NodeWithScore(
        node=TextNode(text=doc, relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=doc)}), score=1.0
    )


class _Listed:
    """A retriever that answers each query with a fixed ranked list."""

    def __init__(self, lists):
        self.lists = lists

    def retrieve_many(self, queries):
        return [[_hit(d) for d in self.lists[q]] for q in queries]


def test_result_rows_carry_every_metric_with_intervals_and_report_md_shows_the_chosen_ones():
    dataset = QADataset({q: q for q in CASES}, {d: d for d in "abcdefghxyzwv"}, {q: sorted(r) for q, (_, r) in CASES.items()})
    row = evaluate_retriever(_Listed({q: docs for q, (docs, _) in CASES.items()}), dataset, k=K)
    for name in METRIC_NAMES:
        expected = np.mean([_ours(case)[name] for case in CASES.values()])
        assert getattr(row, name) == pytest.approx(expected, abs=1e-4) and name in row.intervals
    assert {"ndcg", "recall", "precision", "map"} <= set(row.to_dict())
    table = comparison_table([row], K, ("hit_rate", "ndcg"))
    assert "model hit@5 [95% CI]" in table and "model nDCG@5 [95% CI]" in table and "MRR" not in table


def test_graded_relevance_scores_reach_the_rows():
    dataset = QADataset({"q": "q"}, {"a": "a", "b": "b"}, {"q": ["a", "b"]})
    dataset.relevance_scores = {"q": {"a": 2, "b": 1}}  # BEIR's graded qrels
    row = evaluate_retriever(_Listed({"q": ["b", "a"]}), dataset, k=2)
    assert row.ndcg == pytest.approx(round((1 + 2 / math.log2(3)) / (2 + 1 / math.log2(3)), 4))


def test_an_unknown_metric_is_refused_in_one_line_before_torch_loads():
    with pytest.raises(TuningError, match="unknown metrics ndgc; use some of hit_rate, mrr, ndcg, recall, precision, map"):
        SearchConfig(metrics="hit_rate,ndgc")
    code = (
        "import sys\nfrom llama_index_lancedb_tuning.cli import main\n"
        "rc = main(['evaluate', 'x.csv', '--out', 'o', '--metrics', 'ndgc'])\n"
        "print(rc, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["2", "False"]
    assert done.stderr.strip().count("\n") == 0 and "--metrics" in done.stderr and "use some of" in done.stderr
