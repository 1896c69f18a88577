from __future__ import annotations

import os
import subprocess
import sys
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


def first_queries(dataset, n: int):
    """The first `n` queries of `dataset` over only the documents they point at."""
    from llama_index_lancedb_tuning import QADataset

    ids = dataset.query_ids[:n]
    docs = {d for q in ids for d in dataset.relevant_docs[q]}
    return QADataset(
        {q: dataset.queries[q] for q in ids},
        {d: t for d, t in dataset.corpus.items() if d in docs},
        {q: dataset.relevant_docs[q] for q in ids},
    )


def cli_in_a_fresh_process(argv: list[str]) -> subprocess.CompletedProcess:
    """`lancedb-tune ARGV` in a new interpreter; exit code 99 when torch, sentence-transformers,
    transformers or lancedb was imported before the command ended (a mistake must be named first)."""
    code = (
        "import sys; from llama_index_lancedb_tuning.cli import main; code = main(sys.argv[1:]); "
        "heavy = [m for m in ('torch', 'sentence_transformers', 'transformers', 'lancedb') if m in sys.modules]; "
        "sys.exit(code if not heavy else 99)"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    return subprocess.run([sys.executable, "-c", code, *argv], check=False, capture_output=True, text=True, env=env)


@pytest.fixture(scope="session")
def small_dataset(qa_dataset):
    """40 queries over the 20 contexts they answer: real data, small enough for seconds-long tests."""
    return first_queries(qa_dataset, 40)


@pytest.fixture(scope="session")
def default_model_path():
    from llama_index_lancedb_tuning import resolve_model

    return resolve_model(None)


@pytest.fixture(scope="session")
def embed_model():
    """The bundled MiniLM in torch: the reference the other runtimes are compared with."""
    from llama_index_lancedb_tuning import load_embed_model

    return load_embed_model(None, backend="torch")


@pytest.fixture(scope="session")
def small_nodes(small_dataset, default_model_path):
    from llama_index_lancedb_tuning import chunk_corpus, model_tokenizer

    return chunk_corpus(small_dataset.corpus, model_tokenizer(default_model_path), 128, 16)


@pytest.fixture(scope="module")
def one_torch_thread():
    """MiniLM on a shared 2-core machine: one intra-op thread is several times faster than two fighting."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def llamaindex_table(uri, dataset, model_path):
    """A table as a LlamaIndex app writes it: VectorStoreIndex over LanceDBVectorStore, one Document per corpus entry."""
    import lancedb
    from llama_index.core import Document, StorageContext, VectorStoreIndex
    from llama_index.core.node_parser import SentenceSplitter
    from llama_index.embeddings.huggingface import HuggingFaceEmbedding
    from llama_index.vector_stores.lancedb import LanceDBVectorStore

    docs = [
        Document(text=text, doc_id=doc_id, metadata={"file_name": f"{doc_id}.txt"}) for doc_id, text in dataset.corpus.items()
    ]
    store = LanceDBVectorStore(uri=uri, table_name="li", mode="overwrite")
    VectorStoreIndex.from_documents(
        docs,
        storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=HuggingFaceEmbedding(model_name=model_path),
        transformations=[SentenceSplitter(chunk_size=128, chunk_overlap=16)],
    )
    return lancedb.connect(uri).open_table("li")
