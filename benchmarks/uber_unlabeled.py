"""The unlabeled path on a real corpus: Uber's 2021 10-K, from PDF to a tuned LanceDB index.

Stages, each timed: read the PDF (one document per page), chunk in the model's tokens,
generate offline inverse-cloze pairs (no LLM, no labels), fine-tune, index the chunks with
the tuned model. There are no labeled queries for this corpus, so quality is the
fine-tuner's own held-out figure: hit@k of pseudo-queries carved from the generated pairs
before training (never trained on), before and after tuning.

    python benchmarks/uber_unlabeled.py --out out/uber [--epochs 1] [--max-pairs 1500]

Prints, as its last line, one JSON object with node and pair counts, seconds per stage and
the validation figures.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import time
from pathlib import Path

from llama_index_lancedb_tuning import (
    EmbeddingFinetuner,
    FinetuneConfig,
    LanceDBIndex,
    chunk_corpus,
    generate_offline_pairs,
    load_documents,
    model_tokenizer,
    resolve_model,
)

PDF = Path(__file__).resolve().parents[2] / "shared" / "data" / "uber_2021.pdf"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pdf", default=str(PDF))
    parser.add_argument("--out", default="out/uber")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-pairs", type=int, default=0, help="train on a seeded sample of this many pairs (0: all)")
    parser.add_argument("--chunk-size", type=int, default=128)
    parser.add_argument("--chunk-overlap", type=int, default=16)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    seconds: dict[str, float] = {}

    t = time.perf_counter()
    documents = load_documents(args.pdf)
    seconds["read"] = time.perf_counter() - t

    t = time.perf_counter()
    nodes = chunk_corpus(documents, model_tokenizer(resolve_model(None)), args.chunk_size, args.chunk_overlap)
    seconds["chunk"] = time.perf_counter() - t

    t = time.perf_counter()
    pairs = generate_offline_pairs(nodes)
    pairs.save_json(out / "pairs.json")
    seconds["generate"] = time.perf_counter() - t
    n_generated = len(pairs)
    if args.max_pairs and len(pairs) > args.max_pairs:
        pairs = pairs.subset(sorted(random.Random(42).sample(pairs.query_ids, args.max_pairs)))

    t = time.perf_counter()
    result = EmbeddingFinetuner(FinetuneConfig(epochs=args.epochs, learning_rate=3e-5)).fit(pairs, out / "model")
    seconds["finetune"] = time.perf_counter() - t

    t = time.perf_counter()
    LanceDBIndex.build(nodes, str(out / "model"), uri=str(out / "lancedb"), table_name="uber_2021")
    seconds["index"] = time.perf_counter() - t

    metrics = result.metrics
    summary = {
        "pages": len(documents),
        "nodes": len(nodes),
        "pairs_generated": n_generated,
        "pairs_trained": metrics["n_train_pairs"],
        "val_queries": metrics["n_val_queries"],
        **{
            f"val_{name}_{when}": metrics.get(f"val_{when}", {}).get(f"val_cosine_{key}")
            for name, key in (("hit@1", "accuracy@1"), ("hit@5", "accuracy@5"), ("hit@10", "accuracy@10"), ("mrr@10", "mrr@10"))
            for when in ("before", "after")
        },
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "total_s": round(sum(seconds.values()), 1),
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
