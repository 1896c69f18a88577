"""`mode="adapter"`: a query adapter over any LlamaIndex embedding. End to end through the real OpenAI SDK
and LlamaIndex's `OpenAIEmbedding` against a local embeddings server (the bundled model behind it), with
`HuggingFaceEmbedding` as the black box, through `lancedb-tune run --tune adapter`; the untrained adapter
is the identity; bad inputs are refused in one line."""

import asyncio
import json
import shutil
from collections import Counter

import numpy as np
import pytest
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.schema import TextNode
from llama_index.embeddings.huggingface import HuggingFaceEmbedding
from llama_index.embeddings.openai import OpenAIEmbedding
from openai_server import OpenAIServer  # tests/ is on sys.path under pytest's default import mode

from llama_index_lancedb_tuning import QADataset, TuningError, chunk_corpus, model_tokenizer
from llama_index_lancedb_tuning.cli import main
from llama_index_lancedb_tuning.encoding.adapted_embedding import AdaptedEmbedding, QueryAdapter, save_adapter
from llama_index_lancedb_tuning.encoding.embed_models import embed_queries
from llama_index_lancedb_tuning.pack import FinetunedLanceDBRetrieverPack
from llama_index_lancedb_tuning.search.index import LanceDBIndex
from llama_index_lancedb_tuning.store.encoder_record import recorded_encoders
from llama_index_lancedb_tuning.store.table import vector_field_metadata
from llama_index_lancedb_tuning.tuning.table_tuning import tune_index

KEY = "sk-local-adapter-test-key"
EMBEDDING = "text-embedding-3-small"
QUOKKA = "Quokkas photobomb tourists on Rottnest Island."

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def server():
    srv = OpenAIServer().start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def subset(qa_dataset):
    """80 queries of data_qa.csv over the 40 contexts they answer, split 80/20 by query."""
    ids = qa_dataset.query_ids[:80]
    docs = {d for q in ids for d in qa_dataset.relevant_docs[q]}
    data = QADataset(
        {q: qa_dataset.queries[q] for q in ids},
        {d: t for d, t in qa_dataset.corpus.items() if d in docs},
        {q: qa_dataset.relevant_docs[q] for q in ids},
    )
    return data.split(0.2, seed=0)


def _openai(server, key=KEY):
    return OpenAIEmbedding(model_name=EMBEDDING, api_base=server.url, api_key=key)


def _hits(pack, queries, query_type="vector"):
    return [[(h.node.node_id, round(h.score, 5)) for h in pack.retrievers[query_type].retrieve(q)] for q in queries]


def _stored(table):
    return {r["id"]: np.asarray(r["vector"], dtype=np.float32).tobytes() for r in table.to_arrow().to_pylist()}


