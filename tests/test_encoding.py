"""Texts to vectors: data-parallel replicas give the single model's vectors, on real data_qa chunks,
and are sized to the cores other work leaves free."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from llama_index.core.embeddings import MockEmbedding

from llama_index_lancedb_tuning.encoding import embed_models as encoding
from llama_index_lancedb_tuning.encoding.embed_models import MAX_ENCODE_WORKERS, busy_cores, embed_texts, replica_plan


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


@pytest.mark.parametrize(
    ("n_texts", "cores", "busy", "plan"),
    [
        (10_000, 2, 0.0, (2, 1)),  # idle: one single-threaded replica per core
        (10_000, 2, 0.2, (2, 1)),  # a little background work leaves both cores free
        (10_000, 2, 0.8, (1, 1)),  # a core taken: one model alone, at its own thread setting
        (10_000, 2, 3.5, (1, 1)),  # more work than cores
        (10, 2, 0.0, (1, 2)),  # too short to share
        (100, 16, 0.0, (3, 5)),  # two batches of 16 per replica at least
        (10_000, 16, 0.0, (MAX_ENCODE_WORKERS, 4)),  # more cores than replicas: threads inside each
        (10_000, 16, 9.6, (MAX_ENCODE_WORKERS, 1)),  # only the free cores are shared out
    ],
)
def test_replicas_are_sized_to_the_free_cores(n_texts, cores, busy, plan):
    assert replica_plan(n_texts, 16, cores, busy) == plan


def test_busy_cores_counts_other_processes_work_only(monkeypatch):
    # Over one second of wall time the machine's cores did 1.5 s of work, 0.5 s of it ours.
    machine = iter([SimpleNamespace(user=10.0, system=2.0, nice=4.0), SimpleNamespace(user=11.2, system=2.3, nice=9.0)])
    own = iter([SimpleNamespace(user=1.0, system=0.0), SimpleNamespace(user=1.4, system=0.1)])
    clock = iter([100.0, 101.0])
    monkeypatch.setattr("psutil.cpu_times", lambda: next(machine))
    monkeypatch.setattr("psutil.Process", lambda: SimpleNamespace(cpu_times=lambda: next(own)))
    monkeypatch.setattr(encoding.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(encoding.time, "sleep", lambda _: None)
    assert busy_cores() == pytest.approx(1.0)  # lower-priority (nice) work yields to ours: not counted


@pytest.mark.parametrize(("busy", "replicas"), [(0.0, 2), (1.0, None)])
def test_a_busy_machine_encodes_with_one_model(monkeypatch, embed_model, small_nodes, busy, replicas):
    texts = [n.text for n in small_nodes[:96]]
    expected = embed_texts(embed_model, texts, workers=1)
    calls = []
    parallel = encoding._parallel_encode
    monkeypatch.setattr(encoding, "cpu_budget", lambda: 2)
    monkeypatch.setattr(encoding, "busy_cores", lambda: busy)
    monkeypatch.setattr(encoding, "_parallel_encode", lambda *a: calls.append(a[3]) or parallel(*a))
    np.testing.assert_allclose(embed_texts(embed_model, texts), expected, atol=1e-5)
    assert calls == ([] if replicas is None else [replicas])


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
