"""One validated configuration: bad choices and numbers fail at construction, k and seed are given once."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import pytest

from llama_index_lancedb_tuning.config import ChunkingConfig, FinetuneConfig, RerankerSpec, RunConfig, SearchConfig
from llama_index_lancedb_tuning.errors import TuningError
from llama_index_lancedb_tuning.evaluation.caveats import corpus_overlap_warnings, queries_for_half_width, sample_size_warnings

ROOT = Path(__file__).resolve().parents[1]


def test_run_config_is_the_one_source_of_k_and_seed():
    config = RunConfig(k=10, seed=7)
    assert (config.finetune.k, config.finetune.seed) == (10, 7)
    given = RunConfig(k=3, finetune=FinetuneConfig(epochs=1, k=9, seed=1))
    assert (given.finetune.k, given.finetune.seed, given.finetune.epochs) == (3, 42, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.k = 4  # type: ignore[misc]  # a validated config stays valid


def test_the_recipe_follows_the_source_of_pairs():
    assert (RunConfig().finetune.epochs, RunConfig().finetune.learning_rate) == (1, 1e-4)
    generated = RunConfig(pairs="offline", k=8)
    assert (generated.finetune.epochs, generated.finetune.learning_rate, generated.finetune.k) == (2, 3e-5, 8)


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: FinetuneConfig(loss="bogus"), "unknown loss 'bogus'; use one of mnrl, cached_mnrl, gist"),
        (lambda: FinetuneConfig(positives="some"), "unknown positives 'some'"),
        (lambda: FinetuneConfig(adapter="conv"), "unknown adapter 'conv'; use one of linear, mlp"),
        (lambda: RunConfig(tune="both"), "unknown tune 'both'; use one of query, full, adapter"),
        (lambda: RunConfig(pairs="web"), "unknown pairs 'web'; use one of labeled, offline, llm"),
        (lambda: RunConfig(backend="tensorrt"), "unknown backend 'tensorrt'"),
        (lambda: RunConfig(engine="spark"), "unknown engine 'spark'; use one of local, ray"),
        (lambda: RunConfig(hybrid="max"), "unknown hybrid 'max'; use one of rrf, linear"),
        (lambda: RunConfig(reranker="bm25"), "unknown reranker 'bm25'; use fusion, cohere[:MODEL] or cross-encoder:PATH"),
        (lambda: RunConfig(pairs="llm"), "pairs llm needs llm openai:MODEL or ollama:MODEL"),
    ],
)
def test_bad_choices_fail_at_construction(make, expected):
    with pytest.raises(TuningError) as info:
        make()
    assert expected in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: FinetuneConfig(learning_rate=math.inf), "learning_rate must be a finite number, got inf"),
        (lambda: FinetuneConfig(learning_rate=math.nan), "learning_rate must be a finite number, got nan"),
        (lambda: FinetuneConfig(learning_rate=0.0), "learning_rate must be a positive number"),
        (lambda: FinetuneConfig(warmup_ratio=math.inf), "warmup_ratio must be a finite number"),
        (lambda: FinetuneConfig(epochs=0), "epochs must be at least 1, got 0"),
        (lambda: FinetuneConfig(adapter_epochs=0), "adapter_epochs must be at least 1, got 0"),
        (lambda: FinetuneConfig(adapter_learning_rate=-1e-3), "adapter_learning_rate must be a positive number"),
        (lambda: FinetuneConfig(batch_size=1), "batch_size must be at least 2, got 1"),
        (lambda: FinetuneConfig(val_fraction=1.0), "val_fraction must be from 0 up to 1, got 1.0"),
        (lambda: RunConfig(test_size=math.nan), "test_size must be a finite number"),
        (lambda: RunConfig(test_size=0.0), "test_size must be between 0 and 1, got 0.0"),
        (lambda: RunConfig(k=0), "k must be at least 1, got 0"),
        (lambda: RunConfig(rrf_k=0), "rrf_k must be at least 1"),
        (lambda: ChunkingConfig(chunk_size=-1), "chunk_size must be at least 0, got -1"),
        (lambda: ChunkingConfig(chunk_size=16, chunk_overlap=16), "chunk_overlap (16) must be smaller than chunk_size (16)"),
        (lambda: SearchConfig(overfetch=0), "overfetch must be at least 1"),
    ],
)
def test_numbers_out_of_range_or_not_finite_are_refused(make, expected):
    with pytest.raises(TuningError, match="^" + re.escape(expected)):
        make()


def test_the_reranker_spec_is_parsed_once_into_a_typed_value():
    assert RunConfig().reranker == RerankerSpec("fusion", None)
    cohere = RunConfig(reranker="cohere").reranker
    assert isinstance(cohere, RerankerSpec) and cohere.kind == "cohere" and cohere.model == "rerank-english-v3.0"
    assert str(RunConfig(reranker="cross-encoder:/models/ce").reranker) == "cross-encoder:/models/ce"
    with pytest.raises(TuningError, match="cross-encoder reranker needs a model"):
        RerankerSpec.parse("cross-encoder")


def test_config_imports_nothing_heavy():
    code = (
        "import sys, llama_index_lancedb_tuning.config, llama_index_lancedb_tuning.evaluation.caveats;"
        "print([m for m in ('torch', 'sentence_transformers', 'transformers', 'lancedb', 'llama_index', 'numpy') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": str(ROOT)}, check=True)
    assert json.loads(out.stdout.replace("'", '"')) == []


def test_small_query_sets_are_flagged_with_the_queries_a_meaningful_interval_needs():
    needed = queries_for_half_width(0.10)
    assert needed == math.ceil(1.96**2 * 0.8 * 0.2 / 0.10**2) == 62
    warnings = sample_size_warnings(n_test=1, n_val=3)
    assert len(warnings) == 2
    assert "the test set has only 1 query:" in warnings[0] and f"needs about {needed} queries" in warnings[0]
    assert "the validation set has only 3 queries" in warnings[1]
    assert sample_size_warnings(n_test=44, n_val=None) == []  # the reference run's 44 held-out queries


def test_corpora_that_share_no_passage_are_flagged():
    evaluation = {
        "d1": "The quarterly revenue of the ride sharing segment grew by forty percent compared to last year.",
        "d2": "Drivers in the delivery segment earned more per trip after the new incentive program started.",
    }
    related = {"report.pdf:p1": "Intro. " + evaluation["d1"] + " More text follows. " + evaluation["d2"]}
    unrelated = {"recipes.md": "Whisk the eggs with sugar until pale, then fold in the flour and bake for twenty minutes."}
    assert corpus_overlap_warnings(related, evaluation) == []
    (warning,) = corpus_overlap_warnings(unrelated, evaluation)
    assert warning.startswith("only 0 of 2 evaluation documents share a passage with the training documents")
