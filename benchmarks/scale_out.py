"""Past one machine, on data_qa: ingest on Ray against the single-process writer, and training
in two processes (torchrun, DDP) against one process on the same pairs and epochs.

- ingest: the data_qa nodes (chunked as `lancedb-tune run` chunks them) written by
  `write_nodes` in this process and by `LanceDBIndex.build(engine="ray")` on a local Ray
  cluster of `--ray-cpus` CPUs. The tables must hold the same rows: same ids, texts and
  metadata, vectors within 1e-5, and the same top-5 ids for every held-out query. Ray's rate
  includes starting its workers and loading a model in each.
- training: the reference split (80/20, seed 42); one process and two gloo processes with the
  same `--batch-size`, which is the global batch: the no-duplicates sampler forms the same
  batches in both, and under DDP each process takes half of each, so both take the same
  optimizer steps over the same batches of pairs. Both models index the nodes and are scored
  on the held-out queries (vector hit@5).

    python benchmarks/scale_out.py [--epochs 2] [--batch-size 32] [--ray-cpus 2]

Prints, as its last line, one JSON object: rows, rows_match, ray_nodes_per_s,
single_nodes_per_s, ddp_hit5, single_hit5, base_hit5 and the details.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA_QA = ROOT.parent / "shared" / "data" / "data_qa.csv"


def finetune_config(epochs: int, batch_size: int):
    from llama_index_lancedb_tuning import FinetuneConfig

    # No validation carve-out and no refit: both runs train once on every training pair.
    return FinetuneConfig(epochs=epochs, batch_size=batch_size, val_fraction=0.0, refit=False, show_progress=False)


def data():
    from llama_index_lancedb_tuning import RunConfig, build_nodes, load_labeled_csv

    dataset = load_labeled_csv(DATA_QA)
    train, test = dataset.split(0.2, 42)
    return train, test, build_nodes(dataset.corpus, None, RunConfig())


def train(out: str, epochs: int, batch_size: int) -> None:
    """One process's share of training; run alone or under torchrun."""
    from llama_index_lancedb_tuning import EmbeddingFinetuner

    train_set, _, nodes = data()
    EmbeddingFinetuner(finetune_config(epochs, batch_size)).fit(train_set, out, nodes)


def vector_hit5(model: str | None, nodes, test, uri: str, name: str) -> float:
    from llama_index_lancedb_tuning import LanceDBIndex, evaluate_retriever

    index = LanceDBIndex.build(nodes, model, uri=uri, table_name=name, show_progress=False)
    return evaluate_retriever(index.retriever("vector", 5), test, k=5).hit_rate


def same_tables(ray_table, local_table, queries, embed_model) -> dict:
    import numpy as np

    from llama_index_lancedb_tuning import embed_queries
    from llama_index_lancedb_tuning.store.table import vector_search_many

    a, b = ray_table.to_arrow().sort_by("id"), local_table.to_arrow().sort_by("id")
    va = np.asarray(a.column("vector").to_pylist(), dtype=np.float32)
    vb = np.asarray(b.column("vector").to_pylist(), dtype=np.float32)
    vectors = embed_queries(embed_model, queries)
    top = [
        [[h.node.node_id for h in hits] for hits in vector_search_many(t, list(vectors), 5, 20)] for t in (ray_table, local_table)
    ]
    return {
        "schema_equal": a.schema == b.schema,
        "rows_equal_but_vectors": a.drop(["vector"]).equals(b.drop(["vector"])),
        "max_vector_diff": float(np.abs(va - vb).max()),
        "same_top5": top[0] == top[1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--ray-cpus", type=int, default=2)
    parser.add_argument("--train", metavar="OUT", help="internal: train into OUT (what each torchrun process runs)")
    args = parser.parse_args()
    if args.train:
        train(args.train, args.epochs, args.batch_size)
        return

    import ray

    from llama_index_lancedb_tuning import LanceDBIndex, load_embed_model
    from llama_index_lancedb_tuning.store.table import connect, write_nodes

    started = time.perf_counter()
    train_set, test, nodes = data()
    work = Path(tempfile.mkdtemp(prefix="scale_out_"))
    uri = str(work / "db")
    # The runtime Ray's workers load for a model named by path (ray_ingest.worker_model): like with like.
    embed_model = load_embed_model(None, backend="torch")

    t = time.perf_counter()
    local = write_nodes(nodes, embed_model, connect(uri), "single", show_progress=False)
    single_s = time.perf_counter() - t
    ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
    t = time.perf_counter()
    ray_index = LanceDBIndex.build(nodes, None, uri=uri, table_name="ray", engine="ray", show_progress=False)
    ray_s = time.perf_counter() - t
    ray.shutdown()
    check = same_tables(ray_index.table, local, [test.queries[q] for q in test.query_ids], embed_model)
    rows_match = (
        check["schema_equal"] and check["rows_equal_but_vectors"] and check["max_vector_diff"] < 1e-5 and check["same_top5"]
    )
    print(json.dumps({"ingest": {"single_s": round(single_s, 2), "ray_s": round(ray_s, 2), **check}}), flush=True)

    t = time.perf_counter()
    train(str(work / "single"), args.epochs, args.batch_size)
    single_train_s = time.perf_counter() - t
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]), "OMP_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", __file__]
    t = time.perf_counter()
    subprocess.run(
        [*launch, "--train", str(work / "ddp"), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size)],
        env=env,
        check=True,
    )
    ddp_train_s = time.perf_counter() - t
    print(json.dumps({"train": {"single_s": round(single_train_s, 2), "ddp_s": round(ddp_train_s, 2)}}), flush=True)

    single_hit5 = vector_hit5(str(work / "single"), nodes, test, uri, "single_tuned")
    ddp_hit5 = vector_hit5(str(work / "ddp"), nodes, test, uri, "ddp_tuned")
    base_hit5 = vector_hit5(None, nodes, test, uri, "base")  # in the tuned models' runtime
    print(
        json.dumps(
            {
                "rows": ray_index.table.count_rows(),
                "rows_match": rows_match,
                "ray_nodes_per_s": round(len(nodes) / ray_s, 1),
                "single_nodes_per_s": round(len(nodes) / single_s, 1),
                "ddp_hit5": ddp_hit5,
                "single_hit5": single_hit5,
                "base_hit5": base_hit5,
                "hit5_gap": round(abs(ddp_hit5 - single_hit5), 4),
                "n_test_queries": len(test),
                "n_train_queries": len(train_set),
                "epochs": args.epochs,
                "batch": {"global": args.batch_size, "ddp_per_process": args.batch_size // 2, "ddp_processes": 2},
                "ray_cpus": args.ray_cpus,
                "wall_s": round(time.perf_counter() - started, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
