"""The pack tunes the table an app already has: evaluate, query-side and full tuning, reopening the pair,
and tables written by LlamaIndex's own LanceDBVectorStore. Real model, real tables, one epoch."""

import numpy as np
import pytest
from conftest import llamaindex_table
from llama_index.core import Document
from llama_index.core.schema import MetadataMode, TextNode

from llama_index_lancedb_tuning import QADataset, RunConfig, TuningError
from llama_index_lancedb_tuning.encoding.embed_models import embed_queries, embed_texts
from llama_index_lancedb_tuning.pack import FinetunedLanceDBRetrieverPack
from llama_index_lancedb_tuning.store.encoder_record import EncoderPair, recorded_encoders
from llama_index_lancedb_tuning.tuning.run_loop import score_model

TYPES = ["vector", "fts", "reranked_vector", "reranked_fts", "hybrid"]
QUICK = {"epochs": 1, "eval_each_epoch": False, "refit": False}
UNGATED = {"epochs": 1, "gate": False}  # these tests check what a promotion does; the gate has its own


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def split(small_dataset):
    return small_dataset.split(0.25, seed=0)


def _stored(table) -> dict:
    rows = table.to_arrow().to_pylist()
    return {r["id"]: (np.asarray(r["vector"], dtype=np.float32).tobytes(), r["text"], r["metadata"]) for r in rows}


def _pack(tmp_path, nodes, model, name="t", **kwargs):
    return FinetunedLanceDBRetrieverPack(nodes=nodes, embed_model=model, uri=str(tmp_path), table_name=name, **kwargs)


def test_evaluate_gives_the_numbers_the_cli_scores(tmp_path, small_nodes, small_dataset, default_model_path):
    pack = _pack(tmp_path / "pack", small_nodes, default_model_path)
    ours = pack.evaluate(small_dataset, k=5)
    cli = score_model(default_model_path, "model", small_nodes, small_dataset, str(tmp_path / "cli"), "model", RunConfig(k=5), {})
    assert [r.query_type for r in ours] == TYPES
    assert [(r.query_type, r.reranker, r.hit_rate, r.mrr, r.ci95, r.n) for r in ours] == [
        (r.query_type, r.reranker, r.hit_rate, r.mrr, r.ci95, r.n) for r in cli
    ]
    assert all(r.n == len(small_dataset) for r in ours) and ours[0].hit_rate > 0.5


# The tests that compare stored vectors with fresh ones run torch: int8 activations are quantised per
# batch, so an int8 vector depends slightly on the texts encoded beside it.
def test_query_tuning_keeps_every_vector_and_reopens_the_pair(tmp_path, small_nodes, split, default_model_path, embed_model):
    train, test = split
    pack = _pack(tmp_path, small_nodes, embed_model)
    table = pack.get_modules()["table"]
    before = _stored(table)
    result = pack.finetune(train, mode="query", **UNGATED)

    assert _stored(table) == before  # ids, text, metadata and vectors bit for bit
    out = result.model_path
    assert out.parent == tmp_path and (out / "metrics.json").exists() and "val_frozen_hit@5" in result.metrics["val_after"]
    assert pack.query_encoder.model_name == str(out.resolve())
    assert pack.document_encoder.model_name == default_model_path
    assert isinstance(pack.get_modules()["embed_model"], EncoderPair)
    probe = test.queries[test.query_ids[0]]
    assert not np.allclose(embed_queries(pack.query_encoder, [probe]), embed_queries(pack.document_encoder, [probe]), atol=1e-4)
    tuned_results = pack.evaluate(test)
    assert [r.n for r in tuned_results] == [len(test)] * 5

    reopened = FinetunedLanceDBRetrieverPack.from_table(uri=str(tmp_path), table_name="t")
    assert (reopened.query_encoder.model_name, reopened.document_encoder.model_name) == (str(out.resolve()), default_model_path)
    assert [r.hit_rate for r in reopened.evaluate(test)] == [r.hit_rate for r in tuned_results]
    hits = reopened.retrievers["vector"].retrieve(probe)
    assert [h.node.node_id for h in hits] == [h.node.node_id for h in pack.retrievers["vector"].retrieve(probe)]
    # The tuned query encoder scores against the stored (document-encoder) vectors.
    q = embed_queries(pack.query_encoder, [probe])[0]
    np.testing.assert_allclose(
        [h.score for h in hits],
        embed_texts(pack.document_encoder, [h.node.get_content(metadata_mode=MetadataMode.EMBED) for h in hits]) @ q,
        atol=1e-4,
    )


