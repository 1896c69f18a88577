"""The tuning levers side by side: an adapter over the app's embedding, the query encoder, both sides,
and a trained reranker, on data_qa (the seeded split) and Lyft -> Uber.

    python benchmarks/levers.py --out out/levers                       # both corpora, every lever
    python benchmarks/levers.py --out out/levers --corpora dataqa --levers base,adapter

Each lever is one `tune_and_evaluate` run with `RunConfig(tune=LEVER)`, as `lancedb-tune run --tune
LEVER` does; a finished run directory is reused. `base` is the untuned vector row, `adapter`,
`query` and `full` the tuned vector rows, `reranker` the tuned reranked-vector row (the trained
cross-encoder reranking the untuned vector search), beside `fusion`, the untuned reranked-vector
row with the default FusionRerank. Test queries never train or choose anything. Prints a markdown
table and, as its last line, one JSON object keyed `<corpus>_<lever>_hit5` and `<corpus>_<lever>_train_s`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from collections.abc import Callable
from pathlib import Path

from llama_index_lancedb_tuning import QADataset, RunConfig, TuningError, load_qa_dataset, tune_and_evaluate

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
LEVERS = ("adapter", "query", "full", "reranker")
# The row each lever is judged by: what it changes.
ROW_OF = {"adapter": "vector", "query": "vector", "full": "vector", "reranker": "reranked_vector"}


def _corpora() -> dict[str, Callable[[], tuple[QADataset, QADataset | None]]]:
    return {
        "dataqa": lambda: (load_qa_dataset(DATA / "data_qa.csv"), None),
        "lyft": lambda: (
            load_qa_dataset(DATA / "lyft_uber_10k" / "train_dataset.json"),
            load_qa_dataset(DATA / "lyft_uber_10k" / "val_dataset.json"),
        ),
    }


def _run(out: Path, lever: str, train: QADataset, test: QADataset | None) -> dict:
    if (out / "report.json").exists():
        return json.loads((out / "report.json").read_text())
    return tune_and_evaluate(train, out, RunConfig(tune=lever), eval_dataset=test)  # type: ignore[arg-type]


def _row(report: dict, model: str, query_type: str) -> dict:
    return next(r for r in report["results"] if r["model"] == model and r["query_type"] == query_type)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for one run directory per corpus and lever")
    parser.add_argument("--corpora", default="dataqa,lyft", help="comma list of dataqa, lyft")
    parser.add_argument("--levers", default=",".join(LEVERS), help=f"comma list of {', '.join(LEVERS)}")
    args = parser.parse_args()

    summary: dict[str, object] = {"machine": f"{platform.machine()} {os.cpu_count()} cores"}
    lines = [
        "| corpus | lever | row | n | hit@5 [95% CI] | MRR@5 | p vs untuned row | train s | promoted |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    corpora = _corpora()
    for corpus in args.corpora.split(","):
        train, test = corpora[corpus]()
        for lever in args.levers.split(","):
            try:
                report = _run(args.out / f"{corpus}-{lever}", lever, train, test)
            except TuningError as exc:  # a lever this corpus's setup does not support: say so, measure nothing
                summary[f"{corpus}_{lever}_hit5"] = summary[f"{corpus}_{lever}_train_s"] = None
                lines.append(f"| {corpus} | {lever} | not run: {exc} | | | | | | |")
                continue
            if f"{corpus}_base_hit5" not in summary:  # the untuned rows: the same in every run of the corpus
                for name, query_type in (("base", "vector"), ("fusion", "reranked_vector")):
                    row = _row(report, "baseline", query_type)
                    summary[f"{corpus}_{name}_hit5"] = round(row["hit_rate"], 4)
                    lines.append(
                        f"| {corpus} | {name} (untuned) | {query_type} | {row['n']} | {row['hit_rate']:.3f} "
                        f"[{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}] | {row['mrr']:.3f} | | 0 | |"
                    )
                summary[f"{corpus}_base_train_s"] = 0.0
            row = _row(report, "tuned", ROW_OF[lever])
            train_s = report["timings_s"]["finetune"]
            summary[f"{corpus}_{lever}_hit5"], summary[f"{corpus}_{lever}_train_s"] = round(row["hit_rate"], 4), train_s
            lines.append(
                f"| {corpus} | {lever} | {ROW_OF[lever]} | {row['n']} | {row['hit_rate']:.3f} "
                f"[{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}] | {row['mrr']:.3f} | {row['p_vs_baseline']} | {train_s:.0f} | "
                f"{report['promoted']} |"
            )
    print("\n".join(lines))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
