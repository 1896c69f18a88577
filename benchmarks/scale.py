"""Scale check: stream a large synthetic corpus into LanceDB, index it, and answer many queries.

Nodes come from a generator and are embedded and written in batches (`write_nodes`), so
memory is bounded by the batch size, not the corpus. Above `--min-rows` an approximate
vector index is built (`ensure_vector_index`). Queries are embedded in batches
(`retrieve_many`); each asks for a few words of one node, so hit@k is measurable, and a
sample is also run with brute force to give the ANN index's recall against exact search.

    nohup python benchmarks/scale.py --nodes 100000 --queries 10000 > /tmp/scale.log 2>&1 &

Prints, as its last line, one JSON object with times, rates and peak memory (ru_maxrss).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator

from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode

from llama_index_lancedb_tuning.encoding.embed_models import load_embed_model
from llama_index_lancedb_tuning.search.index import LanceDBIndex
from llama_index_lancedb_tuning.store.table import connect, ensure_vector_index, write_nodes

SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ne",
    "ru",
    "sa",
    "ti",
    "vo",
    "ze",
    "da",
    "fe",
    "gu",
    "ha",
    "jo",
    "pe",
    "qui",
    "ro",
    "su",
    "ta",
    "wi",
]
TOPICS = [
    "revenue",
    "drivers",
    "delivery",
    "freight",
    "riders",
    "safety",
    "regulation",
    "cash",
    "tax",
    "growth",
    "insurance",
    "marketing",
    "research",
    "hiring",
    "legal",
    "pricing",
    "network",
    "cities",
    "fleet",
    "energy",
]


def vocabulary(size: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    words: set[str] = set()
    while len(words) < size:
        words.add("".join(rng.choice(SYLLABLES) for _ in range(rng.randint(2, 4))))
    return sorted(words)


def node_text(i: int, vocab: list[str], words: int) -> str:
    rng = random.Random(i)  # text of node i depends on i only: queries regenerate it without storing the corpus
    body = " ".join(rng.choice(vocab) for _ in range(words))
    return f"Note {i} on {TOPICS[i % len(TOPICS)]}: {body}."


def nodes(n: int, vocab: list[str], words: int) -> Iterator[TextNode]:
    for i in range(n):
        yield TextNode(
            id_=f"n{i}",
            text=node_text(i, vocab, words),
            relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=f"doc{i // 10}")},
        )


def query_for(i: int, vocab: list[str], words: int, rng: random.Random) -> str:
    body = node_text(i, vocab, words).split(": ", 1)[1].rstrip(".").split()
    return f"{TOPICS[i % len(TOPICS)]} " + " ".join(rng.sample(body, min(8, len(body))))


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kilobytes on Linux


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--words", type=int, default=20, help="words per synthetic node")
    parser.add_argument("--batch", type=int, default=2048, help="nodes per embed-and-commit batch")
    parser.add_argument("--min-rows", type=int, default=50_000, help="build the ANN index at or above this many rows")
    parser.add_argument("--index-type", default="IVF_HNSW_SQ", choices=["IVF_HNSW_SQ", "IVF_PQ"])
    parser.add_argument("--exact-sample", type=int, default=500, help="queries also run with brute force for ANN recall")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--uri", help="LanceDB location (default: a temporary directory, removed afterwards)")
    parser.add_argument("--model", help="embedding model (default: the bundled MiniLM)")
    args = parser.parse_args()

    tmp = None if args.uri else tempfile.mkdtemp(prefix="scale-lancedb-")
    uri = args.uri or tmp
    vocab = vocabulary(5000, 0)
    out: dict = {"nodes": args.nodes, "queries": args.queries, "words_per_node": args.words, "batch": args.batch}
    try:
        model = load_embed_model(args.model)
        out["rss_after_model_mb"] = round(max_rss_mb(), 1)

        t = time.perf_counter()
        table = write_nodes(
            nodes(args.nodes, vocab, args.words),
            model,
            connect(uri),
            "scale",
            "overwrite",
            batch_size=args.batch,
            show_progress=True,
            total=args.nodes,
        )
        out["ingest_s"] = round(time.perf_counter() - t, 1)
        out["ingest_nodes_per_s"] = round(args.nodes / out["ingest_s"], 1)
        out["rows"] = table.count_rows()
        out["rss_after_ingest_mb"] = round(max_rss_mb(), 1)

        t = time.perf_counter()
        out["ann_index"] = args.index_type if ensure_vector_index(table, args.min_rows, args.index_type) else None
        out["index_build_s"] = round(time.perf_counter() - t, 1)
        out["rss_after_index_mb"] = round(max_rss_mb(), 1)
        print(json.dumps(out), file=sys.stderr, flush=True)

        rng = random.Random(1)
        targets = [rng.randrange(args.nodes) for _ in range(args.queries)]
        queries = [query_for(i, vocab, args.words, rng) for i in targets]
        retriever = LanceDBIndex(table, model).retriever("vector", args.k)
        t = time.perf_counter()
        results = retriever.retrieve_many(queries)
        out["query_s"] = round(time.perf_counter() - t, 1)
        out["queries_per_s"] = round(args.queries / out["query_s"], 1)
        out["hit_at_k"] = round(
            sum(f"n{i}" in {h.node.node_id for h in hits} for i, hits in zip(targets, results)) / args.queries, 4
        )

        # Recall of the ANN index against brute force on a sample: same vectors, same k.
        sample = list(range(min(args.exact_sample, args.queries)))
        vectors = model._model.encode([queries[i] for i in sample], batch_size=64, normalize_embeddings=True)
        agree = 0
        for i, v in zip(sample, vectors):
            exact = {
                r["id"]
                for r in table.search(v).distance_type("cosine").bypass_vector_index().select(["id"]).limit(args.k).to_list()
            }
            agree += len(exact & {h.node.node_id for h in results[i]})
        out["ann_recall_vs_exact"] = round(agree / (args.k * len(sample)), 4)
        out["peak_rss_mb"] = round(max_rss_mb(), 1)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
