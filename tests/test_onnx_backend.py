"""The ONNX Runtime encoder against the sentence-transformers one, on real data_qa chunks."""

from __future__ import annotations

import numpy as np
import pytest

from llama_index_lancedb_tuning import LanceDBIndex, TuningError, load_embed_model
from llama_index_lancedb_tuning.encoding import embed_queries, embed_texts


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def onnx_models(onnx_cache, default_model_path):
    from llama_index_lancedb_tuning.onnx_backend import OnnxEmbedding

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


def test_parallel_onnx_replicas_give_the_same_vectors(onnx_models, small_nodes):
    texts = [n.text for n in small_nodes]
    for model in onnx_models:
        np.testing.assert_allclose(embed_texts(model, texts, workers=2), embed_texts(model, texts, workers=1), atol=1e-5)


def test_export_is_made_once_and_reused(onnx_cache, default_model_path, onnx_models):
    from llama_index_lancedb_tuning.onnx_backend import export_onnx

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
