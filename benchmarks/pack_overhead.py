"""Overhead of a vector query through FinetunedLanceDBRetrieverPack vs the same work done by hand.

pack:  pack.retrievers["vector"].retrieve(q)             (LlamaIndex retriever, nodes with scores)
raw:   embed_queries(model, [q]) + table.search(v).limit(k).to_list()

Both run in the same process on the same table and model, interleaved query by query
(alternating which goes first) so CPU contention hits both alike. Prints the medians over
--queries queries, the ratio (target <= 1.3x) and a breakdown of where the pack's extra time goes.

    python benchmarks/pack_overhead.py [--queries 200] [--k 5] [--threads N] [--model PATH]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from llama_index_lancedb_tuning import chunk_corpus, load_embed_model, load_labeled_csv, model_tokenizer, resolve_model
from llama_index_lancedb_tuning.encoding.embed_models import embed_queries
from llama_index_lancedb_tuning.pack import FinetunedLanceDBRetrieverPack

SHARED_QA = Path(__file__).resolve().parents[2] / "shared" / "data" / "data_qa.csv"
TOPICS = ["revenue", "drivers", "delivery", "freight", "riders", "safety", "regulation", "cash", "tax", "growth"]


def corpus_and_queries(n_queries: int) -> tuple[dict[str, str], list[str], str]:
    if SHARED_QA.exists():
        ds = load_labeled_csv(SHARED_QA)
        queries = [ds.queries[q] for q in ds.query_ids]
        return ds.corpus, (queries * (n_queries // len(queries) + 1))[:n_queries], f"{SHARED_QA.name} ({len(ds.corpus)} contexts)"
    corpus = {
        f"doc{i}": " ".join(
            f"Section {i} discusses {TOPICS[(i + j) % len(TOPICS)]} in quarter {j % 4 + 1} with figures {i * j}."
            for j in range(12)
        )
        for i in range(300)
    }
    queries = [f"What did section {i % 300} say about {TOPICS[i % len(TOPICS)]}?" for i in range(n_queries)]
    return corpus, queries, "synthetic (300 documents)"


def median_ms(samples: list[float]) -> float:
    return 1000 * statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--model", help="embedding model (default: the bundled MiniLM)")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    corpus, queries, source = corpus_and_queries(args.queries)
    model = load_embed_model(args.model)
    nodes = chunk_corpus(corpus, model_tokenizer(resolve_model(args.model)), 128, 16)
    with tempfile.TemporaryDirectory() as tmp:
        pack = FinetunedLanceDBRetrieverPack(nodes=nodes, embed_model=model, uri=tmp, table_name="bench", similarity_top_k=args.k)
        retriever = pack.retrievers["vector"]
        table = pack.get_modules()["table"]

        def via_pack(q: str) -> object:
            return retriever.retrieve(q)

        def raw(q: str) -> object:
            v = embed_queries(model, [q])[0]
            return table.search(v).limit(args.k).to_list()

        for q in queries[:10]:  # warm-up: first calls pay for lazy init in torch and lance
            via_pack(q)
            raw(q)

        times: dict[str, list[float]] = {"pack": [], "raw": [], "embed": [], "search_raw": [], "search_pack": []}
        for i, q in enumerate(queries):
            order = (("pack", via_pack), ("raw", raw)) if i % 2 == 0 else (("raw", raw), ("pack", via_pack))
            for name, fn in order:
                start = time.perf_counter()
                fn(q)
                times[name].append(time.perf_counter() - start)
            # Breakdown: the embedding alone, and each search given the vector.
            start = time.perf_counter()
            v = embed_queries(model, [q])[0]
            times["embed"].append(time.perf_counter() - start)
            start = time.perf_counter()
            table.search(v).limit(args.k).to_list()
            times["search_raw"].append(time.perf_counter() - start)
            start = time.perf_counter()
            retriever._search(q, v)
            times["search_pack"].append(time.perf_counter() - start)

    med = {name: median_ms(v) for name, v in times.items()}
    ratio = med["pack"] / med["raw"]
    print(f"corpus: {source}, {len(nodes)} nodes; {len(queries)} queries, k={args.k}; torch threads={torch.get_num_threads()}")
    print(f"pack retriever  median {med['pack']:8.2f} ms")
    print(f"raw lancedb     median {med['raw']:8.2f} ms")
    print(f"ratio pack/raw  {ratio:.2f}x  (target <= 1.30x) {'OK' if ratio <= 1.3 else 'ABOVE TARGET'}")
    print(
        f"breakdown (median ms): embed {med['embed']:.2f} | raw search {med['search_raw']:.2f} | "
        f"pack search+nodes {med['search_pack']:.2f} | pack framework {med['pack'] - med['embed'] - med['search_pack']:+.2f}"
    )


if __name__ == "__main__":
    main()
