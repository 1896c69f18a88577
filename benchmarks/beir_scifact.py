"""BEIR SciFact: the untuned and tuned models beside the published anchors, by nDCG@10.

    python benchmarks/beir_scifact.py --out out/beir_scifact                   # tune on train, score the validation carve
    python benchmarks/beir_scifact.py --out out/beir_scifact --qrels test.tsv  # also score another qrels file the same way

The folder holds SciFact's 809 training queries only (its 300 test qrels are held back), so the run
carves its validation queries from them with the package's seeded split (test size 0.2, seed 42):
`tune_and_evaluate` trains on the rest (its gate's and fine-tuner's validation queries carved from
them in turn) and scores the carve, one node per abstract (title and text, truncated at the model's
256 tokens, as MTEB scores it). Recall@100 is scored on the same tables at k=100. `--qrels` scores
the same two tables on any other qrels file over SciFact's corpus and queries, at the same cuts.

A finished run directory is reused, so a killed benchmark resumes. Prints a markdown table with the
published anchors (test split, nDCG@10) under ours and, as its last line, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path

from llama_index_lancedb_tuning import (
    LanceDBIndex,
    QADataset,
    RunConfig,
    connect,
    load_beir,
    load_embed_model,
    open_table,
    tune_and_evaluate,
)
from llama_index_lancedb_tuning.config import QUERY_TYPES, TuneMode, recommended_finetune
from llama_index_lancedb_tuning.evaluation.table_scores import score_index
from llama_index_lancedb_tuning.store.encoder_record import table_backend
from llama_index_lancedb_tuning.tuning.recipe import TuningRecipe

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "beir_scifact"
K, RECALL_K = 10, 100
# nDCG@10 on SciFact's 300 test queries: all-MiniLM-L6-v2 from MTEB, the rest from the BEIR paper
# (Thakur et al. 2021); ../shared/data/README.md.
ANCHORS = {
    "all-MiniLM-L6-v2 (MTEB)": 0.645,
    "BM25": 0.665,
    "BM25 + cross-encoder rerank": 0.688,
    "TAS-B": 0.643,
    "ColBERT": 0.671,
}


def _config(tune: TuneMode, epochs: int | None) -> RunConfig:
    recipe = recommended_finetune("labeled")
    return RunConfig(k=K, chunk_size=0, tune=tune, finetune=recipe if epochs is None else replace(recipe, epochs=epochs))


def _indexes(run: Path, config: RunConfig) -> dict[str, LanceDBIndex]:
    """The run's baseline and tuned tables with the encoders that served its report."""
    db = connect(str(run / "lancedb"))
    baseline_table = open_table(db, "baseline")
    baseline = LanceDBIndex(baseline_table, load_embed_model(None, backend=table_backend(baseline_table, config.backend)))
    recipe = TuningRecipe(config.tune, config.finetune, config)
    if config.tune == "query":
        return {"baseline": baseline, "tuned": recipe.query_tuned(baseline, run / "model")}
    tuned_table = open_table(db, "tuned")
    return {"baseline": baseline, "tuned": LanceDBIndex(tuned_table, recipe.encoder(run / "model", tuned_table))}


def _scored(indexes: dict[str, LanceDBIndex], queries: QADataset, config: RunConfig) -> dict[tuple[str, str], dict]:
    """Every query type of both tables on `queries`: the metrics at k=10, and recall at k=100."""
    deep = replace(config, k=RECALL_K)
    rows: dict[tuple[str, str], dict] = {}
    for label, index in indexes.items():
        at_k = score_index(index, label, queries, config, {})
        at_deep = {r.query_type: r for r in score_index(index, label, queries, deep, {})}
        for r in at_k:
            row = r.to_dict()
            row["recall@100"], row["recall@100_ci95"] = at_deep[r.query_type].recall, at_deep[r.query_type].intervals["recall"]
            rows[(label, r.query_type)] = row
    return rows


def _interval(value: float, ci: list[float] | tuple[float, float]) -> str:
    return f"{value:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def table(rows: dict[tuple[str, str], dict], queries: str) -> str:
    lines = [
        "| model | query type | queries | n | nDCG@10 [95% CI] | recall@100 [95% CI] | hit@10 [95% CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    for (label, qt), r in rows.items():
        lines.append(
            f"| {label} | {qt} | {queries} | {r['n']} | {_interval(r['ndcg'], r['intervals']['ndcg'])} | "
            f"{_interval(r['recall@100'], r['recall@100_ci95'])} | {_interval(r['hit_rate'], r['ci95'])} |"
        )
    for name, ndcg in ANCHORS.items():
        lines.append(f"| {name} | published | test | 300 | {ndcg:.3f} | | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="run directory (reused when finished)")
    parser.add_argument("--tune", choices=["full", "query"], default="full", help="what learns (default: full)")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs")
    parser.add_argument("--qrels", type=Path, default=None, help="another qrels file over SciFact to score the same way")
    parser.add_argument("--data", type=Path, default=DATA, help="the SciFact BEIR folder")
    args = parser.parse_args()

    config = _config(args.tune, args.epochs)
    train = load_beir(args.data, "train")
    run = args.out / f"{args.tune}"
    start = time.perf_counter()
    report_file = run / "report.json"
    report = (
        json.loads(report_file.read_text())
        if report_file.exists()
        else tune_and_evaluate(train, run, config, dataset_path=str(args.data))
    )
    carve = train.split(config.test_size, config.seed)[1]  # the run's test queries: the same seeded split
    assert len(carve) == report["dataset"]["n_test_queries"]
    indexes = _indexes(run, config)
    rows = _scored(indexes, carve, config)
    print(f"## SciFact, tuned `{args.tune}` on {report['dataset']['n_train_queries']} training queries\n")
    print(table(rows, "validation carve"))
    summary = {
        "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "tune": args.tune,
        "n_validation": len(carve),
        "timings_s": report["timings_s"],
        "promoted": report["promoted"],
        "seconds": round(time.perf_counter() - start, 1),
        **{f"{label}_{qt}_ndcg10": round(r["ndcg"], 4) for (label, qt), r in rows.items()},
        **{f"{label}_{qt}_recall100": round(r["recall@100"], 4) for (label, qt), r in rows.items()},
    }
    if args.qrels is not None:
        other = load_beir(args.data, qrels_path=args.qrels)
        other_rows = _scored(indexes, other, config)
        print(f"\n## The same tables on {args.qrels}\n")
        print(table(other_rows, args.qrels.name))
        summary.update({f"qrels_{label}_{qt}_ndcg10": round(r["ndcg"], 4) for (label, qt), r in other_rows.items()})
    assert {qt for _, qt in rows} == set(QUERY_TYPES)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
