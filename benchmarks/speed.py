"""Speed against the plain LlamaIndex path, side by side in one run on the same data and machine.

Three comparisons, each reported as a ratio (anchor seconds / our seconds):

- training: llama-index-finetuning's `SentenceTransformersFinetuneEngine` on the (query, passage)
  pairs of the fit queries (`--epochs`, `--batch-size`, validation set as ours) against
  `EmbeddingFinetuner` run with the recipe `lancedb-tune run` uses by default (`default`:
  `RunConfig()`'s fine-tuning settings and tuning mode, untouched) and with two variants on the
  anchor's settings (`no_epoch_eval`, `freeze_passages`). Every model is scored on the same
  held-out queries (vector hit@k, same index procedure, the default encoder backend). The engine
  runs in a subprocess of `.venv-bench` (llama-index-finetuning would downgrade packages this
  project needs, so it lives in its own venv); a missing one is built with benchmarks/anchor_env.sh.
- evaluation: `evaluate_retrievers` (batched) vs a loop of LlamaIndex's `RetrieverEvaluator`
  (hit_rate, mrr) over the same retrievers and queries; hit-rates must agree. `--eval-repeats`
  passes of each, interleaved; each side's median is compared.
- ingest: `LanceDBIndex.build` with the default encoder backend and the others of `--backends`
  (held-out hit@k of each beside) vs `VectorStoreIndex` over a `LanceDBVectorStore` with a
  `HuggingFaceEmbedding`, on the data_qa nodes repeated with new ids; and the default backend's
  ingest rate against its raw encoder's (`encode` alone on the same texts, best of a few batch sizes).

    python benchmarks/speed.py [--epochs 4] [--ingest-copies 3] [--backends torch,onnx] [--threads N] [--skip train]

Prints, as its last line, one JSON object: default_train_speedup and default_hit5 (the default
recipe), anchor_hit5, train_speedup (the fastest variant at the anchor's hit@k or better),
eval_speedup, ingest_speedup (the default backend), encode_limit_ratio, the load average at
start and end, and the details. Ratios are only meaningful within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA_QA = ROOT.parent / "shared" / "data" / "data_qa.csv"
BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"
ENCODE_BATCHES = (8, 16, 32, 64)


def ensure_anchor_env(log) -> None:
    """Builds .venv-bench with benchmarks/anchor_env.sh unless the engine already imports there."""
    probe = [str(BENCH_PYTHON), "-c", "import llama_index.finetuning"]
    if BENCH_PYTHON.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return
    log(f"{BENCH_PYTHON.parent.parent} missing or broken: building it with benchmarks/anchor_env.sh (several minutes of pip)")
    subprocess.run(["bash", str(ROOT / "benchmarks" / "anchor_env.sh"), sys.executable], check=True)


def raw_encode_rate(model, texts: list[str], batch_size: int) -> float:
    """Texts per second through the model's own batched `encode`, one model, no replicas, nothing written."""
    from llama_index_lancedb_tuning.encoding.onnx_runtime import OnnxEmbedding

    if isinstance(model, OnnxEmbedding):
        encoder = OnnxEmbedding(model.model_name, model.int8, batch_size)
        run = lambda: encoder.encode(texts)  # noqa: E731
    else:
        st = model._model
        run = lambda: st.encode(  # noqa: E731
            texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False
        )
    start = time.perf_counter()
    run()
    return len(texts) / (time.perf_counter() - start)


def anchor_train(train_json: str, val_json: str, out_dir: str, epochs: int, batch_size: int, model: str) -> None:
    """Runs inside .venv-bench: the LlamaIndex engine, timed from construction to saved model."""
    import warnings

    warnings.simplefilter("ignore")
    from llama_index.finetuning import EmbeddingQAFinetuneDataset, SentenceTransformersFinetuneEngine

    train = EmbeddingQAFinetuneDataset.from_json(train_json)
    val = EmbeddingQAFinetuneDataset.from_json(val_json)
    start = time.perf_counter()
    engine = SentenceTransformersFinetuneEngine(
        train,
        model_id=model,
        model_output_path=out_dir,
        batch_size=batch_size,
        val_dataset=val,
        epochs=epochs,
        show_progress_bar=False,
    )
    engine.finetune()
    print(json.dumps({"seconds": round(time.perf_counter() - start, 2)}))


