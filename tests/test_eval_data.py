"""Train on one dataset, score on another (`--eval-data`), on slices of the real Lyft -> Uber 10-K data."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import SHARED_DATA, cli_in_a_fresh_process, first_queries

from llama_index_lancedb_tuning import QADataset, RunConfig, TuningError, load_qa_dataset, tune_and_evaluate
from llama_index_lancedb_tuning.cli import main
from llama_index_lancedb_tuning.config import recommended_finetune
from llama_index_lancedb_tuning.tuning.run_loop import build_nodes, run_settings, training_data

LYFT = SHARED_DATA / "lyft_uber_10k" / "train_dataset.json"
UBER = SHARED_DATA / "lyft_uber_10k" / "val_dataset.json"
SLICE = 24


@pytest.fixture(scope="module")
def lyft() -> QADataset:
    return load_qa_dataset(LYFT)


@pytest.fixture(scope="module")
def uber() -> QADataset:
    return load_qa_dataset(UBER)


@pytest.fixture(scope="module")
def slice_files(tmp_path_factory, lyft, uber) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("slices")
    train, test = folder / "lyft.json", folder / "uber.json"
    first_queries(lyft, SLICE).save_json(train)
    first_queries(uber, SLICE).save_json(test)
    return train, test


def test_the_lyft_training_file_loads_merged_and_splits_by_the_seed(lyft, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        again = load_qa_dataset(LYFT)
    assert "10 queries repeated an earlier query" in caplog.text
    assert (len(again), len(again.corpus)) == (658, 334)  # 668 rows, 10 of them repeats
    train, test, node_level = training_data(lyft, tmp_path, RunConfig(), None)
    assert (len(train), len(test), node_level) == (526, 132, False)
    assert not set(train.queries.values()) & set(test.queries.values())
    again_train, _, _ = training_data(lyft, tmp_path, RunConfig(), None)
    assert again_train.query_ids == train.query_ids  # seeded: the same split every run


def test_cli_run_trains_on_one_file_and_scores_every_query_of_the_other(slice_files, tmp_path, capsys):
    train_path, eval_path = slice_files
    out = tmp_path / "run"
    argv = ["run", str(train_path), "--eval-data", str(eval_path), "--out", str(out), "--epochs", "1", "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    test = QADataset.from_json(eval_path)
    data = report["dataset"]
    assert data["path"] == str(train_path) and data["eval_path"] == str(eval_path)
    # No split: every training query trains, every eval query is scored.
    assert (data["n_train_queries"], data["n_test_queries"]) == (SLICE, SLICE)
    assert data["n_corpus"] == len(test.corpus) and data["n_nodes"] > len(test.corpus)  # the eval corpus is indexed
    assert {r["n"] for r in report["results"]} == {SLICE}
    assert {(r["model"], r["query_type"]) for r in report["results"]} == {
        (m, t) for m in ("baseline", "tuned") for t in ("vector", "fts", "reranked_vector", "reranked_fts", "hybrid")
    }
    assert all(key in report for key in ("k", "base_model", "tuned_model", "results", "timings_s"))
    # As many label-free pairs as labeled ones, cut from the scored (Uber) corpus's nodes, saved as made.
    adaptation = QADataset.from_json(out / "adaptation_pairs.json")
    added = data["n_adaptation_pairs"]
    assert added == report["finetune_metrics"]["n_adaptation_pairs"] > 0
    assert added == min(len(adaptation), report["finetune_metrics"]["n_train_pairs"] - added)  # capped at the labeled pairs
    assert not set(adaptation.queries.values()) & set(test.queries.values())
    uber_nodes = {node.node_id for node in build_nodes(test.corpus, None, RunConfig())}
    assert {entry.rpartition("#")[0] for entry in adaptation.corpus} <= uber_nodes
    md = (out / "report.md").read_text()
    assert f"trained on `{train_path}` ({SLICE} training queries + {added} label-free pairs from the scored corpus)" in md
    assert f"scored on `{eval_path}` ({SLICE} queries)" in md


def test_adaptation_adds_an_equal_seeded_share_and_no_adapt_turns_it_off(uber):
    from datasets import Dataset

    from llama_index_lancedb_tuning.pairs.offline_pairs import generate_offline_pairs
    from llama_index_lancedb_tuning.training.training_pairs import with_adaptation_pairs

    generated = generate_offline_pairs(build_nodes(first_queries(uber, SLICE).corpus, None, RunConfig()), seed=42)
    labeled = Dataset.from_dict({"anchor": [f"q{i}" for i in range(5)], "positive": [f"p{i}" for i in range(5)]})
    mixed, added = with_adaptation_pairs(labeled, generated, seed=42)
    assert added == 5 and len(mixed) == 10 and mixed["anchor"][:5] == labeled["anchor"]
    assert set(mixed["anchor"][5:]) <= set(generated.queries.values())
    assert set(mixed["positive"][5:]) <= set(generated.corpus.values())
    assert with_adaptation_pairs(labeled, generated, seed=42)[0]["anchor"] == mixed["anchor"]  # seeded
    assert with_adaptation_pairs(labeled, generated, seed=7)[0]["anchor"] != mixed["anchor"]
    from llama_index_lancedb_tuning.cli import build_parser

    args = ["run", "data.json", "--eval-data", "eval.json", "--out", "out"]
    assert build_parser().parse_args(args).adapt is None  # not given: RunConfig's default, on
    assert build_parser().parse_args([*args, "--no-adapt"]).adapt is False
    assert RunConfig().adapt


def test_eval_queries_that_are_training_queries_are_refused_with_their_count(lyft, uber, tmp_path):
    train, test = first_queries(lyft, SLICE), first_queries(uber, SLICE)
    leaked = QADataset(
        {**test.queries, **{f"leak-{q}": " " + train.queries[q] for q in train.query_ids[:3]}},
        {**test.corpus, **train.corpus},
        {**test.relevant_docs, **{f"leak-{q}": train.relevant_docs[q] for q in train.query_ids[:3]}},
    )
    with pytest.raises(TuningError, match=rf"^3 of {SLICE + 3} eval queries also appear among the training queries; remove them"):
        tune_and_evaluate(train, tmp_path / "out", RunConfig(), eval_dataset=leaked)
    assert not (tmp_path / "out").exists()  # refused before the run directory or any model


def test_generated_pairs_come_from_the_training_corpus_and_every_eval_query_is_scored(lyft, uber, tmp_path):
    train, test = first_queries(lyft, SLICE), first_queries(uber, SLICE)
    config = RunConfig(pairs="offline")
    pairs, scored, node_level = training_data(train, tmp_path, config, None, eval_dataset=test)
    assert scored is test and node_level
    lyft_nodes = {node.node_id for node in build_nodes(train.corpus, None, config)}
    # Inverse-cloze passages are node texts with the question's sentence taken out, filed as NODE_ID#N.
    assert len(pairs) > 0 and {pair.rpartition("#")[0] for pair in pairs.corpus} <= lyft_nodes
    assert QADataset.from_json(tmp_path / "pairs.json").queries == pairs.queries  # saved for a resumed run


def test_the_resume_digest_changes_with_the_eval_data(lyft, uber):
    train, config = first_queries(lyft, SLICE), RunConfig(finetune=replace(recommended_finetune("labeled"), epochs=1))
    first, second = first_queries(uber, SLICE), first_queries(uber, SLICE + 1)
    assert run_settings(train, config, None, None, first) == run_settings(train, config, None, None, first)
    assert run_settings(train, config, None, None, first) != run_settings(train, config, None, None, second)
    assert run_settings(train, config, None) != run_settings(train, config, None, None, first)


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--eval-data", "{tmp}/missing.json"], "--eval-data {tmp}/missing.json: no such file; check the path"),
        (["--eval-data", "{tmp}"], "--eval-data {tmp} is a directory; pass a labeled CSV file"),
        (["--eval-data", "{test}", "--queries", "{test}"], "--queries and --eval-data both name the queries to score on"),
        (["--eval-data", "{test}", "--test-size", "0.3"], "--test-size splits DATA, but --eval-data scores on another file"),
    ],
)
def test_eval_data_mistakes_answer_in_one_line_before_torch_is_imported(slice_files, tmp_path, extra, expected):
    train_path, eval_path = slice_files
    argv = ["run", str(train_path), *(a.format(tmp=tmp_path, test=eval_path) for a in extra), "--out", str(tmp_path / "out")]
    proc = cli_in_a_fresh_process(argv)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr  # 99: a heavy library was imported before the mistake was named
    assert len(lines) == 1 and expected.format(tmp=tmp_path) in lines[0] and proc.stdout == "", proc.stderr
    assert not (tmp_path / "out").exists()
