from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub; a download attempt fails fast
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DATA_QA = SHARED_DATA / "data_qa.csv"
UBER_PDF = SHARED_DATA / "uber_2021.pdf"


@pytest.fixture(scope="session")
def qa_dataset():
    from llama_index_lancedb_tuning import load_labeled_csv

    if not DATA_QA.exists():
        pytest.fail(f"shared data missing: {DATA_QA} (tests read ../shared/data beside the project)")
    return load_labeled_csv(DATA_QA)


@pytest.fixture(scope="session")
def small_dataset(qa_dataset):
    """40 queries over the 20 contexts they answer: real data, small enough for seconds-long tests."""
    ids = qa_dataset.query_ids[:40]
    docs = {d for q in ids for d in qa_dataset.relevant_docs[q]}
    from llama_index_lancedb_tuning import QADataset

    return QADataset(
        {q: qa_dataset.queries[q] for q in ids},
        {d: t for d, t in qa_dataset.corpus.items() if d in docs},
        {q: qa_dataset.relevant_docs[q] for q in ids},
    )


@pytest.fixture(scope="session")
def default_model_path():
    from llama_index_lancedb_tuning import resolve_model

    return resolve_model(None)


@pytest.fixture(scope="session")
def embed_model():
    from llama_index_lancedb_tuning import load_embed_model

    return load_embed_model(None)


@pytest.fixture(scope="session")
def small_nodes(small_dataset, default_model_path):
    from llama_index_lancedb_tuning import chunk_corpus, model_tokenizer

    return chunk_corpus(small_dataset.corpus, model_tokenizer(default_model_path), 128, 16)
