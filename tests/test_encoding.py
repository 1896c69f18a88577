"""Texts to vectors: data-parallel replicas give the single model's vectors, on real data_qa chunks."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from llama_index.core.embeddings import MockEmbedding

from llama_index_lancedb_tuning.encoding import MAX_ENCODE_WORKERS, cpu_budget, embed_texts, encode_workers


def test_replicas_give_the_single_models_vectors_in_input_order(embed_model, small_nodes):
    texts = [n.text for n in small_nodes] + ["short", ""]
    single = embed_texts(embed_model, texts, workers=1)
    threads = torch.get_num_threads()
    parallel = embed_texts(embed_model, texts, workers=2)
    np.testing.assert_allclose(parallel, single, atol=1e-5)
    assert parallel.dtype == np.float32 and np.allclose(np.linalg.norm(parallel, axis=1), 1, atol=1e-5)
    assert torch.get_num_threads() == threads  # the replicas' thread setting does not leak


def test_replicas_are_made_once_per_model_and_kept(embed_model, small_nodes):
    texts = [n.text for n in small_nodes[:64]]
    embed_texts(embed_model, texts, workers=2)
    made = list(embed_model._replicas.encoders)  # kept by the embedding itself, not in a module-level registry
    embed_texts(embed_model, texts, workers=2)
    assert embed_model._replicas.encoders == made and len(made) == 2


def test_worker_count_follows_list_length_and_cores():
    assert encode_workers(10, 16) == 1  # too short to share
    assert encode_workers(10_000, 16) == min(cpu_budget(), MAX_ENCODE_WORKERS)


def test_other_embeddings_go_through_llamaindex_and_come_back_normalised():
    vectors = embed_texts(MockEmbedding(embed_dim=8), ["a", "b", "c"] * 40)
    assert vectors.shape == (120, 8) and np.allclose(np.linalg.norm(vectors, axis=1), 1)


def test_concurrent_callers_share_the_replicas_safely(embed_model, small_nodes):
    texts = [n.text for n in small_nodes[:96]]
    expected = embed_texts(embed_model, texts, workers=1)
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _: embed_texts(embed_model, texts, workers=2), range(3)))
    for vectors in results:
        np.testing.assert_allclose(vectors, expected, atol=1e-5)
