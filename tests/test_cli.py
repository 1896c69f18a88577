"""The main command end to end on the project's own sample: real model, real training, real LanceDB."""

import json
from pathlib import Path

import pytest

from llama_index_lancedb_tuning.cli import main

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample_qa.csv"
QUERY_TYPES = {"vector", "fts", "reranked_vector", "reranked_fts", "hybrid"}


def test_run_on_the_sample_writes_the_report_other_tools_read(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(SAMPLE), "--out", str(out), "--epochs", "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "| Vector search |" in printed and "| Hybrid search |" in printed

    report = json.loads((out / "report.json").read_text())
    assert set(report) >= {"k", "base_model", "tuned_model", "dataset", "results", "timings_s"}
    assert report["dataset"]["path"].endswith("sample_qa.csv") and report["tuned_model"].endswith("model")
    assert report["dataset"]["n_corpus"] == 30 and report["dataset"]["n_nodes"] >= 30
    assert (report["dataset"]["n_train_queries"], report["dataset"]["n_test_queries"]) == (96, 24)
    # The gate's fifth of the training queries is held out of training; its verdict is reported either way.
    assert report["dataset"]["n_gate_queries"] == 20 and isinstance(report["promoted"], bool)
    promotion = report["promotion"]
    assert promotion["reason"].startswith("promoted: " if report["promoted"] else "not promoted: ")
    assert promotion["query_type"] == "hybrid" and promotion["n"] == 20 and promotion["reason"] in printed
    assert f"gate: {promotion['reason']}" in (out / "report.md").read_text()
    assert set(report["timings_s"]) >= {"finetune", "index", "evaluate", "total"}
    rows = report["results"]
    assert {(r["model"], r["query_type"]) for r in rows} == {(m, q) for m in ("baseline", "tuned") for q in QUERY_TYPES}
    for r in rows:
        assert r["n"] == 24 and 0 <= r["mrr"] <= r["hit_rate"] <= 1
        assert r["ci95"][0] <= r["hit_rate"] <= r["ci95"][1]
        assert (r["reranker"] is None) == (r["query_type"] in ("vector", "fts"))
    # The sample's queries use the crew's nicknames, which the manual never does: the untuned model
    # misses most of them, and even one epoch on the training queries teaches it more than noise.
    vector = {r["model"]: r for r in rows if r["query_type"] == "vector"}
    assert vector["baseline"]["hit_rate"] <= 0.4
    assert (vector["tuned"]["hit_rate"] - vector["baseline"]["hit_rate"]) * 24 > 2 and vector["tuned"]["p_vs_baseline"] < 0.05
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert "Hybrid search" in (out / "report.md").read_text()
    assert (out / "model" / "metrics.json").exists() and any((out / "model").glob("model.safetensors"))


def test_fine_tuning_defaults_follow_the_source_of_pairs():
    from llama_index_lancedb_tuning.cli import _run_config, build_parser

    def config(*flags):
        return _run_config(build_parser().parse_args(["run", "data.csv", "--out", "o", *flags]))

    labeled, offline, chosen = (
        config(),
        config("--pairs", "offline"),
        config("--pairs", "offline", "--lr", "1e-4", "--epochs", "3"),
    )
    assert (labeled.pairs, labeled.finetune.epochs, labeled.finetune.learning_rate) == ("labeled", 1, 1e-4)
    assert (offline.pairs, offline.finetune.epochs, offline.finetune.learning_rate) == ("offline", 2, 3e-5)
    assert (chosen.finetune.epochs, chosen.finetune.learning_rate) == (3, 1e-4)  # flags beat the defaults
    assert config("--queries", "q.csv").pairs == "offline"
    assert labeled.fix_glued_words and not config("--keep-glued-words").fix_glued_words


def test_backend_flag_reaches_the_run_config_and_bad_choices_exit_2(capsys):
    from llama_index_lancedb_tuning.cli import _run_config, build_parser, main

    args = build_parser().parse_args(["evaluate", "--model", "m", "data.csv", "--out", "o", "--backend", "onnx-int8"])
    assert _run_config(args).backend == "onnx-int8"
    assert _run_config(build_parser().parse_args(["run", "data.csv", "--out", "o"])).backend == "auto"
    with pytest.raises(SystemExit) as exit_info:
        main(["run", "data.csv", "--out", "o", "--backend", "tensorrt"])
    assert exit_info.value.code == 2 and "invalid choice: 'tensorrt'" in capsys.readouterr().err
