"""Reranker tuning: a cross-encoder trained on hard negatives the table gives, gated against the serving
reranker, recorded with the table, served by `from_table` and undone by `rollback`; `lancedb-tune run
--tune reranker`. Real model, real tables, a few real data_qa queries, one short epoch."""

import json
import shutil

import pandas as pd
import pytest
from conftest import DATA_QA, first_queries
from llama_index.core.schema import MetadataMode
from sentence_transformers import CrossEncoder

from llama_index_lancedb_tuning import QADataset, RunConfig, TuningError
from llama_index_lancedb_tuning.cli import main
from llama_index_lancedb_tuning.encoding.embed_models import embed_queries
from llama_index_lancedb_tuning.encoding.model_ids import resolve_cross_encoder
from llama_index_lancedb_tuning.pack import FinetunedLanceDBRetrieverPack
from llama_index_lancedb_tuning.search.retrievers import LanceDBRetriever
from llama_index_lancedb_tuning.store.encoder_record import recorded_encoders, recorded_reranker
from llama_index_lancedb_tuning.store.table import table_nodes
from llama_index_lancedb_tuning.training.cross_encoder import mine_examples, node_source
from llama_index_lancedb_tuning.tuning.run_loop import tune_and_evaluate

# One negative, short inputs, 8 candidates (k=2): seconds per training on two CPU cores.
QUICK = {"reranker_negatives": 1, "reranker_max_length": 96, "batch_size": 8}

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny(small_dataset):
    """24 queries over the 12 contexts they answer."""
    return first_queries(small_dataset, 24)


@pytest.fixture(scope="module")
def tiny_nodes(tiny, small_nodes):
    return [n for n in small_nodes if node_source(n) in tiny.corpus]


@pytest.fixture(scope="module")
def tiny_table(tmp_path_factory, tiny_nodes):
    """The nodes embedded once, into a table each test copies."""
    uri = tmp_path_factory.mktemp("tiny") / "db"
    FinetunedLanceDBRetrieverPack(nodes=tiny_nodes, uri=str(uri), table_name="t")
    return uri


def _pack(tiny_table, path, **kwargs):
    shutil.copytree(tiny_table, path / "db")
    return FinetunedLanceDBRetrieverPack.from_table(uri=str(path / "db"), table_name="t", similarity_top_k=2, **kwargs)


def test_negatives_are_the_tables_candidates_outside_every_relevant_document(tmp_path, tiny, tiny_table):
    index = _pack(tiny_table, tmp_path).lancedb_index
    leg = LanceDBRetriever(index.table, index.query_model, "vector", 12)
    found: dict[str, list] = {}

    def candidates(queries):
        lists = [[hit.node for hit in hits] for hits in leg.retrieve_many(queries)]
        found.update(zip(queries, lists))
        return lists

    def mine(seed):
        return mine_examples(tiny, table_nodes(index.table), candidates, lambda q: embed_queries(index.query_model, q), 4, seed)

    examples = mine(0)
    assert [e.query for e in examples] == [tiny.queries[q] for q in tiny.query_ids]
    # The candidate lists hold nodes of the relevant documents, so leaving them out is tested, not vacuous.
    assert any(node_source(n) in tiny.relevant_docs[q] for q in tiny.query_ids for n in found[tiny.queries[q]])
    for qid, example in zip(tiny.query_ids, examples):
        relevant = set(tiny.relevant_docs[qid])
        pool = [n.node_id for n in found[example.query] if node_source(n) not in relevant]
        assert node_source(example.positive) in relevant
        assert {node_source(n) for n in example.negatives}.isdisjoint(relevant)
        assert len(example.negatives) == min(4, len(pool)) and {n.node_id for n in example.negatives} <= set(pool)
    assert [[n.node_id for n in e.negatives] for e in mine(0)] == [[n.node_id for n in e.negatives] for e in examples]
    assert [[n.node_id for n in e.negatives] for e in mine(1)] != [[n.node_id for n in e.negatives] for e in examples]


def test_a_promoted_reranker_is_recorded_served_by_from_table_and_rolled_back(tmp_path, tiny, tiny_table, default_model_path):
    pack = _pack(tiny_table, tmp_path)
    table = pack.get_modules()["table"]
    version_before, rows_before = table.version, table.to_arrow()
    result = pack.finetune(tiny, mode="reranker", gate=False, **QUICK)

    out = result.model_path
    assert out.name == f"t.reranker-tuned-v{version_before}" and not (out / "checkpoints").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_val_queries"] == 5 and metrics["n_train_pairs"] == 19 * 2 and "val_mrr@5" in metrics["val_after"]
    trained = CrossEncoder(resolve_cross_encoder(str(out)), max_length=512)  # with its trained head, as LlamaIndex serves it
    assert trained.num_labels == 1 and trained.predict([("a query", "a passage")]).shape == (1,)

    served = f"cross-encoder:{out.resolve()}"
    assert result.promoted and result.version == table.version > version_before
    assert table.to_arrow() == rows_before  # no row or vector rewritten
    assert recorded_reranker(table) == served and recorded_encoders(table).query_encoder == default_model_path
    assert pack.get_modules()["reranker"].class_name() == "SentenceTransformerRerank" and pack.reranker.model == str(
        out.resolve()
    )
    (promotion,) = pack.history()
    assert (promotion.mode, promotion.reranker, promotion.previous_reranker, promotion.serving) == (
        "reranker",
        served,
        "fusion",
        True,
    )

    reopened = FinetunedLanceDBRetrieverPack.from_table(uri=str(tmp_path / "db"), table_name="t", similarity_top_k=2)
    assert reopened.reranker.model == str(out.resolve()) and reopened.document_encoder.model_name == default_model_path
    query = tiny.queries[tiny.query_ids[0]]
    hits = reopened.retrievers["reranked_vector"].retrieve(query)
    assert [h.node.node_id for h in hits] == [h.node.node_id for h in pack.retrievers["reranked_vector"].retrieve(query)]
    scores = trained.predict([(query, h.node.get_content(metadata_mode=MetadataMode.EMBED)) for h in hits])
    assert [h.score for h in hits] == pytest.approx(sorted(scores, reverse=True), abs=1e-5)  # ordered by the trained model
    explicit = FinetunedLanceDBRetrieverPack.from_table(uri=str(tmp_path / "db"), table_name="t", reranker="fusion")
    assert explicit.reranker.class_name() == "FusionRerank"  # an app's own choice wins over the record

    assert pack.rollback() > result.version
    assert pack.reranker.class_name() == "FusionRerank" and recorded_reranker(table) is None
    assert (
        FinetunedLanceDBRetrieverPack.from_table(uri=str(tmp_path / "db"), table_name="t").reranker.class_name() == "FusionRerank"
    )


