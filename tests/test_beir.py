"""BEIR folders: loading them as BEIR does, and `run`/`evaluate` on them, on a small folder made from data_qa."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import cli_in_a_fresh_process

from llama_index_lancedb_tuning.cli import main
from llama_index_lancedb_tuning.data.beir import load_beir, read_qrels
from llama_index_lancedb_tuning.errors import TuningError

N_TRAIN, N_TEST = 30, 10


def _write_folder(folder: Path, dataset, with_test: bool) -> Path:
    """`dataset` in BEIR's layout: the first half of each context as its title, the rest as its text;
    train qrels with a header and CRLF line ends (as the BEIR zip has them), test qrels bare with LF."""
    (folder / "qrels").mkdir(parents=True)
    with (folder / "corpus.jsonl").open("w", encoding="utf-8") as fh:
        for doc_id, text in dataset.corpus.items():
            words = text.split()
            row = {"_id": doc_id, "title": " ".join(words[:5]), "text": " ".join(words[5:]), "metadata": {}}
            fh.write(json.dumps(row) + "\n")
    with (folder / "queries.jsonl").open("w", encoding="utf-8") as fh:
        for query_id, text in dataset.queries.items():
            fh.write(json.dumps({"_id": query_id, "text": text, "metadata": {}}) + "\n")
    ids = dataset.query_ids
    train = ["query-id\tcorpus-id\tscore"] + [f"{q}\t{dataset.relevant_docs[q][0]}\t1" for q in ids[:N_TRAIN]]
    (folder / "qrels" / "train.tsv").write_bytes("\r\n".join(train).encode() + b"\r\n")
    if with_test:
        test = [f"{q}\t{dataset.relevant_docs[q][0]}\t2" for q in ids[N_TRAIN : N_TRAIN + N_TEST]]
        some_other_doc = next(d for d in dataset.corpus if d != dataset.relevant_docs[ids[N_TRAIN]][0])
        test.append(f"{ids[N_TRAIN]}\t{some_other_doc}\t0")  # judged, not relevant
        (folder / "qrels" / "test.tsv").write_text("\n".join(test) + "\n")
    return folder


@pytest.fixture
def beir_folder(tmp_path, small_dataset):
    return _write_folder(tmp_path / "beir", small_dataset, with_test=True)


@pytest.fixture
def train_only_folder(tmp_path, small_dataset):
    return _write_folder(tmp_path / "beir-train", small_dataset, with_test=False)


def test_a_beir_folder_loads_as_beir_reads_it(beir_folder, small_dataset):
    train = load_beir(beir_folder, "train")
    assert len(train) == N_TRAIN and train.corpus.keys() == small_dataset.corpus.keys()
    doc_id, text = next(iter(small_dataset.corpus.items()))
    assert train.corpus[doc_id] == " ".join(text.split())  # title and text joined by one space
    assert train.relevance_scores is None  # every score is 1: binary relevance

    test = load_beir(beir_folder)  # the default split is test
    first = small_dataset.query_ids[N_TRAIN]
    assert len(test) == N_TEST and test.relevant_docs[first] == [small_dataset.relevant_docs[first][0]]  # score 0 left out
    assert test.grades(first) == {small_dataset.relevant_docs[first][0]: 2}  # graded scores kept for nDCG


def test_qrels_take_a_header_or_none_and_trec_columns(tmp_path):
    bare, trec = tmp_path / "bare.tsv", tmp_path / "trec.txt"
    bare.write_bytes(b"q1\td1\t1\r\nq1\td2\t2\r\n")
    trec.write_text("q1 0 d1 1\nq2 0 d3 0\n")
    assert read_qrels(bare) == {"q1": {"d1": 1, "d2": 2}}
    assert read_qrels(trec) == {"q1": {"d1": 1}, "q2": {"d3": 0}}
    bad = tmp_path / "bad.tsv"
    bad.write_text("q1\td1\t1\nq2\td2\tyes\n")
    with pytest.raises(TuningError, match="line 2: score 'yes' is not a number"):
        read_qrels(bad)


def test_qrels_naming_an_unknown_document_are_refused(beir_folder):
    (beir_folder / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nx\tnot-a-doc\t1\n")
    with pytest.raises(TuningError, match="judges query 'x', which .*queries.jsonl lacks"):
        load_beir(beir_folder, "dev")


def test_run_on_a_folder_with_test_qrels_scores_those_queries_one_node_per_document(beir_folder, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", str(beir_folder), "--out", str(out), "--epochs", "1", "--quiet", "--k", "3"]  # BEIR: whole documents
    assert main(argv) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    data = report["dataset"]
    assert (data["n_test_queries"], data["n_nodes"], data["n_corpus"]) == (N_TEST, 20, 20)
    assert data["n_train_queries"] == N_TRAIN  # all of train trains; the gate's queries are carved from it
    assert {r["n"] for r in report["results"]} == {N_TEST}
    assert all({"ndcg", "recall", "precision", "map"} <= r.keys() for r in report["results"])
    assert {"index", "finetune", "reembed", "total"} <= report["timings_s"].keys()


def test_run_on_a_folder_with_train_qrels_only_scores_a_seeded_split_of_them(train_only_folder, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", str(train_only_folder), "--out", str(out), "--epochs", "1", "--quiet", "--tune", "query", "--k", "3"]
    assert main([*argv, "--chunk-size", "32", "--chunk-overlap", "8"]) == 0, capsys.readouterr().err
    data = json.loads((out / "report.json").read_text())["dataset"]
    assert (data["n_train_queries"], data["n_test_queries"]) == (24, 6)  # test size 0.2 of the 30 train queries
    assert data["n_nodes"] > data["n_corpus"]  # chunked when --chunk-size says so


def test_evaluate_scores_the_split_it_is_told(train_only_folder, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", str(train_only_folder), "--split", "train", "--out", str(out), "--quiet", "--k", "3"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert {r["n"] for r in report["results"]} == {N_TRAIN} and report["dataset"]["n_test_queries"] == N_TRAIN
    assert "| Vector search |" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["evaluate", "{folder}"], "no qrels/test.tsv (splits: train); name one with --split"),
        (["evaluate", "{folder}", "--split", "dev"], "no qrels/dev.tsv (splits: train)"),
        (["evaluate", "{csv}", "--split", "train"], "--split names the qrels of a BEIR folder, but"),
        (["run", "{folder}/qrels"], "is a documents directory"),
    ],
)
def test_beir_mistakes_answer_in_one_line_before_torch_is_imported(train_only_folder, tmp_path, argv, expected):
    csv = tmp_path / "labels.csv"
    csv.write_text("query,context\nq,c\n")
    args = [a.format(folder=train_only_folder, csv=csv) for a in argv] + ["--out", str(tmp_path / "out")]
    proc = cli_in_a_fresh_process(args)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and expected in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()