def test_add_after_query_tuning_embeds_with_the_document_encoder(tmp_path, small_nodes, split, embed_model):
    train, _ = split
    pack = _pack(tmp_path, small_nodes, embed_model)
    pack.finetune(train, mode="query", **UNGATED)
    text = "Quokkas photobomb tourists on Rottnest Island every summer."
    pack.add(nodes=[TextNode(id_="quokka", text=text)])
    row = pack.get_modules()["table"].search().where("id = 'quokka'").limit(1).to_list()[0]
    np.testing.assert_allclose(row["vector"], embed_texts(embed_model, [text])[0], atol=1e-6)
    assert [h.node.node_id for h in pack.retrievers["fts"].retrieve("quokkas rottnest")][:1] == ["quokka"]
    reopened = FinetunedLanceDBRetrieverPack.from_table(uri=str(tmp_path), table_name="t")
    assert reopened.query_encoder.model_name != reopened.document_encoder.model_name  # appends keep the recorded pair


def _answers(pack, dataset) -> list[list[str]]:
    return [[hit.node.node_id for hit in pack.run(dataset.queries[q])] for q in dataset.query_ids]


def test_full_tuning_reembeds_the_table_as_a_tagged_version_that_rollback_restores(tmp_path, small_nodes, split, embed_model):
    train, test = split
    pack = _pack(tmp_path, small_nodes, embed_model)
    table = pack.get_modules()["table"]
    before, version_before, answers_before = _stored(table), table.version, _answers(pack, test)
    result = pack.finetune(train, mode="full", gate=False, **QUICK)

    assert result.promoted and result.version == table.version > version_before and "gate=False" in result.reason
    after = _stored(table)
    assert set(after) == set(before)
    assert all(after[i][1:] == before[i][1:] for i in before)  # text and metadata unchanged
    assert all(after[i][0] != before[i][0] for i in before)  # every vector rewritten
    assert pack.query_encoder is pack.document_encoder and pack.document_encoder.model_name == str(result.model_path.resolve())
    rows = table.to_arrow().to_pylist()
    contents = [pack.get_modules()["retrievers"]["vector"].retrieve(test.queries[test.query_ids[0]])[0].node]
    stored = np.asarray([r["vector"] for r in rows if r["id"] == contents[0].node_id], dtype=np.float32)
    np.testing.assert_allclose(
        stored, embed_texts(pack.document_encoder, [contents[0].get_content(metadata_mode=MetadataMode.EMBED)]), atol=1e-5
    )
    assert any("text" in (idx.columns or []) for idx in table.list_indices())
    names = recorded_encoders(table)
    assert names is not None and names.query_encoder == names.document_encoder == str(result.model_path.resolve())
    (promotion,) = pack.history()
    assert (promotion.number, promotion.version, promotion.previous_version, promotion.mode, promotion.serving) == (
        1, result.version, version_before, "full", True,
    )  # fmt: skip
    assert table.tags.list()["promotion-1"]["version"] == result.version

    rolled_back = pack.rollback()
    assert rolled_back > result.version and _stored(table) == before  # every vector back, bit for bit
    assert pack.document_encoder.model_name == embed_model.model_name and pack.query_encoder is pack.document_encoder
    # The same top k per query. The restored encoder is reloaded from its path, not the fixture's object, and a
    # last-bit difference in a query vector may swap two passages that hybrid fusion scores as a tie.
    assert [sorted(a) for a in _answers(pack, test)] == [sorted(a) for a in answers_before]
    assert recorded_encoders(table) is None  # as before the promotion: the table recorded no pair then
    assert [p.serving for p in pack.history()] == [False]
    with pytest.raises(TuningError, match="serves no promotion to roll back"):
        pack.rollback()


def test_the_gate_refuses_a_harmful_tune_and_changes_nothing(tmp_path, small_nodes, split, default_model_path):
    train, test = split
    ids = train.query_ids  # data_qa asks two questions of each context in a row: move labels 7 queries on
    shuffled = QADataset(train.queries, train.corpus, dict(zip(ids, [train.relevant_docs[q] for q in ids[7:] + ids[:7]])))
    pack = _pack(tmp_path, small_nodes, default_model_path, query_type="vector")
    table = pack.get_modules()["table"]
    before, version, answers, encoder = _stored(table), table.version, _answers(pack, test), pack.query_encoder
    result = pack.finetune(
        shuffled, mode="full", eval_dataset=test, epochs=2, learning_rate=5e-4, batch_size=4, eval_each_epoch=False
    )

    assert not result.promoted and result.reason.startswith("not promoted: vector hit@5 on 10 validation queries")
    assert result.tuned.hit_rate < result.serving.hit_rate and result.serving.n == len(test)
    assert result.version == version == table.version and _stored(table) == before
    assert pack.query_encoder is encoder and _answers(pack, test) == answers
    assert (result.model_path / "metrics.json").exists()  # the refused model is still saved
    assert pack.history() == [] and recorded_encoders(table) is None

    retry = pack.finetune(train, mode="full", **UNGATED)  # trying again after a refusal is the normal flow
    assert retry.promoted and retry.model_path.name == f"{result.model_path.name}-2"
    assert (result.model_path / "metrics.json").exists() and (retry.model_path / "metrics.json").exists()