def test_the_gate_refuses_a_reranker_trained_on_shuffled_labels(tmp_path, tiny, tiny_table):
    train, test = tiny.split(0.25, seed=0)
    ids = train.query_ids  # data_qa asks two questions of each context in a row: move labels 5 queries on
    shuffled = QADataset(train.queries, train.corpus, dict(zip(ids, [train.relevant_docs[q] for q in ids[5:] + ids[:5]])))
    pack = _pack(tiny_table, tmp_path)
    table = pack.get_modules()["table"]
    version = table.version
    result = pack.finetune(shuffled, mode="reranker", eval_dataset=test, learning_rate=3e-4, **QUICK)

    assert not result.promoted and result.reason.startswith("not promoted: reranked_vector hit@2 on 6 validation queries")
    assert (result.serving.reranker, result.tuned.reranker) == (
        "FusionRerank",
        f"SentenceTransformerRerank({result.model_path.resolve()})",
    )
    assert result.tuned.hit_rate < result.serving.hit_rate
    assert table.version == version and recorded_reranker(table) is None and pack.history() == []
    assert pack.reranker.class_name() == "FusionRerank"


def test_run_tune_reranker_reranks_the_baseline_table_with_the_trained_model(tmp_path, tiny):
    rows = pd.read_csv(DATA_QA)
    keep = rows[rows["query"].isin({tiny.queries[q] for q in tiny.query_ids[:16]})]  # 8 contexts
    data = tmp_path / "tiny.csv"
    keep.to_csv(data, index=False)
    out = tmp_path / "out"
    assert main(["run", str(data), "--out", str(out), "--tune", "reranker", "--lr", "2e-4", "--k", "2", "--quiet"]) == 0

    report = json.loads((out / "report.json").read_text())
    assert report["tune"] == "reranker" and report["timings_s"]["reembed"] == 0
    settings = report["finetune_metrics"]["config"]
    assert (settings["learning_rate"], settings["reranker_negatives"], settings["k"]) == (2e-4, 4, 2)  # --lr reaches the reranker
    rows_by = {(r["model"], r["query_type"]): r for r in report["results"]}
    trained = f"SentenceTransformerRerank({(out / 'model').resolve()})"
    for query_type in ("reranked_vector", "reranked_fts"):
        assert rows_by[("baseline", query_type)]["reranker"] == "FusionRerank"
        assert rows_by[("tuned", query_type)]["reranker"] == trained
    for query_type in ("vector", "fts", "hybrid"):  # the same searches of the same table
        base, tuned = rows_by[("baseline", query_type)], rows_by[("tuned", query_type)]
        assert (tuned["hit_rate"], tuned["mrr"], tuned["ci95"]) == (base["hit_rate"], base["mrr"], base["ci95"])
    promotion = report["promotion"]
    assert promotion["query_type"] == "reranked_vector" and promotion["n"] == report["dataset"]["n_gate_queries"] > 0
    assert report["promoted"] == (promotion["tuned"]["hit_rate"] >= promotion["serving"]["hit_rate"])
    assert "lancedb" in {p.name for p in out.iterdir()} and "tuned.lance" not in {p.name for p in (out / "lancedb").iterdir()}
    assert resolve_cross_encoder(str(out / "model"))


def test_bad_reranker_tuning_requests_are_one_line_errors(tmp_path, tiny, tiny_table, capsys):
    pack = _pack(tiny_table, tmp_path)
    for overrides, message in (
        ({"negatives": 2}, "unknown fine-tuning setting negatives; use FinetuneConfig's fields"),
        ({"reranker_negatives": 0}, "reranker_negatives must be at least 1, got 0"),
        ({"reranker_max_length": 8}, "reranker_max_length must be at least 16, got 8"),
        ({"learning_rate": 0.0}, "learning_rate must be a positive number"),
    ):
        with pytest.raises(TuningError, match=message):
            pack.finetune(tiny, mode="reranker", **overrides)
    with pytest.raises(TuningError, match="unknown tuning mode 'rerank'; use query .*, full .* or reranker"):
        pack.finetune(tiny, mode="rerank")
    train, test = tiny.split(0.25, seed=0)
    with pytest.raises(TuningError, match="--tune reranker learns from labeled queries over the corpus it reranks"):
        tune_and_evaluate(train, tmp_path / "run", RunConfig(tune="reranker"), eval_dataset=test)
    assert main(["run", str(DATA_QA), "--out", str(tmp_path / "o"), "--tune", "reranker", "--pairs", "offline"]) == 2
    err = capsys.readouterr().err
    assert "--tune reranker learns from labeled queries" in err and err.count("\n") == 1 and "Traceback" not in err
    assert not any((tmp_path / "o").glob("*.lance"))
