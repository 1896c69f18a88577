"""What int8 encoding costs in hit-rate: the base model's vector hit@k with each encoder backend, on every query.

The base model trains on nothing, so every query of a dataset is fair to score. Two corpora:
data_qa.csv (220 queries over its 110 chunks) and the Uber half of the Lyft → Uber 10-K benchmark
(790 queries over its 395 chunks), each chunked as `lancedb-tune run` does (`pipeline.build_nodes`).
Each backend indexes the nodes into its own table and embeds the queries; per dataset the output
gives n, hit@k with its 95% bootstrap interval, and the exact McNemar p of each backend against the
first, with the queries only one of the two finds.

    python benchmarks/backend_quality.py [--backends torch,onnx-int8] [--k 5]

Prints one JSON object as its last line.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default="torch,onnx-int8", help="the first is the reference of the McNemar tests")
    parser.add_argument("--k", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import numpy as np

    from llama_index_lancedb_tuning import LanceDBIndex, RunConfig, load_embed_model, load_qa_dataset
    from llama_index_lancedb_tuning.evaluation.evaluator import evaluate_retriever
    from llama_index_lancedb_tuning.evaluation.metrics import mcnemar_p
    from llama_index_lancedb_tuning.tuning.run_loop import build_nodes

    datasets = {
        "data_qa": load_qa_dataset(DATA / "data_qa.csv"),
        "uber": load_qa_dataset(DATA / "lyft_uber_10k" / "val_dataset.json"),
    }
    backends = args.backends.split(",")
    out: dict = {"k": args.k, "backends": backends}
    with tempfile.TemporaryDirectory(prefix="backend-quality-") as uri:
        for name, ds in datasets.items():
            nodes = build_nodes(ds.corpus, None, RunConfig())
            rows, hits = {}, {}
            for backend in backends:
                start = time.perf_counter()
                index = LanceDBIndex.build(
                    nodes, load_embed_model(None, backend=backend), uri, f"{name}_{backend}", "overwrite", show_progress=False
                )
                result = evaluate_retriever(index.retriever("vector", args.k), ds, args.k)
                hits[backend] = np.array(result.per_query) > 0
                rows[backend] = {
                    "hit": result.hit_rate,
                    "ci95": list(result.ci95),
                    "mrr": result.mrr,
                    "s": round(time.perf_counter() - start, 1),
                }
            reference = backends[0]
            for backend in backends[1:]:
                rows[backend]["p_vs_" + reference] = round(mcnemar_p(hits[reference], hits[backend]), 4)
                rows[backend]["only_" + reference] = int((hits[reference] & ~hits[backend]).sum())
                rows[backend]["only_" + backend] = int((hits[backend] & ~hits[reference]).sum())
            out[name] = {"n_queries": len(ds), "n_nodes": len(nodes), **rows}
            print(f"{name}: {json.dumps(out[name])}", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