def backend_quality(nodes, test, backend: str, uri: str, k: int) -> float:
    """Held-out vector hit@k of an index of the plain nodes built with this encoder backend
    (the ingest table holds copies that would crowd the top k)."""
    from llama_index_lancedb_tuning.encoding.embed_models import load_embed_model
    from llama_index_lancedb_tuning.evaluation.evaluator import evaluate_retriever
    from llama_index_lancedb_tuning.search.index import LanceDBIndex

    index = LanceDBIndex.build(
        nodes, load_embed_model(None, backend=backend), uri, f"quality_{backend}", "overwrite", show_progress=False
    )
    return evaluate_retriever(index.retriever("vector", k), test, k).hit_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--ingest-copies", type=int, default=3, help="data_qa nodes repeated this many times for ingest")
    parser.add_argument(
        "--variants",
        default="default,no_epoch_eval,freeze_passages",
        help="our training variants to time: default, no_epoch_eval, freeze_passages",
    )
    parser.add_argument("--threads", type=int, help="torch threads, here and in the anchor's process")
    parser.add_argument(
        "--backends",
        default="torch,onnx,onnx-int8",
        help="encoder backends timed for ingest beside the default one (which gives ingest_speedup and encode_limit_ratio)",
    )
    parser.add_argument("--eval-repeats", type=int, default=3, help="evaluation passes per side (interleaved; median)")
    parser.add_argument("--skip", default="", help="comma list of sections to skip: train, eval, ingest")
    parser.add_argument(
        "--anchor-train", nargs=6, metavar=("TRAIN", "VAL", "OUT", "EPOCHS", "BATCH", "MODEL"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.anchor_train:
        t, v, o, e, b, m = args.anchor_train
        anchor_train(t, v, o, int(e), int(b), m)
        return

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from sentence_transformers import SentenceTransformer

    from llama_index_lancedb_tuning import load_labeled_csv, resolve_model
    from llama_index_lancedb_tuning.encoding.embed_models import load_embed_model, resolve_backend
    from llama_index_lancedb_tuning.evaluation.evaluator import evaluate_retriever, evaluate_retrievers
    from llama_index_lancedb_tuning.search.index import LanceDBIndex
    from llama_index_lancedb_tuning.search.rerankers import hybrid_reranker, node_reranker
    from llama_index_lancedb_tuning.store.table import table_nodes
    from llama_index_lancedb_tuning.training.finetuner import EmbeddingFinetuner, FinetuneConfig
    from llama_index_lancedb_tuning.training.training_pairs import source_nodes, training_pairs
    from llama_index_lancedb_tuning.tuning.run_loop import RunConfig, build_nodes

    skip = set(filter(None, args.skip.split(",")))
    work = Path(tempfile.mkdtemp(prefix="speed-"))
    uri = str(work / "lancedb")
    base = resolve_model(None)
    ds = load_labeled_csv(DATA_QA)
    train, test = ds.split(0.2, 42)
    nodes = build_nodes(ds.corpus, None, RunConfig())
    out: dict = {
        "n_train_queries": len(train),
        "n_test_queries": len(test),
        "n_nodes": len(nodes),
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "default_backend": resolve_backend("auto"),
        "load_avg_start": [round(x, 2) for x in os.getloadavg()],
    }

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    if "train" not in skip:
        ensure_anchor_env(log)

    def vector_hit(model_path: str, table: str, reuse_table: bool = False) -> float:
        index = (
            LanceDBIndex.open(model_path, uri, table)
            if reuse_table
            else LanceDBIndex.build(nodes, model_path, uri, table, "overwrite", show_progress=False)
        )
        return evaluate_retriever(index.retriever("vector", args.k), test, args.k).hit_rate

    try:
        base_index = LanceDBIndex.build(nodes, base, uri, "base", "overwrite", show_progress=False)
        out["base_hit5"] = evaluate_retriever(base_index.retriever("vector", args.k), test, args.k).hit_rate
        log(f"base model vector hit@{args.k}: {out['base_hit5']}")

        # -- training -----------------------------------------------------------------
        if "train" not in skip:
            cfg = FinetuneConfig()
            fit_ds, val_ds = train.split(cfg.val_fraction, cfg.seed)  # what EmbeddingFinetuner.fit does internally
            by_source = source_nodes(train, nodes)
            pairs = training_pairs(fit_ds, by_source, SentenceTransformer(base), cfg.positives)
            anchor_train_json, anchor_val_json = work / "anchor_train.json", work / "anchor_val.json"
            anchor_train_json.write_text(
                json.dumps(
                    {
                        "queries": {f"q{i}": a for i, a in enumerate(pairs["anchor"])},
                        "corpus": {f"p{i}": p for i, p in enumerate(pairs["positive"])},
                        "relevant_docs": {f"q{i}": [f"p{i}"] for i in range(len(pairs))},
                    }
                )
            )
            anchor_val_json.write_text(
                json.dumps(
                    {  # the same node-level validation set our fit evaluates on
                        "queries": val_ds.queries,
                        "corpus": {n.node_id: n.text for ns in by_source.values() for n in ns},
                        "relevant_docs": {
                            q: [n.node_id for d in val_ds.relevant_docs[q] for n in by_source.get(d, [])]
                            for q in val_ds.query_ids
                        },
                    }
                )
            )
            out["n_train_pairs"] = len(pairs)
            log(f"{len(pairs)} training pairs, {len(val_ds)} validation queries")

            env = {**os.environ, "PYTHONWARNINGS": "ignore"}
            if args.threads:
                env["OMP_NUM_THREADS"] = str(args.threads)
            anchor_dir = work / "anchor_model"
            t = time.perf_counter()
            proc = subprocess.run(
                [
                    str(BENCH_PYTHON),
                    __file__,
                    "--anchor-train",
                    str(anchor_train_json),
                    str(anchor_val_json),
                    str(anchor_dir),
                    str(args.epochs),
                    str(args.batch_size),
                    base,
                ],
                capture_output=True,
                text=True,
                env=env,
                cwd=work,
            )
            if proc.returncode != 0:
                raise SystemExit(f"anchor training failed:\n{proc.stderr[-3000:]}")
            anchor_s = json.loads(proc.stdout.strip().splitlines()[-1])["seconds"]
            out["anchor_train_s"] = anchor_s
            out["anchor_train_process_s"] = round(time.perf_counter() - t, 2)
            out["anchor_hit5"] = vector_hit(str(anchor_dir), "anchor")
            log(f"anchor: {anchor_s}s (process {out['anchor_train_process_s']}s), hit@{args.k} {out['anchor_hit5']}")

            # default: what `lancedb-tune run` does with a labeled CSV, its recipe and tuning mode untouched
            # (a query-side run trains against the baseline table's stored vectors, as the pipeline does).
            # The variants take the anchor's epochs and batch size.
            run_config = RunConfig()
            query_side = run_config.tune == "query"
            configs = {
                "default": replace(run_config.finetune, show_progress=False, freeze_passages=query_side),
                "no_epoch_eval": FinetuneConfig(
                    epochs=args.epochs, batch_size=args.batch_size, show_progress=False, eval_each_epoch=False
                ),
                "freeze_passages": FinetuneConfig(
                    epochs=args.epochs,
                    batch_size=args.batch_size,
                    show_progress=False,
                    freeze_passages=True,
                    eval_each_epoch=False,
                ),
            }
            out["default_recipe"] = {
                "tune": run_config.tune,
                **{
                    f: getattr(configs["default"], f)
                    for f in ("epochs", "batch_size", "learning_rate", "eval_each_epoch", "refit")
                },
            }
            ours = {}
            for name in args.variants.split(","):
                model_dir = work / f"ours_{name}"
                stored = None
                if name == "default" and query_side:
                    stored = {n.node_id: n.embedding for n in table_nodes(base_index.table)}
                t = time.perf_counter()
                EmbeddingFinetuner(configs[name]).fit(train, model_dir, nodes, stored_vectors=stored)
                seconds = round(time.perf_counter() - t, 2)
                # A query-side model is scored on the base model's table, not re-indexed.
                hit = (
                    vector_hit(str(model_dir), "base", reuse_table=True)
                    if configs[name].freeze_passages
                    else vector_hit(str(model_dir), f"ours_{name}")
                )
                ours[name] = {"train_s": seconds, "hit5": hit, "speedup": round(anchor_s / seconds, 2)}
                log(f"ours {name}: {seconds}s, hit@{args.k} {hit}, speedup {ours[name]['speedup']}x")
            out["ours_train"] = ours
            if "default" in ours:
                out["default_train_speedup"] = ours["default"]["speedup"]
                out["default_hit5"] = ours["default"]["hit5"]
            # Headline: the fastest variant whose held-out hit@k is at least the anchor's (else the fastest).
            good = [n for n in ours if ours[n]["hit5"] >= out["anchor_hit5"]] or list(ours)
            best = min(good, key=lambda n: ours[n]["train_s"])
            out["ours_variant"] = best
            out["train_speedup"] = ours[best]["speedup"]
            out["ours_hit5"] = ours[best]["hit5"]

        # -- evaluation ---------------------------------------------------------------
        if "eval" not in skip:
            from llama_index.core.evaluation import RetrieverEvaluator

            reranker = node_reranker("fusion", args.k, base_index.embed_model, base_index.table)
            retrievers = base_index.retrievers(args.k, reranker, hybrid_reranker("rrf"))
            for r in retrievers.values():  # warm both paths alike: first LanceDB queries open files and caches
                r.retrieve(test.queries[test.query_ids[0]])
            by_source = source_nodes(ds, nodes)
            expected = {q: [n.node_id for d in test.relevant_docs[q] for n in by_source.get(d, [])] for q in test.query_ids}

            def anchor_eval() -> dict[str, tuple[float, float]]:
                rates = {}
                for qt, retriever in retrievers.items():
                    evaluator = RetrieverEvaluator.from_metric_names(["hit_rate", "mrr"], retriever=retriever)
                    results = [evaluator.evaluate(test.queries[q], expected_ids=expected[q]) for q in test.query_ids]
                    rates[qt] = (
                        round(sum(r.metric_vals_dict["hit_rate"] for r in results) / len(results), 4),
                        round(sum(r.metric_vals_dict["mrr"] for r in results) / len(results), 4),
                    )
                return rates

            # Interleaved repeats, each side's median: one pass is as exposed to a noisy moment as to its own cost.
            ours_times, anchor_times = [], []
            for _ in range(args.eval_repeats):
                t = time.perf_counter()
                ours_rows = evaluate_retrievers(retrievers, test, args.k)
                ours_times.append(time.perf_counter() - t)
                t = time.perf_counter()
                anchor_rates = anchor_eval()
                anchor_times.append(time.perf_counter() - t)
            ours_eval_s, anchor_eval_s = statistics.median(ours_times), statistics.median(anchor_times)
            ours_rates = {r.query_type: (r.hit_rate, r.mrr) for r in ours_rows}
            out["eval"] = {
                "ours_s": round(ours_eval_s, 2),
                "anchor_s": round(anchor_eval_s, 2),
                "ours_s_each": [round(x, 2) for x in ours_times],
                "anchor_s_each": [round(x, 2) for x in anchor_times],
                "ours": ours_rates,
                "anchor": anchor_rates,
                "same_hit_rates": all(ours_rates[q][0] == anchor_rates[q][0] for q in ours_rates),
            }
            out["eval_speedup"] = round(anchor_eval_s / ours_eval_s, 2)
            log(f"eval: ours {ours_eval_s:.2f}s, anchor {anchor_eval_s:.2f}s, same hit-rates {out['eval']['same_hit_rates']}")

        # -- ingest -------------------------------------------------------------------
        if "ingest" not in skip:
            from llama_index.core import StorageContext, VectorStoreIndex
            from llama_index.core.schema import MetadataMode
            from llama_index.embeddings.huggingface import HuggingFaceEmbedding
            from llama_index.vector_stores.lancedb import LanceDBVectorStore

            many = [n.model_copy(update={"id_": f"{n.node_id}-copy{c}"}) for c in range(args.ingest_copies) for n in nodes]
            default_backend = out["default_backend"]
            backends = [default_backend] + [b for b in args.backends.split(",") if b and b != default_backend]
            ours_models = {b: load_embed_model(base, backend=b) for b in backends}  # ONNX exports happen here, untimed
            anchor_model = HuggingFaceEmbedding(model_name=base)
            ours_s = {}
            for b, model in ours_models.items():
                t = time.perf_counter()
                LanceDBIndex.build(many, model, uri, f"ingest_{b}", "overwrite", show_progress=False)
                ours_s[b] = time.perf_counter() - t
                log(f"ingest {len(many)} nodes, ours ({b}): {ours_s[b]:.1f}s")
            t = time.perf_counter()
            store = LanceDBVectorStore(uri=uri, table_name="ingest_anchor", mode="overwrite")
            VectorStoreIndex(many, storage_context=StorageContext.from_defaults(vector_store=store), embed_model=anchor_model)
            anchor_ingest_s = time.perf_counter() - t
            log(f"ingest {len(many)} nodes, anchor: {anchor_ingest_s:.1f}s")
            # The limit: the default backend's own `encode` on the same texts (the distinct ones: the
            # copies repeat them), one model, best of a few batch sizes.
            texts = [n.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
            rates = {b: round(raw_encode_rate(ours_models[default_backend], texts, b), 1) for b in ENCODE_BATCHES}
            best_batch = max(rates, key=rates.__getitem__)
            log(f"raw encode ({default_backend}), texts/s by batch size: {rates}")
            by_backend = {}
            for b in backends:
                hit = out["base_hit5"] if b == default_backend else backend_quality(nodes, test, b, uri, args.k)
                by_backend[b] = {
                    "s": round(ours_s[b], 2),
                    "nodes_per_s": round(len(many) / ours_s[b], 1),
                    "speedup": round(anchor_ingest_s / ours_s[b], 2),
                    "hit5": hit,
                }
            out["ingest"] = {
                "nodes": len(many),
                "anchor_s": round(anchor_ingest_s, 2),
                "anchor_nodes_per_s": round(len(many) / anchor_ingest_s, 1),
                "ours": by_backend,
            }
            out["ingest_speedup"] = by_backend[default_backend]["speedup"]
            out["ingest_backend"] = default_backend
            out["encode_limit"] = {"backend": default_backend, "texts_per_s_by_batch": rates, "best_batch": best_batch}
            out["encode_limit_ratio"] = round(len(many) / ours_s[default_backend] / rates[best_batch], 2)
            log(f"ingest by backend: {by_backend}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