def test_an_openai_table_tunes_an_adapter_that_reopens_without_a_model_and_rolls_back(
    tmp_path, monkeypatch, server, subset, default_model_path
):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    train, test = subset
    nodes = chunk_corpus(train.corpus | test.corpus, model_tokenizer(default_model_path), 256, 16)
    embedding = _openai(server)
    pack = FinetunedLanceDBRetrieverPack(nodes=nodes, embed_model=embedding, uri=str(tmp_path), table_name="t")
    table = pack.get_modules()["table"]
    vectors, version = _stored(table), table.version
    probes = [test.queries[q] for q in test.query_ids[:5]]
    plain = _hits(pack, probes)

    embedded = len(server.embedded)
    result = pack.finetune(train, mode="adapter")

    # The gate scored both on the carve of train the adapter never trained on, and let it in.
    assert result.serving is not None and result.tuned is not None and result.tuned.n == 13
    assert result.promoted, result.reason
    assert result.version > version and table.version == result.version and "promotion-1" in table.tags.list()
    assert [(p.number, p.mode, p.serving) for p in pack.history()] == [(1, "adapter", True)]
    assert _stored(table) == vectors  # nothing re-embedded
    folder = result.model_path
    assert {"adapter.safetensors", "adapter.json", "metrics.json", "query_vectors.npy"} <= {p.name for p in folder.iterdir()}
    assert result.metrics["n_queries_embedded"] == len(train) and result.metrics["best_epoch"] > 0
    # The training queries went to the API once each (the gate's are embedded again to be scored); the key was
    # never written down.
    gate_queries = set(train.split(0.2, 42)[1].queries.values())
    calls = Counter(server.embedded[embedded:])
    assert all(calls[t] == 1 for t in train.queries.values() if t not in gate_queries)
    assert all(KEY not in p.read_text(errors="ignore") for p in folder.iterdir())
    assert KEY not in json.dumps(vector_field_metadata(table))
    assert recorded_encoders(table).query_encoder == str(folder.resolve())

    assert isinstance(pack.query_encoder, AdaptedEmbedding) and pack.document_encoder is embedding
    probe = probes[0]
    adapted = pack.query_encoder.get_query_embedding(probe)
    assert not np.allclose(adapted, embedding.get_query_embedding(probe), atol=1e-3)
    np.testing.assert_allclose(asyncio.run(pack.query_encoder.aget_query_embedding(probe)), adapted, atol=1e-6)
    tuned = _hits(pack, probes)
    assert tuned != plain

    # No model argument: the OpenAIEmbedding is made again from adapter.json, its key read from the environment.
    with pytest.raises(
        TuningError, match=r"cannot rebuild the adapter's base embedding OpenAIEmbedding \(OpenAIError: .*keys are never recorded"
    ) as err:
        FinetunedLanceDBRetrieverPack.from_table(uri=str(tmp_path), table_name="t")
    assert "\n" not in str(err.value)
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    reopened = FinetunedLanceDBRetrieverPack.from_table(uri=str(tmp_path), table_name="t")
    assert isinstance(reopened.query_encoder, AdaptedEmbedding)
    assert isinstance(reopened.document_encoder, OpenAIEmbedding) and reopened.document_encoder.api_base == server.url
    assert _hits(reopened, probes) == tuned
    # The app's own embedding, key in hand: the adapter the table records for it is applied.
    monkeypatch.delenv("OPENAI_API_KEY")
    own = FinetunedLanceDBRetrieverPack.from_table(uri=str(tmp_path), table_name="t", embed_model=_openai(server))
    assert isinstance(own.query_encoder, AdaptedEmbedding) and _hits(own, probes) == tuned

    # A row added while the adapter serves survives the rollback, embedded again by the app's embedding (an API
    # embedding has no path to be loaded by).
    pack.add(nodes=[TextNode(id_="quokka", text=QUOKKA)])
    pack.rollback()
    assert pack.query_encoder is embedding and pack.document_encoder is embedding
    assert _hits(pack, probes) == plain
    assert _stored(table)["quokka"] == np.asarray(embedding.get_text_embedding(QUOKKA), dtype=np.float32).tobytes()
    plain_again = FinetunedLanceDBRetrieverPack.from_table(uri=str(tmp_path), table_name="t", embed_model=_openai(server))
    assert plain_again.query_encoder.model_name == EMBEDDING and _hits(plain_again, probes) == plain


def test_a_huggingface_embedding_as_the_black_box(tmp_path, small_nodes, small_dataset, default_model_path):
    train, test = small_dataset.split(0.25, seed=0)
    embedding = HuggingFaceEmbedding(model_name=default_model_path)
    pack = FinetunedLanceDBRetrieverPack(nodes=small_nodes, embed_model=embedding, uri=str(tmp_path), table_name="t")
    probes = [test.queries[q] for q in test.query_ids[:5]]
    plain = _hits(pack, probes)
    result = pack.finetune(train, mode="adapter", adapter="linear", gate=False)
    assert result.promoted and json.loads((result.model_path / "adapter.json").read_text())["kind"] == "linear"
    assert pack.query_encoder.base is embedding
    tuned = _hits(pack, probes)
    assert tuned != plain
    # Documents embed as the base embeds them; only queries go through the adapter.
    np.testing.assert_allclose(
        pack.query_encoder.get_text_embedding(probes[0]), embedding.get_text_embedding(probes[0]), atol=1e-6
    )

    reopened = FinetunedLanceDBRetrieverPack.from_table(uri=str(tmp_path), table_name="t")
    assert isinstance(reopened.query_encoder, AdaptedEmbedding)
    assert reopened.document_encoder.model_name == default_model_path
    assert _hits(reopened, probes) == tuned

    # A tuning into a folder holding only a killed attempt's query vectors embeds no query again.
    again = tmp_path / "again"
    again.mkdir()
    for name in ("query_vectors.npy", "query_vectors.json"):
        shutil.copy(result.model_path / name, again / name)
    rerun = pack.finetune(train, mode="adapter", adapter="linear", gate=False, output_dir=again)
    assert rerun.metrics["n_queries_embedded"] == 0 and rerun.metrics["val_after"] == result.metrics["val_after"]


