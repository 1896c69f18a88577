"""Reproduce the LanceDB guide's reference table on data_qa.csv, on held-out queries only.

    python benchmarks/reference_table.py --out out/ref            # seeded 80/20 split (44 test queries)
    python benchmarks/reference_table.py --out out/cv --folds 5   # 5-fold CV by query: every query tested once
    python benchmarks/reference_table.py --out out/cv_query --folds 5 --tune query   # the query-side recipe

Uses only the package's public API. A finished fold directory is reused, so a killed run
resumes. Prints one markdown table per setting, with the reference figures beside ours.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from llama_index_lancedb_tuning import FinetuneConfig, RunConfig, load_labeled_csv, tune_and_evaluate

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "data_qa.csv"
# bge-small-en-v1.5, Cohere reranker, GPT-3.5 training questions, all 220 queries (trained on most).
REFERENCE = {
    "vector": (0.640, 0.672),
    "fts": (0.595, 0.595),
    "reranked_vector": (0.677, 0.754),
    "reranked_fts": (0.672, 0.672),
    "hybrid": (0.759, 0.768),
}


def _report(out: Path, dataset, config: RunConfig, train=None, test=None) -> dict:
    if (out / "report.json").exists():
        return json.loads((out / "report.json").read_text())
    return tune_and_evaluate(dataset, out, config, dataset_path=str(DATA))


def _rows(report: dict) -> dict[tuple[str, str], dict]:
    return {(r["model"], r["query_type"]): r for r in report["results"]}


def split_table(report: dict) -> str:
    rows = _rows(report)
    lines = [
        "| query type | reranker | n | baseline hit@5 [95% CI] | tuned hit@5 [95% CI] | tuned MRR@5 | p (McNemar) | reference baseline | reference tuned |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for qt, (ref_b, ref_t) in REFERENCE.items():
        b, t = rows[("baseline", qt)], rows[("tuned", qt)]
        lines.append(
            f"| {qt} | {t['reranker'] or '—'} | {t['n']} | {b['hit_rate']:.3f} [{b['ci95'][0]:.3f}, {b['ci95'][1]:.3f}] | "
            f"{t['hit_rate']:.3f} [{t['ci95'][0]:.3f}, {t['ci95'][1]:.3f}] | {t['mrr']:.3f} | {t['p_vs_baseline']} | {ref_b:.3f} | {ref_t:.3f} |"
        )
    return "\n".join(lines)


def cv_table(reports: list[dict]) -> str:
    lines = [
        "| query type | folds | n | baseline hit@5 (mean ± sd) | tuned hit@5 (mean ± sd) | pooled tuned [95% CI] | folds above baseline |",
        "|---|---|---|---|---|---|---|",
    ]
    for qt in REFERENCE:
        base = np.array([_rows(r)[("baseline", qt)]["hit_rate"] for r in reports])
        tuned = np.array([_rows(r)[("tuned", qt)]["hit_rate"] for r in reports])
        n = np.array([_rows(r)[("tuned", qt)]["n"] for r in reports])
        pooled = float((tuned * n).sum() / n.sum())
        se = (pooled * (1 - pooled) / n.sum()) ** 0.5
        lines.append(
            f"| {qt} | {len(reports)} | {int(n.sum())} | {base.mean():.3f} ± {base.std():.3f} | {tuned.mean():.3f} ± {tuned.std():.3f} | "
            f"{pooled:.3f} [{pooled - 1.96 * se:.3f}, {pooled + 1.96 * se:.3f}] | {int((tuned > base).sum())}/{len(reports)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--folds", type=int, default=0, help="k-fold cross-validation by query (0: the seeded 80/20 split)")
    parser.add_argument("--data", default=str(DATA))
    parser.add_argument("--tune", choices=["full", "query"], default="full", help="the recipe (lancedb-tune run --tune)")
    args = parser.parse_args()
    dataset = load_labeled_csv(args.data)
    # keep_checkpoints: fusion_validation.py scores the selection checkpoints.
    config = RunConfig(tune=args.tune, finetune=FinetuneConfig(keep_checkpoints=True))
    out = Path(args.out)
    if args.folds:
        reports = []
        for i, (train, test) in enumerate(dataset.kfold(args.folds, config.seed)):
            fold_out = out / f"fold{i}"
            if (fold_out / "report.json").exists():
                reports.append(json.loads((fold_out / "report.json").read_text()))
                continue
            # Each fold's test queries are held out; the fold is scored like the 80/20 run.
            reports.append(tune_and_evaluate(dataset, fold_out, config, dataset_path=args.data, split=(train, test)))
        print(cv_table(reports))
    else:
        print(split_table(_report(out, dataset, config)))


if __name__ == "__main__":
    main()
