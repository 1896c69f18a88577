"""Tuning a LlamaIndex-written table from the pack, query side vs full, against the bars it was built to meet.

For each mode, on its own copy of the same table (a `VectorStoreIndex` over `LanceDBVectorStore`
from data_qa.csv's contexts, each `Document` carrying its corpus id, the bundled model through
`HuggingFaceEmbedding`, `SentenceSplitter(chunk_size=128, chunk_overlap=16)`):
`from_table` -> `evaluate(test)` -> `finetune(train, mode)` -> `evaluate(test)`, on the run's
split (test_size 0.2, seed 42: 44 held-out queries on the full file).

    python benchmarks/pack_tuning.py [--data ../shared/data/data_qa.csv] [--contexts N] [--epochs E]

`--contexts` keeps the first N contexts and their queries (a smoke run); `--epochs` overrides
the recipe's epochs. Prints one line per mode and, last, one JSON object: held-out vector
hit@5 before/after per mode, training seconds, whether every stored vector is bit-identical,
and the checks (gain >= 0.09, query >= 5x faster, within 0.03 of full).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import lancedb
import numpy as np
from llama_index.core import Document, StorageContext, VectorStoreIndex
from llama_index.core.node_parser import SentenceSplitter
from llama_index.embeddings.huggingface import HuggingFaceEmbedding
from llama_index.vector_stores.lancedb import LanceDBVectorStore

from llama_index_lancedb_tuning import FinetunedLanceDBRetrieverPack, QADataset, load_labeled_csv, resolve_model

ROOT = Path(__file__).resolve().parents[1]


def first_contexts(dataset: QADataset, n: int | None) -> QADataset:
    if n is None:
        return dataset
    keep = set(list(dataset.corpus)[:n])
    ids = [q for q in dataset.query_ids if set(dataset.relevant_docs[q]) <= keep]
    return QADataset(
        {q: dataset.queries[q] for q in ids}, {d: dataset.corpus[d] for d in keep}, {q: dataset.relevant_docs[q] for q in ids}
    )


def llamaindex_table(uri: str, dataset: QADataset, model_path: str) -> None:
    store = LanceDBVectorStore(uri=uri, table_name="docs", mode="overwrite")
    VectorStoreIndex.from_documents(
        [Document(text=text, id_=doc_id) for doc_id, text in dataset.corpus.items()],
        storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=HuggingFaceEmbedding(model_name=model_path),
        transformations=[SentenceSplitter(chunk_size=128, chunk_overlap=16)],
    )


def stored_vectors(uri: str) -> dict[str, bytes]:
    rows = lancedb.connect(uri).open_table("docs").to_arrow().select(["id", "vector"]).to_pylist()
    return {r["id"]: np.asarray(r["vector"], dtype=np.float32).tobytes() for r in rows}


def vector_hit(results: list) -> float:
    return next(r.hit_rate for r in results if r.query_type == "vector")


def run_mode(
    mode: str, work: Path, dataset: QADataset, split: tuple[QADataset, QADataset], model_path: str, epochs: int | None
) -> dict:
    train, test = split
    uri = str(work / mode)
    llamaindex_table(uri, dataset, model_path)
    before_vectors = stored_vectors(uri)
    pack = FinetunedLanceDBRetrieverPack.from_table(uri=uri, table_name="docs", embed_model=model_path)
    before = pack.evaluate(test)
    overrides = {} if epochs is None else {"epochs": epochs}
    result = pack.finetune(train, mode=mode, **overrides)  # type: ignore[arg-type]
    after = pack.evaluate(test)
    return {
        "mode": mode,
        "n_test": len(test),
        "vector_hit5_before": vector_hit(before),
        "vector_hit5_after": vector_hit(after),
        "after_ci95": next(r.ci95 for r in after if r.query_type == "vector"),
        "train_seconds": result.train_seconds,
        "vectors_bit_identical": stored_vectors(uri) == before_vectors,
        "all_after": {r.query_type: r.hit_rate for r in after},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "data_qa.csv"))
    parser.add_argument("--contexts", type=int, default=None, help="keep the first N contexts (smoke run)")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    args = parser.parse_args()
    dataset = first_contexts(load_labeled_csv(args.data), args.contexts)
    split = dataset.split(0.2, 42)
    model_path = resolve_model(None)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [run_mode(mode, Path(tmp), dataset, split, model_path, args.epochs) for mode in ("query", "full")]
    for row in rows:
        print(json.dumps({k: v for k, v in row.items() if k != "all_after"}))
    query, full = rows
    checks = {
        "query_gain_at_least_0.09": query["vector_hit5_after"] - query["vector_hit5_before"] >= 0.09,
        "query_vectors_bit_identical": query["vectors_bit_identical"],
        "query_at_least_5x_faster": full["train_seconds"] >= 5 * query["train_seconds"],
        "query_within_0.03_of_full": query["vector_hit5_after"] >= full["vector_hit5_after"] - 0.03,
    }
    print(json.dumps({"query": query, "full": full, "checks": checks}))


if __name__ == "__main__":
    main()
