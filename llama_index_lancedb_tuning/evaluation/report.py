"""The comparison a run reports: a markdown table of the chosen metrics and a plot, baseline beside tuned, with n, CIs and p-values."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..config import MetricName, SearchConfig
from .ir_metrics import METRIC_LABELS
from .metrics import EvalResult

QUERY_TYPE_LABELS = {
    "vector": "Vector search",
    "fts": "Full-text search",
    "reranked_vector": "Reranked vector search",
    "reranked_fts": "Reranked full-text search",
    "hybrid": "Hybrid search",
}
# A difference of this many queries or fewer is reported as noise, whatever its p-value.
NOISE_QUERIES = 2
SIGNIFICANCE = 0.05


def gain_verdict(baseline: EvalResult, tuned: EvalResult) -> str:
    """`+8 queries (p=0.039)`; `noise (+2 queries)` for a change of a couple of queries; `+5 queries, not
    significant (p=0.125)` where the paired test cannot tell the change from chance."""
    delta = round((tuned.hit_rate - baseline.hit_rate) * tuned.n)
    change = f"{delta:+d} {'query' if abs(delta) == 1 else 'queries'}"
    p = tuned.p_vs_baseline
    if abs(delta) <= NOISE_QUERIES:
        return f"noise ({change})"
    if p is None or p >= SIGNIFICANCE:
        return f"{change}, not significant" + (f" (p={p:.3f})" if p is not None else "")
    return f"{change} (p={p:.3f})"


def _cell(row: EvalResult | None, metric: MetricName) -> str:
    """A metric's mean, hit rate's with its 95% interval; — where the row or its figure is missing."""
    value = None if row is None else row.mean(metric)
    if row is None or value is None:
        return "—"
    return f"{value:.3f} [{row.ci95[0]:.3f}, {row.ci95[1]:.3f}]" if metric == "hit_rate" else f"{value:.3f}"


def comparison_table(results: Sequence[EvalResult], k: int = 5, metrics: Sequence[MetricName] = SearchConfig.metrics) -> str:
    """Markdown table in the shape of the reference table: one row per query type, baseline beside tuned,
    a column per model for each of `metrics` (hit rate with its 95% interval)."""
    by = {(r.model, r.query_type): r for r in results}
    types = list(dict.fromkeys(r.query_type for r in results))
    models = list(dict.fromkeys(r.model for r in results))
    compared = "baseline" in models and len(models) > 1
    head = ["Query type", "reranker", "n"]
    for metric in metrics:
        shown = f"{METRIC_LABELS[metric]}@{k}" + (" [95% CI]" if metric == "hit_rate" else "")
        head += [f"{m} {shown}" for m in models]
    if compared:
        head += ["Δ hit", "p (McNemar)", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for qt in types:
        rows = [by.get((m, qt)) for m in models]
        first = next(r for r in rows if r is not None)
        # A tuned reranker reranks the tuned rows only: each model's reranker, in column order.
        rerankers = " → ".join(dict.fromkeys(r.reranker or "—" for r in rows if r is not None))
        cells = [QUERY_TYPE_LABELS.get(qt, qt), rerankers, str(first.n)]
        for metric in metrics:
            cells += [_cell(r, metric) for r in rows]
        if compared:
            base, last = by.get(("baseline", qt)), rows[-1]
            if base is not None and last is not None:
                p = f"{last.p_vs_baseline:.3f}" if last.p_vs_baseline is not None else "—"
                cells += [f"{last.hit_rate - base.hit_rate:+.3f}", p, gain_verdict(base, last)]
            else:
                cells += ["—", "—", "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_figure(results: Sequence[EvalResult], k: int = 5, title: str = "") -> Any:
    """Hit-rate@k (with 95% CI whiskers and McNemar p against the baseline) and MRR@k per query type,
    one colour per model; a matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    types = list(dict.fromkeys(r.query_type for r in results))
    models = list(dict.fromkeys(r.model for r in results))
    by = {(r.model, r.query_type): r for r in results}
    width = 0.8 / len(models)
    x = np.arange(len(types))
    fig, (hit_ax, mrr_ax) = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    for i, m in enumerate(models):
        rows = [by.get((m, t)) for t in types]
        offset = x + (i - (len(models) - 1) / 2) * width
        rates = [r.hit_rate if r else 0.0 for r in rows]
        err = np.array([[r.hit_rate - r.ci95[0], r.ci95[1] - r.hit_rate] if r else [0, 0] for r in rows]).T
        bars = hit_ax.bar(offset, rates, width, yerr=err, capsize=3, label=m)
        labels = [
            f"{v:.2f}" + (f"\np={r.p_vs_baseline:.2g}" if r and r.p_vs_baseline is not None else "") for v, r in zip(rates, rows)
        ]
        hit_ax.bar_label(bars, labels=labels, fontsize=7, padding=2)
        mrr = [r.mrr if r else 0.0 for r in rows]
        mrr_ax.bar_label(mrr_ax.bar(offset, mrr, width, label=m), labels=[f"{v:.2f}" for v in mrr], fontsize=7, padding=2)
    n = results[0].n if results else 0
    for ax, name in ((hit_ax, f"hit-rate@{k} (95% bootstrap CI; p: McNemar vs baseline)"), (mrr_ax, f"MRR@{k}")):
        ax.set_xticks(x, [QUERY_TYPE_LABELS.get(t, t) for t in types], rotation=15, ha="right")
        ax.set_ylim(0, 1.2)
        ax.set_title(name, fontsize=10)
    hit_ax.set_ylabel("rate")
    # Above the axes, so no bar is ever covered.
    fig.legend(*hit_ax.get_legend_handles_labels(), loc="upper right", ncol=len(models), frameon=False)
    fig.suptitle(title or f"{n} held-out queries", x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    return fig


def comparison_plot(results: Sequence[EvalResult], path: str | Path, k: int = 5, title: str = "") -> Path:
    """`comparison_figure` saved as a PNG at `path`."""
    import matplotlib.pyplot as plt

    fig = comparison_figure(results, k, title)
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
