"""`lancedb-tune run --tune query|full` and `run --table`: query-side tuning scored on the baseline table's own
vectors, and tuning an existing (LlamaIndex-written) table that the run never modifies. Real model, real tables."""

import json
from pathlib import Path

import lancedb
import numpy as np
import pytest
from conftest import llamaindex_table
from llama_index.core.schema import MetadataMode

from llama_index_lancedb_tuning.cli import main
from llama_index_lancedb_tuning.encoding.embed_models import embed_queries, embed_texts, load_embed_model
from llama_index_lancedb_tuning.store.table import node_from_row

SAMPLE = Path(__file__).resolve().parents[1] / "examples" / "sample_qa.csv"
QUERY_TYPES = {"vector", "fts", "reranked_vector", "reranked_fts", "hybrid"}
QUICK = ["--epochs", "1", "--k", "3", "--quiet"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _stored(table) -> dict:
    rows = table.to_arrow().to_pylist()
    return {r["id"]: (np.asarray(r["vector"], dtype=np.float32).tobytes(), r["text"], r["metadata"]) for r in rows}


def _report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def test_query_tuning_scores_the_baseline_tables_own_vectors(tmp_path, embed_model):
    out = tmp_path / "out"
    assert main(["run", str(SAMPLE), "--out", str(out), "--tune", "query", *QUICK]) == 0

    report = _report(out)
    assert report["tune"] == "query" and report["timings_s"]["reembed"] == 0
    assert set(report["timings_s"]) >= {"finetune", "reembed", "index", "evaluate", "total"}
    assert {(r["model"], r["query_type"]) for r in report["results"]} == {
        (m, q) for m in ("baseline", "tuned") for q in QUERY_TYPES
    }
    db = lancedb.connect(str(out / "lancedb"))
    assert "tuned" not in db.table_names()  # nothing was re-embedded
    rows = db.open_table("baseline").to_arrow().to_pylist()
    texts = [node_from_row(r).get_content(metadata_mode=MetadataMode.EMBED) for r in rows]
    base = load_embed_model(None)  # the default backend the run indexed with
    np.testing.assert_allclose([r["vector"] for r in rows], embed_texts(base, texts), atol=1e-5)  # base-model vectors
    assert report["finetune_metrics"]["config"]["freeze_passages"] is True
    tuned = load_embed_model(str(out / "model"))
    probe = "Who keeps the ship's engines running?"
    assert not np.allclose(embed_queries(tuned, [probe]), embed_queries(embed_model, [probe]), atol=1e-4)
    vector = {r["model"]: r for r in report["results"] if r["query_type"] == "vector"}
    assert vector["tuned"]["n"] == vector["baseline"]["n"] == 24
    assert vector["tuned"]["hit_rate"] > vector["baseline"]["hit_rate"]  # the nicknames are learned on the query side


@pytest.fixture(scope="module")
def app_table(tmp_path_factory, small_dataset, default_model_path):
    """A LlamaIndex-written table of the small dataset's documents, and its labeled queries as a QA dataset JSON."""
    folder = tmp_path_factory.mktemp("app")
    uri = str(folder / "db")
    llamaindex_table(uri, small_dataset, default_model_path)
    small_dataset.save_json(folder / "labels.json")
    return uri, folder / "labels.json"


@pytest.mark.parametrize("tune", ["query", "full"])
def test_run_on_an_existing_llamaindex_table_leaves_it_untouched(tmp_path, app_table, tune):
    uri, labels = app_table
    table = lancedb.connect(uri).open_table("li")
    before, version = _stored(table), table.version
    out = tmp_path / "out"
    args = ["run", "--table", uri, "--table-name", "li", "--queries", str(labels), "--out", str(out), "--tune", tune]
    assert main([*args, "--test-size", "0.25", *QUICK]) == 0

    table = lancedb.connect(uri).open_table("li")
    assert _stored(table) == before and table.version == version and not table.list_indices()  # not even an FTS index
    report = _report(out)
    assert report["tune"] == tune and report["dataset"]["table"]["name"] == "li"
    assert (report["dataset"]["n_train_queries"], report["dataset"]["n_test_queries"]) == (30, 10)
    assert report["dataset"]["n_nodes"] == len(before) and report["dataset"]["n_corpus"] == 20
    rows = {(r["model"], r["query_type"]): r for r in report["results"]}
    assert set(rows) == {(m, q) for m in ("baseline", "tuned") for q in QUERY_TYPES}
    assert rows[("baseline", "vector")]["hit_rate"] > 0.5  # relevance matched by the table's document ids
    copy = lancedb.connect(str(out / "lancedb"))
    assert _stored(copy.open_table("baseline")) == before  # the baseline is the table's rows, vectors as stored
    if tune == "query":
        assert report["timings_s"]["reembed"] == 0 and "tuned" not in copy.table_names()
    else:
        tuned = _stored(copy.open_table("tuned"))
        assert report["timings_s"]["reembed"] > 0 and set(tuned) == set(before)
        assert all(tuned[i][0] != before[i][0] for i in before)  # the copy was re-embedded, the user's table was not


def _error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


def test_bad_tune_value_and_missing_tables_are_one_line_exit_2(tmp_path, capsys, app_table):
    uri, labels = app_table
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(SAMPLE), "--out", str(tmp_path / "o"), "--tune", "both"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "invalid choice: 'both'" in err and err.count("\n") == 1
    table, o = ["--table", uri, "--table-name"], str(tmp_path / "o")
    assert "has no table 'nope' (it holds: li)" in _error(capsys, ["run", *table, "nope", "--queries", str(labels), "--out", o])
    assert "no such LanceDB directory" in _error(
        capsys, ["run", "--table", str(tmp_path / "none"), "--table-name", "li", "--queries", str(labels), "--out", o]
    )
    assert "--table needs --queries" in _error(capsys, ["run", *table, "li", "--out", o])
    assert "drop one of them" in _error(capsys, ["run", str(SAMPLE), *table, "li", "--queries", str(labels), "--out", o])
    assert "pass DATA" in _error(capsys, ["run", "--out", o])
    assert not (tmp_path / "o").exists()
