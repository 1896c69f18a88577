"""Reproduce LlamaIndex's "fine-tune embeddings with synthetic data" table: tune on Lyft's 10-K, score on Uber's.

    python benchmarks/lyft_uber.py --out out/lyft_uber                      # the full run (790 test queries)
    python benchmarks/lyft_uber.py --out out/lyft_smoke --limit-queries 40 --epochs 1   # a quick slice

Uses only the package's public API (`tune_and_evaluate` with `eval_dataset`), so it measures
what `lancedb-tune run train_dataset.json --eval-data val_dataset.json` does. Two runs:

- labeled: trained on the 658 Lyft queries (validation carved from them), scored on the 790
  Uber queries, whose 395 chunks the baseline and tuned tables index;
- label-free: offline pairs generated from the Uber chunks alone (no query used), scored on
  the same 790 queries, with McNemar p against the untuned model.

A finished run directory is reused, so a killed benchmark resumes. Prints markdown tables
with the published figures beside ours and, as its last line, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from llama_index_lancedb_tuning import QADataset, RunConfig, load_qa_dataset, tune_and_evaluate
from llama_index_lancedb_tuning.config import QUERY_TYPES, PairsSource, recommended_finetune

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lyft_uber_10k"
# Published hit-rate@5 on the 790 Uber queries (LlamaIndex retriever, top 5 of the 395 chunks): ../shared/data/README.md.
# Model -> (untuned, fine-tuned on the Lyft queries; None: not tuned).
ANCHORS: dict[str, tuple[float, float | None]] = {
    "OpenAI text-embedding-ada-002": (0.871, None),
    "BAAI/bge-small-en (2 epochs, MNRL)": (0.787, 0.844),
}


def first_queries(dataset: QADataset, n: int) -> QADataset:
    """The first `n` queries over only the documents they point at: a slice small enough for a smoke run."""
    ids = dataset.query_ids[:n]
    docs = {d for q in ids for d in dataset.relevant_docs[q]}
    return QADataset(
        {q: dataset.queries[q] for q in ids},
        {d: text for d, text in dataset.corpus.items() if d in docs},
        {q: dataset.relevant_docs[q] for q in ids},
        dataset.mode,
    )


def _config(pairs: PairsSource, epochs: int | None) -> RunConfig:
    recipe = recommended_finetune(pairs)
    return RunConfig(pairs=pairs, finetune=recipe if epochs is None else replace(recipe, epochs=epochs))


def _finished_or_run(out: Path, run) -> dict:
    if (out / "report.json").exists():
        return json.loads((out / "report.json").read_text())
    return run()


def _rows(report: dict) -> dict[tuple[str, str], dict]:
    return {(r["model"], r["query_type"]): r for r in report["results"]}


def _cell(row: dict) -> str:
    return f"{row['hit_rate']:.3f} [{row['ci95'][0]:.3f}, {row['ci95'][1]:.3f}]"


def table(report: dict, tuned_label: str, anchors: bool) -> str:
    rows = _rows(report)
    lines = [
        f"| model | query type | reranker | n | hit@5 untuned [95% CI] | MRR@5 untuned | hit@5 {tuned_label} [95% CI] | MRR@5 {tuned_label} | p (McNemar) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for qt in QUERY_TYPES:
        b, t = rows[("baseline", qt)], rows[("tuned", qt)]
        lines.append(
            f"| {report['base_model'].split('/')[-1]} (ours) | {qt} | {t['reranker'] or '—'} | {t['n']} | {_cell(b)} | {b['mrr']:.3f} | "
            f"{_cell(t)} | {t['mrr']:.3f} | {t['p_vs_baseline']} |"
        )
    if anchors:
        for name, (untuned, tuned) in ANCHORS.items():
            shown = "—" if tuned is None else f"{tuned:.3f}"
            lines.append(f"| {name} (published) | vector | — | 790 | {untuned:.3f} | — | {shown} | — | — |")
    return "\n".join(lines)


def summary(report: dict) -> dict:
    rows = _rows(report)
    return {
        "dataset": report["dataset"],
        "timings_s": report["timings_s"],
        "rows": {
            qt: {
                model: {key: rows[(model, qt)][key] for key in ("hit_rate", "mrr", "ci95", "n")}
                | ({"p_vs_baseline": rows[(model, qt)]["p_vs_baseline"]} if model == "tuned" else {})
                for model in ("baseline", "tuned")
            }
            for qt in QUERY_TYPES
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(DATA), help="folder holding train_dataset.json and val_dataset.json")
    parser.add_argument("--out", default="out/lyft_uber")
    parser.add_argument("--skip-label-free", action="store_true", help="only the labeled run")
    parser.add_argument(
        "--limit-queries", type=int, default=0, help="score and train on the first N queries of each file (0: all)"
    )
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: the recommended recipe's)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out, data = Path(args.out), Path(args.data)
    train_path, test_path = data / "train_dataset.json", data / "val_dataset.json"
    train, test = load_qa_dataset(train_path), load_qa_dataset(test_path)
    note = ""
    if args.limit_queries:
        train, test = first_queries(train, args.limit_queries), first_queries(test, args.limit_queries)
        note = f" [first {args.limit_queries} queries]"

    t0 = time.perf_counter()
    labeled = _finished_or_run(
        out / "labeled",
        lambda: tune_and_evaluate(
            train,
            out / "labeled",
            _config("labeled", args.epochs),
            dataset_path=f"{train_path}{note}",
            eval_dataset=test,
            eval_path=f"{test_path}{note}",
        ),
    )
    print(f"## Tuned on Lyft's queries, scored on Uber's ({test_path.name}{note})\n\n{table(labeled, 'tuned', anchors=True)}\n")
    result: dict[str, Any] = {"labeled": summary(labeled)}

    if not args.skip_label_free:
        label_free = _finished_or_run(
            out / "label_free",
            # The Uber chunks as documents: pairs are generated from them, and every Uber query is a test query.
            lambda: tune_and_evaluate(
                test,
                out / "label_free",
                _config("offline", args.epochs),
                documents=dict(test.corpus),
                dataset_path=f"{test_path}{note}",
            ),
        )
        print(
            f"## Label-free: offline pairs from the Uber chunks alone, scored on the same queries\n\n{table(label_free, 'offline-tuned', anchors=False)}\n"
        )
        result["label_free"] = summary(label_free)

    result |= {
        "anchors": {name: {"untuned": untuned, "tuned": tuned} for name, (untuned, tuned) in ANCHORS.items()},
        "seconds": round(time.perf_counter() - t0, 1),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
