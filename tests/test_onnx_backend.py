"""The ONNX Runtime encoder against the sentence-transformers one, on real data_qa chunks, and the
`auto` backend: int8 on a CPU, torch on CUDA, and a table's queries in the runtime of its vectors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from llama_index.core.embeddings import MockEmbedding
from llama_index.embeddings.huggingface import HuggingFaceEmbedding

from llama_index_lancedb_tuning import LanceDBIndex, TuningError, load_embed_model
from llama_index_lancedb_tuning.encoding.embed_models import BACKEND_KEY, embed_queries, embed_texts, resolve_backend
from llama_index_lancedb_tuning.store.table import vector_field_metadata


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def onnx_models(onnx_cache, default_model_path):
    from llama_index_lancedb_tuning.encoding.onnx_runtime import OnnxEmbedding

    return OnnxEmbedding(default_model_path, cache_dir=onnx_cache), OnnxEmbedding(
        default_model_path, int8=True, cache_dir=onnx_cache
    )


def test_fp32_gives_the_torch_vectors_and_int8_stays_close(onnx_models, embed_model, small_nodes, small_dataset):
    fp32, int8 = onnx_models
    texts = [n.text for n in small_nodes[:40]] + ["short", ""]
    torch_vectors = embed_texts(embed_model, texts)
    np.testing.assert_allclose(embed_texts(fp32, texts), torch_vectors, atol=1e-4)
    cosines = (embed_texts(int8, texts) * torch_vectors).sum(axis=1)
    assert cosines.min() > 0.95 and cosines.mean() > 0.98
    queries = [small_dataset.queries[q] for q in small_dataset.query_ids[:8]]
    np.testing.assert_allclose(embed_queries(fp32, queries), embed_queries(embed_model, queries), atol=1e-4)
    assert np.allclose(fp32.get_query_embedding(queries[0]), embed_queries(embed_model, queries[:1])[0], atol=1e-4)


def test_a_vector_does_not_depend_on_the_other_texts_it_is_encoded_with(onnx_models, small_nodes, small_dataset):
    queries = [small_dataset.queries[q] for q in small_dataset.query_ids[:12]]
    texts = [n.text for n in small_nodes[:12]] + queries
    for model in onnx_models:
        together, reversed_order = embed_texts(model, texts), embed_texts(model, texts[::-1])[::-1]
        alone = np.stack([embed_texts(model, [t])[0] for t in texts])
        np.testing.assert_allclose(together, alone, atol=1e-6)
        np.testing.assert_allclose(reversed_order, alone, atol=1e-6)
        # What evaluation scores (a batch of queries) is what a served query gets (one at a time).
        np.testing.assert_allclose(embed_queries(model, queries)[3], model.get_query_embedding(queries[3]), atol=1e-6)


def test_parallel_onnx_replicas_give_the_same_vectors(onnx_models, small_nodes):
    texts = [n.text for n in small_nodes]
    for model in onnx_models:
        np.testing.assert_allclose(embed_texts(model, texts, workers=2), embed_texts(model, texts, workers=1), atol=1e-5)


def test_export_is_made_once_and_reused(onnx_cache, default_model_path, onnx_models):
    from llama_index_lancedb_tuning.encoding.onnx_runtime import export_onnx

    files = sorted(onnx_cache.rglob("*.onnx"))
    assert [f.name for f in files] == ["model.onnx", "model_qint8_avx2.onnx"]
    stamps = [f.stat().st_mtime_ns for f in files]
    assert export_onnx(default_model_path, int8=True, cache_dir=onnx_cache) == files[1]
    assert [f.stat().st_mtime_ns for f in files] == stamps
    assert files[1].stat().st_size < files[0].stat().st_size / 2  # int8 weights


def test_an_index_built_with_onnx_answers_like_torch(tmp_path, onnx_models, embed_model, small_nodes, small_dataset):
    fp32, _ = onnx_models
    queries = [small_dataset.queries[q] for q in small_dataset.query_ids[:10]]
    ids = []
    for name, model in (("torch", embed_model), ("onnx", fp32)):
        index = LanceDBIndex.build(small_nodes, model, uri=str(tmp_path), table_name=name, show_progress=False)
        ids.append([[h.node.node_id for h in hits] for hits in index.retriever("vector", 5).retrieve_many(queries)])
    assert ids[0] == ids[1]


def test_bad_backend_choices_are_one_line_errors(default_model_path):
    with pytest.raises(TuningError, match="unknown backend 'tensorrt'"):
        load_embed_model(default_model_path, backend="tensorrt")
    with pytest.raises(TuningError, match="needs a local model directory"):
        load_embed_model("BAAI/bge-small-en-v1.5", backend="onnx")


@pytest.mark.parametrize(("cuda", "runtime"), [(False, "onnx-int8"), (True, "torch")])
def test_auto_is_int8_on_a_cpu_and_torch_on_cuda(monkeypatch, cuda, runtime):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert resolve_backend("auto") == runtime
    assert resolve_backend("onnx") == "onnx"


def test_a_table_is_queried_in_the_runtime_of_its_vectors(
    tmp_path, monkeypatch, onnx_cache, onnx_models, embed_model, default_model_path, small_nodes
):
    monkeypatch.setenv("LANCEDB_TUNE_CACHE", str(onnx_cache))  # the module's exports
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    uri, nodes = str(tmp_path), small_nodes[:20]
    default = LanceDBIndex.build(nodes, default_model_path, uri, "default", show_progress=False)
    assert vector_field_metadata(default.table)[BACKEND_KEY] == "onnx-int8"
    reopened = LanceDBIndex.open(default_model_path, uri, "default").embed_model
    assert reopened.int8 and reopened.model_name == default_model_path  # type: ignore[attr-defined]

    LanceDBIndex.build(nodes, embed_model, uri, "torch", show_progress=False)  # auto would pick int8 here
    assert isinstance(LanceDBIndex.open(default_model_path, uri, "torch").embed_model, HuggingFaceEmbedding)
    with pytest.raises(TuningError, match="made with the torch backend, not onnx-int8; load the model with backend='torch'"):
        LanceDBIndex.open(onnx_models[1], uri, "torch").add(nodes[:2])

    # A table that records no runtime (LlamaIndex's HuggingFaceEmbedding wrote it, say) is torch's.
    LanceDBIndex.build(nodes, MockEmbedding(embed_dim=384), uri, "foreign", show_progress=False)
    assert isinstance(LanceDBIndex.open(default_model_path, uri, "foreign").embed_model, HuggingFaceEmbedding)
