"""No number that looks real and is not: a run without a gate never promotes a model significantly worse on its scored queries, and a report names what it trained on."""

from __future__ import annotations

import json

from llama_index_lancedb_tuning.config import RunConfig
from llama_index_lancedb_tuning.evaluation.ir_metrics import per_query_scores
from llama_index_lancedb_tuning.evaluation.metrics import EvalResult, with_significance
from llama_index_lancedb_tuning.tuning.run_directory import _data_line, training_source, write_report
from llama_index_lancedb_tuning.tuning.run_loop import _gate_verdict

TYPES = ("vector", "fts", "reranked_vector", "reranked_fts", "hybrid")
NO_GATE_POSSIBLE = "the gate needs labeled training queries over the scored corpus"


def _rows(model: str, hits_by_type: dict[str, list[int]]) -> list[EvalResult]:
    def scores(hits: list[int]) -> dict:
        return per_query_scores([["answer"] if hit else ["other"] for hit in hits], [{"answer": 1}] * len(hits), 5)

    return [EvalResult.from_scores(scores(hits), model, qt, None, 1.0) for qt, hits in hits_by_type.items()]


def _scored(lost: int, gained: int, n: int = 44) -> tuple[list[EvalResult], list[EvalResult]]:
    """Baseline and tuned rows where reranked vector loses `lost` queries and gains `gained`; the rest tie."""
    base = [1] * 30 + [0] * (n - 30)
    worse = [0] * lost + base[lost:30] + [1] * gained + [0] * (n - 30 - gained)
    baseline = _rows("baseline", {qt: base for qt in TYPES})
    tuned = _rows("tuned", {qt: worse if qt == "reranked_vector" else base for qt in TYPES})
    with_significance(baseline, tuned)
    return baseline, tuned


def test_a_run_without_a_gate_is_not_promoted_when_a_query_type_is_significantly_worse():
    scored = _scored(lost=8, gained=1)  # -7 queries, McNemar p = 0.039
    assert scored[1][2].p_vs_baseline == 0.0391
    verdict = _gate_verdict(RunConfig(), None, scored)
    assert not verdict.promoted
    assert verdict.reason == (
        f"not promoted: no gate ran ({NO_GATE_POSSIBLE}) and on 44 scored queries the tuned model is significantly "
        "worse than the baseline: reranked_vector hit@5 0.682 -> 0.523 (-7 queries, McNemar p=0.039)"
    )
    assert "(--no-gate)" in _gate_verdict(RunConfig(gate=False), None, scored).reason


def test_a_run_without_a_gate_says_its_promotion_was_not_validated():
    verdict = _gate_verdict(RunConfig(gate=False), None, _scored(lost=4, gained=1))  # p = 0.375
    assert verdict.promoted
    assert verdict.reason == (
        "promoted without the gate (--no-gate), so not validated; "
        "no query type is significantly worse than the baseline on 44 scored queries"
    )


def _dataset_block(**overrides) -> dict:
    block = {
        "path": "labeled.csv",
        "eval_path": None,
        "table": None,
        "n_train_queries": 120,
        "n_gate_queries": 0,
        "n_test_queries": 44,
        "pairs": "offline",
        "n_adaptation_pairs": 0,
    }
    return {**block, **overrides}


def test_a_report_names_the_documents_generated_pairs_came_from():
    paths = ("labeled.csv", None, "docs/")
    source = training_source("offline", paths, {"a.md": "text"}, None)
    assert source == {"train_source": "documents", "train_path": "docs/"}
    assert _data_line(_dataset_block(**source)) == (
        "trained on 120 pairs generated from the documents in `docs/` (--pairs offline) · scored on `labeled.csv` (44 queries)\n\n"
    )
    passages = training_source("llm", ("labeled.csv", None, ""), None, None)
    assert _data_line(_dataset_block(**passages, pairs="llm")).startswith(
        "trained on 120 pairs generated from the passages of `labeled.csv` (--pairs llm) · scored on `labeled.csv`"
    )
    labeled = training_source("labeled", ("labeled.csv", None, ""), None, None)
    assert _data_line(_dataset_block(**labeled, pairs="labeled", n_train_queries=176)) == (
        "trained on `labeled.csv` (176 training queries) · scored on held-out queries of the same data (44 queries)\n\n"
    )


def test_an_ungated_refusal_reaches_report_json_and_report_md(tmp_path):
    baseline, tuned = _scored(lost=8, gained=1)
    verdict = _gate_verdict(RunConfig(), None, (baseline, tuned))
    dataset = _dataset_block(**training_source("offline", ("labeled.csv", None, "docs/"), {}, None))
    report = {
        "base_model": "base",
        "tuned_model": "out/model",
        "promoted": verdict.promoted,
        "promotion": {"reason": verdict.reason, **verdict.figures()},
        "dataset": dataset,
        "warnings": [],
    }
    write_report(tmp_path, report, baseline + tuned, 5)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["promoted"] is False and saved["dataset"]["train_path"] == "docs/"
    assert "reranked_vector hit@5 0.682 -> 0.523 (-7 queries, McNemar p=0.039)" in saved["promotion"]["reason"]
    assert f"promotion: {verdict.reason}\n" in (tmp_path / "report.md").read_text()


def test_an_evaluate_report_is_titled_by_its_model_and_shows_no_tuned_model(tmp_path):
    results = _rows("model", {qt: [1] * 30 + [0] * 14 for qt in TYPES})
    dataset = {"path": "labeled.csv", "eval_path": None, "n_corpus": 20, "n_nodes": 30, "n_train_queries": 0}
    report = {"base_model": "my-model", "tuned_model": None, "dataset": {**dataset, "n_test_queries": 44}, "warnings": []}
    write_report(tmp_path, report, results, 5)
    md = (tmp_path / "report.md").read_text()
    assert md.startswith("# Retrieval of `my-model`\n\nmodel: `my-model` · 44 queries scored · k=5\n\n| Query type")
    assert "tuned model" not in md and "None" not in md and "fine-tuning" not in md