def test_lancedb_tune_run_tunes_an_adapter_against_the_baseline_table(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", "examples/sample_qa.csv", "--out", str(out), "--tune", "adapter", "--adapter", "linear", "--quiet"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["tune"] == "adapter" and report["timings_s"]["reembed"] == 0.0
    assert report["finetune_metrics"]["mode"] == "adapter" and (out / "model" / "adapter.safetensors").is_file()
    assert {r["model"] for r in report["results"]} == {"baseline", "tuned"}


@pytest.fixture(scope="module")
def torch_index(tmp_path_factory, small_nodes, embed_model):
    return LanceDBIndex.build(small_nodes, embed_model, str(tmp_path_factory.mktemp("db")), "t", show_progress=False)


@pytest.mark.parametrize("kind", ["linear", "mlp"])
def test_an_untrained_adapter_retrieves_what_its_base_does(tmp_path, torch_index, small_dataset, embed_model, kind):
    adapter = QueryAdapter(384, kind)
    queries = [small_dataset.queries[q] for q in small_dataset.query_ids[:10]]
    base_vectors = embed_queries(embed_model, queries)
    np.testing.assert_allclose(adapter.adapt(base_vectors), base_vectors, atol=1e-6)
    save_adapter(adapter, tmp_path / "adapter", embed_model)
    adapted = LanceDBIndex(torch_index.table, embed_model, AdaptedEmbedding.load(tmp_path / "adapter", embed_model))
    for query_type in ("vector", "hybrid"):
        base_hits = [[n.node.node_id for n in torch_index.retriever(query_type).retrieve(q)] for q in queries]
        assert [[n.node.node_id for n in adapted.retriever(query_type).retrieve(q)] for q in queries] == base_hits


def test_bad_adapter_requests_are_refused_in_one_line(tmp_path, torch_index, small_nodes, small_dataset, embed_model):
    train, index = small_dataset, torch_index
    cases = [
        # An embedding of another dimension than the stored vectors.
        (
            lambda: tune_index(
                LanceDBIndex(index.table, MockEmbedding(embed_dim=8, model_name="mock")),
                train,
                "adapter",
                tmp_path / "a",
                gate=False,
            ),
            "the embedding makes 8-dim query vectors but the table stores 384-dim ones",
        ),
        (
            lambda: tune_index(index, train, "adapter", tmp_path / "b", adapter="conv"),
            "unknown adapter 'conv'; use one of linear, mlp",
        ),
        (
            lambda: tune_index(index, train, "adapter", tmp_path / "c", base_model="x"),
            "an adapter maps the table's own embedding",
        ),
        (lambda: AdaptedEmbedding.load(tmp_path / "nothing", embed_model), "holds no finished adapter"),
    ]
    for call, message in cases:
        with pytest.raises(TuningError) as err:
            call()
        assert message in str(err.value) and "\n" not in str(err.value)
    save_adapter(QueryAdapter(384), tmp_path / "adapter", embed_model)
    with pytest.raises(TuningError, match="maps 384-dim query vectors but the embedding makes 8-dim ones"):
        AdaptedEmbedding.load(tmp_path / "adapter", MockEmbedding(embed_dim=8))
    # A table whose rows hold no vector.
    bare = LanceDBIndex.build(small_nodes[:10], embed_model, str(tmp_path), "bare", show_progress=False)
    bare.table.update(values={"vector": None})
    with pytest.raises(TuningError, match=r"rows of the table store no vector to train the adapter against") as err:
        tune_index(bare, train, "adapter", tmp_path / "d", gate=False)
    assert "\n" not in str(err.value)
