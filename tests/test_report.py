"""The report a person reads: gains of a query or two called noise, and a plot where nothing is hidden."""

import numpy as np

from llama_index_lancedb_tuning.evaluation.metrics import EvalResult
from llama_index_lancedb_tuning.evaluation.report import comparison_figure, comparison_table, gain_verdict

TYPES = ("vector", "fts", "reranked_vector", "reranked_fts", "hybrid")


def _rows(base_hits, tuned_hits, p):
    n = 44
    out = []
    for model, hits in (("baseline", base_hits), ("tuned", tuned_hits)):
        for qt in TYPES:
            rate = hits / n
            out.append(
                EvalResult(
                    model,
                    qt,
                    None,
                    rate,
                    rate * 0.8,
                    (max(0.0, rate - 0.1), min(1.0, rate + 0.1)),
                    n,
                    1.0,
                    p_vs_baseline=p if model == "tuned" else None,
                )
            )
    return out


def test_a_gain_of_two_queries_is_noise_whatever_its_p_value():
    rows = _rows(30, 32, 0.01)
    assert gain_verdict(rows[0], rows[5]) == "noise (+2 queries)"
    rows = _rows(27, 35, 0.039)
    assert gain_verdict(rows[0], rows[5]) == "+8 queries (p=0.039)"
    rows = _rows(27, 35, 0.2)
    assert gain_verdict(rows[0], rows[5]) == "+8 queries, not significant (p=0.200)"
    assert "| noise (+2 queries) |" in comparison_table(_rows(30, 32, 0.01))


def test_plot_shows_mrr_and_p_values_and_the_legend_covers_no_bar():
    fig = comparison_figure(_rows(40, 44, 0.04))  # the tallest bars reach 1.0, where a legend inside the axes would sit
    fig.canvas.draw()
    hit_ax, mrr_ax = fig.axes
    assert "MRR" in mrr_ax.get_title() and len(mrr_ax.patches) == 10
    texts = [t.get_text() for t in hit_ax.texts]
    assert sum("p=0.04" in t for t in texts) == 5  # every tuned bar carries its McNemar p
    [legend] = fig.legends
    box = legend.get_window_extent()
    for ax in fig.axes:
        for bar in ax.patches:
            assert not box.overlaps(bar.get_window_extent()), "the legend covers a bar"
    assert np.isclose(max(b.get_height() for b in hit_ax.patches), 1.0)


def test_a_row_names_each_models_reranker_when_they_differ():
    from dataclasses import replace

    rows = [
        replace(r, reranker="FusionRerank" if r.model == "baseline" else "cross-encoder:out/model") for r in _rows(30, 32, 0.5)
    ]
    table = comparison_table(rows)
    assert "| Reranked vector search | FusionRerank → cross-encoder:out/model | 44 |" in table
    same = comparison_table(_rows(30, 32, 0.5))
    assert "| Vector search | — | 44 |" in same
