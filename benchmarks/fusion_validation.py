"""Fusion depths and constants scored on validation queries pooled over the folds of a cross-validation run.

    python benchmarks/reference_table.py --out out/cv --folds 5    # first: the folds and their models
    python benchmarks/fusion_validation.py --cv out/cv

or on one run's validation queries, with the model that run tuned (it must not have refit on them):

    lancedb-tune run ../shared/data/lyft_uber_10k/train_dataset.json \
        --eval-data ../shared/data/lyft_uber_10k/val_dataset.json --out out/lyft_uber
    python benchmarks/fusion_validation.py --run out/lyft_uber --data ../shared/data/lyft_uber_10k/train_dataset.json

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
    load_qa_dataset,
)
from llama_index_lancedb_tuning.tuning.run_loop import build_nodes

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


def scored(nodes: list, model: str | None, queries, k: int) -> dict[str, list[bool]]:
    """Per-query hits of every setting in `fold_retrievers` for one model over `nodes`."""
    with tempfile.TemporaryDirectory() as tmp:
        index = LanceDBIndex.build(nodes, load_embed_model(model), uri=tmp, table_name="nodes", show_progress=False)
        return {
            r.query_type: list(np.asarray(r.per_query) > 0) for r in evaluate_retrievers(fold_retrievers(index, k), queries, k)
        }


def cv_hits(cv: Path, data: str, config: RunConfig) -> tuple[str, dict[tuple[str, str], list[bool]]]:
    """Hits pooled over the folds' validation queries, base and each fold's selection model."""
    dataset = load_labeled_csv(data)
    folds = sorted(cv.glob("fold*/model/metrics.json"))
    if not folds:
        raise SystemExit(f"no fold*/model/metrics.json under {cv}; run benchmarks/reference_table.py --folds 5 first")
    nodes = build_nodes(dataset.corpus, None, config)
    hits: dict[tuple[str, str], list[bool]] = {}
    for i, (train, _test) in enumerate(dataset.kfold(len(folds), config.seed)):
        _fit, val = train.split(config.finetune.val_fraction, config.finetune.seed)
        model_dir = cv / f"fold{i}" / "model"
        selection = str(
            model_dir / "checkpoints" / Path(json.loads((model_dir / "metrics.json").read_text())["best_checkpoint"]).name
        )
        for label, model in (("base", None), ("tuned", selection)):
            for setting, found in scored(nodes, model, val, config.k).items():
                hits.setdefault((label, setting), []).extend(found)
    n = len(hits[("base", "vector")])
    return f"pooled validation hit@{config.k} over {len(folds)} folds ({n} query slots)", hits


def run_hits(run: Path, config: RunConfig) -> tuple[str, dict[tuple[str, str], list[bool]]]:
    """Hits on one run's validation queries (the carve its fine-tuner made, never trained on) with its
    tuned model, and the base model's on every training query (no setting of the base model was
    trained on them)."""
    report = json.loads((run / "report.json").read_text())
    saved = json.loads((run / "settings.json").read_text())["config"]
    if saved["finetune"]["refit"]:
        raise SystemExit(f"{run} refit on its validation queries; score a run without --refit")
    dataset = load_qa_dataset(report["dataset"]["path"])
    train = dataset if report["dataset"]["eval_path"] else dataset.split(saved["test_size"], saved["seed"])[0]
    _fit, val = train.split(saved["finetune"]["val_fraction"], saved["finetune"]["seed"])
    nodes = build_nodes(dataset.corpus, None, config)
    hits = {("base", s): h for s, h in scored(nodes, None, val, config.k).items()}
    hits |= {("tuned", s): h for s, h in scored(nodes, str(run / "model"), val, config.k).items()}
    hits |= {("base, all training queries", s): h for s, h in scored(nodes, None, train, config.k).items()}
    title = f"validation hit@{config.k} of {run} ({len(val)} queries; base on all {len(train)} training queries)"
    return title, hits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--cv", help="output directory of `reference_table.py --folds N`")
    source.add_argument("--run", help="output directory of a `lancedb-tune run` without --refit")
    parser.add_argument("--data", default=str(DATA), help="the labeled CSV of the --cv run")
    args = parser.parse_args()
    config = RunConfig()
    title, hits = cv_hits(Path(args.cv), args.data, config) if args.cv else run_hits(Path(args.run), config)
    labels = list(dict.fromkeys(label for label, _setting in hits))
    print(f"{title}\n")
    print(f"| setting | {' | '.join(labels)} |\n|---|{'---|' * len(labels)}")
    for name in dict.fromkeys(setting for _label, setting in hits):
        print(f"| {name} | {' | '.join(f'{np.mean(hits[(label, name)]):.3f}' for label in labels)} |")


if __name__ == "__main__":
    main()
