"""Fusion depths and constants scored on validation queries pooled over the folds of a cross-validation run.

    python benchmarks/reference_table.py --out out/cv --folds 5    # first: the folds and their models
    python benchmarks/fusion_validation.py --cv out/cv

For each fold, the validation queries are the ones the fine-tuner carved from that fold's
training queries (same fraction and seed), and the tuned model is the fold's selection model
(its best-epoch checkpoint, which never trained on them); test queries are not used. Scores
hybrid search by rows per leg (multiples of k) and RRF constant, and the reranked types by
candidates reranked and FusionRerank's lexical weight, for the base and the tuned model, and
prints pooled hit@k tables. This is how the defaults of `RunConfig` were picked (BENCHMARKS.md).
Uses the package's API, chunking exactly as `lancedb-tune run` does (`pipeline.build_nodes`).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from llama_index_lancedb_tuning import (
    FusionRerank,
    LanceDBIndex,
    RunConfig,
    evaluate_retrievers,
    hybrid_reranker,
    load_embed_model,
    load_labeled_csv,
)
from llama_index_lancedb_tuning.pipeline import build_nodes

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "data_qa.csv"
DEPTHS = (1, 2, 3, 4)  # rows per hybrid leg, or candidates reranked, as multiples of k
RRF_KS = (5, 10, 60)
WEIGHTS = (0.25, 0.5, 1.0)


def fold_retrievers(index: LanceDBIndex, k: int) -> dict:
    retrievers = {}
    for depth in DEPTHS:
        for rrf_k in RRF_KS:
            retrievers[f"hybrid {depth}k K={rrf_k}"] = index.retriever(
                "hybrid", k, hybrid_reranker=hybrid_reranker("rrf", rrf_k), hybrid_overfetch=depth
            )
        for weight in WEIGHTS:
            rerank = FusionRerank(index.embed_model, index.table, top_n=k, lexical_weight=weight)
            for base in ("vector", "fts"):
                retrievers[f"reranked_{base} {depth}k w={weight}"] = index.retriever(
                    f"reranked_{base}", k, rerank, overfetch=depth
                )
    retrievers["vector"] = index.retriever("vector", k)
    retrievers["fts"] = index.retriever("fts", k)
    return retrievers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cv", required=True, help="output directory of `reference_table.py --folds N`")
    parser.add_argument("--data", default=str(DATA))
    args = parser.parse_args()
    dataset = load_labeled_csv(args.data)
    config = RunConfig()
    folds = sorted(Path(args.cv).glob("fold*/model/metrics.json"))
    if not folds:
        raise SystemExit(f"no fold*/model/metrics.json under {args.cv}; run benchmarks/reference_table.py --folds 5 first")
    nodes = build_nodes(dataset.corpus, None, config)
    hits: dict[tuple[str, str], list[bool]] = {}
    for i, (train, _test) in enumerate(dataset.kfold(len(folds), config.seed)):
        _fit, val = train.split(config.finetune.val_fraction, config.finetune.seed)
        model_dir = Path(args.cv) / f"fold{i}" / "model"
        selection = str(
            model_dir / "checkpoints" / Path(json.loads((model_dir / "metrics.json").read_text())["best_checkpoint"]).name
        )
        for label, model in (("base", None), ("tuned", selection)):
            with tempfile.TemporaryDirectory() as tmp:
                index = LanceDBIndex.build(nodes, load_embed_model(model), uri=tmp, table_name="nodes", show_progress=False)
                for result in evaluate_retrievers(fold_retrievers(index, config.k), val, config.k, f"fold {i} {label}"):
                    hits.setdefault((label, result.query_type), []).extend(np.asarray(result.per_query) > 0)
    n = len(hits[("base", "vector")])
    print(f"pooled validation hit@{config.k} over {len(folds)} folds ({n} query slots), base / tuned selection model\n")
    print("| setting | base | tuned |\n|---|---|---|")
    for name in dict.fromkeys(qt for _label, qt in hits):
        print(f"| {name} | {np.mean(hits[('base', name)]):.3f} | {np.mean(hits[('tuned', name)]):.3f} |")


if __name__ == "__main__":
    main()