def test_bad_tuning_requests_are_refused_before_training(tmp_path, small_nodes, split, default_model_path):
    train, _ = split
    pack = _pack(tmp_path, small_nodes[:6], default_model_path)
    with pytest.raises(TuningError, match="unknown tuning mode 'both'"):
        pack.finetune(train, mode="both")
    with pytest.raises(TuningError, match="unknown fine-tuning setting epoch;"):
        pack.finetune(train, epoch=1)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("keep")
    with pytest.raises(TuningError, match="exists and is not empty"):
        pack.finetune(train, output_dir=tmp_path / "busy")


def test_a_llamaindex_written_table_opens_evaluates_and_query_tunes(tmp_path, small_dataset, split, default_model_path):
    train, test = split
    uri = str(tmp_path / "db")
    table = llamaindex_table(uri, small_dataset, default_model_path)
    assert not table.list_indices()  # LlamaIndex builds its full-text index only on a first text query
    before = _stored(table)

    pack = FinetunedLanceDBRetrieverPack.from_table(uri=uri, table_name="li", embed_model=default_model_path)
    assert any("text" in (idx.columns or []) for idx in pack.get_modules()["table"].list_indices())
    assert _stored(pack.get_modules()["table"]) == before  # the index was built; no row was touched
    baseline = pack.evaluate(test)
    assert [r.query_type for r in baseline] == TYPES and baseline[0].hit_rate > 0.5 and baseline[1].hit_rate > 0

    pack.finetune(train, mode="query", **UNGATED)
    assert _stored(pack.get_modules()["table"]) == before
    assert [r.n for r in pack.evaluate(test)] == [len(test)] * 5

    pack.add(documents=[Document(text="Quokkas photobomb tourists on Rottnest Island.", doc_id="quokka-doc")])
    added = pack.get_modules()["table"].search().where("doc_id = 'quokka-doc'").limit(5).to_list()
    assert added and added[0]["metadata"]["ref_doc_id"] == "quokka-doc"
    reopened = FinetunedLanceDBRetrieverPack.from_table(uri=uri, table_name="li")
    assert reopened.document_encoder.model_name == default_model_path and reopened.query_encoder is not reopened.document_encoder


def test_a_dataset_over_other_documents_is_refused(tmp_path, small_nodes, default_model_path):
    pack = _pack(tmp_path, small_nodes, default_model_path)
    stranger = QADataset({"q": "what?"}, {"elsewhere": "text"}, {"q": ["elsewhere"]})
    with pytest.raises(TuningError, match="absent from the corpus"):
        pack.finetune(stranger, mode="query", epochs=1, val_fraction=0, gate=False)


def test_rollback_keeps_rows_added_after_the_promotion_embedded_by_the_restored_encoder(
    tmp_path, small_nodes, split, embed_model
):
    train, _ = split
    pack = _pack(tmp_path, small_nodes, embed_model)
    table = pack.get_modules()["table"]
    pack.finetune(train, mode="full", **UNGATED)
    text = "Quokkas photobomb tourists on Rottnest Island."
    pack.add(documents=[Document(text=text, id_="quokka")])
    rows_before_rollback = table.count_rows()

    pack.rollback()
    assert table.count_rows() == rows_before_rollback == len(small_nodes) + 1
    (added,) = [r for r in table.to_arrow().to_pylist() if r["text"] == text]
    # Embedded again, by the document encoder serving after the rollback, not the tuned one that added it.
    node = next(n for n in pack.get_modules()["retrievers"]["vector"].retrieve(text) if n.node.get_content() == text).node
    fresh = embed_texts(pack.document_encoder, [node.get_content(metadata_mode=MetadataMode.EMBED)])
    np.testing.assert_allclose(np.asarray([added["vector"]], dtype=np.float32), fresh, atol=1e-5)
