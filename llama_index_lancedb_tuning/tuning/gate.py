"""The do-no-harm gate: a tuned model is promoted only when validation queries it never trained on
show it is not worse than the model serving, by one metric (`SearchConfig.gate_metric`, hit rate
unless told otherwise).

The gate's queries are the fine-tuner's own validation carve when the recipe never trains on it
(the default: one pass, no refit), so no second fifth of the training queries is lost; with
`refit`, which trains on that carve too, they are carved apart before fine-tuning starts; or they
are given apart (`eval_dataset`). Either way the verdict is not flattered by queries the tuned
model has seen. Both models are scored on them through the table with the same retriever
(`Scorer`), the one that answers the users.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..common.wording import counted
from ..config import FinetuneConfig, MetricName
from ..data.qa_dataset import QADataset
from ..errors import TuningError
from ..evaluation.ir_metrics import METRIC_LABELS
from ..evaluation.metrics import EvalResult, mcnemar_p, sign_test_p

if TYPE_CHECKING:
    from ..search.index import LanceDBIndex

SIGNIFICANCE = 0.05


def gate_queries(train: QADataset, eval_dataset: QADataset | None, recipe: FinetuneConfig) -> tuple[QADataset, QADataset]:
    """(queries to hand the fine-tuner, the gate's validation queries): `eval_dataset` when given,
    else the seeded `recipe.val_fraction` of `train` that the fine-tuner carves for validation.

    Without a refit the fine-tuner never trains on that carve, so it gets all of `train` and
    carves the same queries itself; a refit trains on them, so they are kept from it.
    (With several epochs that carve also picks the best one: a choice, not training.)
    """
    if eval_dataset is not None:
        seen = {" ".join(t.split()) for t in train.queries.values()}
        shared = sum(" ".join(t.split()) in seen for t in eval_dataset.queries.values())
        if shared:
            raise TuningError(
                f"{counted(shared, 'gate query')} also appear among the training queries; "
                "remove them from eval_dataset or from train"
            )
        return train, eval_dataset
    if not 0 < recipe.val_fraction < 1:
        raise TuningError(
            "the gate needs validation queries the model never trains on; pass eval_dataset=, a val_fraction above 0, or gate=False"
        )
    fit, held_out = train.split(recipe.val_fraction, recipe.seed)
    return (fit, held_out) if recipe.refit else (train, held_out)


@dataclass(frozen=True)
class GateVerdict:
    """Whether a tuned model may replace the serving one, why in one line, and the figures behind it."""

    promoted: bool
    reason: str
    serving: EvalResult | None = None
    tuned: EvalResult | None = None
    p_value: float | None = None
    metric: MetricName = "hit_rate"

    def figures(self) -> dict[str, Any]:
        """The validation figures of both models, for a report or a version's record."""
        if self.serving is None or self.tuned is None:
            return {}

        def side(row: EvalResult) -> dict[str, Any]:
            return {m: row.mean(m) for m in ("hit_rate", "mrr", self.metric)} | {"ci95": list(row.ci95)}

        return {
            "query_type": self.tuned.query_type,
            "n": self.tuned.n,
            "metric": self.metric,
            "serving": side(self.serving),
            "tuned": side(self.tuned),
            "p_value": self.p_value,
        }


UNGATED = GateVerdict(True, "promoted without the gate (gate=False)")


def _paired_change(before: EvalResult, after: EvalResult, metric: MetricName) -> tuple[bool, float, str]:
    """(whether `after` is lower, the paired test's p, `0.800 -> 0.650 (-7 queries, McNemar p=0.039)`) of
    two scorings of the same queries: on hits McNemar's test, on another metric the sign test
    (`0.612 -> 0.580 (2 better, 6 worse; sign test p=0.289)`)."""
    values_before, values_after = before.query_values(metric), after.query_values(metric)
    if metric == "hit_rate":
        p = round(mcnemar_p(values_before, values_after), 4)
        delta = int(values_after.sum() - values_before.sum())
        queries = "query" if abs(delta) == 1 else "queries"
        return delta < 0, p, f"{before.hit_rate:.3f} -> {after.hit_rate:.3f} ({delta:+d} {queries}, McNemar p={p:.3f})"
    p = round(sign_test_p(values_before, values_after), 4)
    mean_before, mean_after = float(values_before.mean()), float(values_after.mean())
    better, worse = int(np.sum(values_after > values_before)), int(np.sum(values_after < values_before))
    change = f"{mean_before:.3f} -> {mean_after:.3f} ({better} better, {worse} worse; sign test p={p:.3f})"
    return mean_after < mean_before, p, change


def unvalidated_verdict(
    why: str, baseline: Sequence[EvalResult], tuned: Sequence[EvalResult], k: int, metric: MetricName = "hit_rate"
) -> GateVerdict:
    """The verdict of a run whose gate did not run (`why`): nothing validated the tuned model, so the
    scored queries are the only evidence, and a query type significantly worse there than its baseline
    (a lower `metric` at k, p < 0.05 by the paired test of `judge`) refuses it.

    Args:
        why: why no gate ran, for the reason.
        baseline: the base model's rows on the scored queries.
        tuned: the tuned model's rows on the same queries.
        k: the cut of their metrics.
        metric: the metric compared.
    """
    base_by_type = {r.query_type: r for r in baseline}
    losses = []
    for row in tuned:
        base = base_by_type.get(row.query_type)
        if base is None:
            continue
        lower, p, change = _paired_change(base, row, metric)
        if lower and p < SIGNIFICANCE:
            losses.append(f"{row.query_type} {METRIC_LABELS[metric]}@{k} {change}")
    scored = counted(tuned[0].n if tuned else 0, "scored query")
    if losses:
        return GateVerdict(
            False,
            f"not promoted: no gate ran ({why}) and on {scored} the tuned model is significantly worse than the "
            f"baseline: {'; '.join(losses)}",
            metric=metric,
        )
    return GateVerdict(
        True,
        f"promoted without the gate ({why}), so not validated; no query type is significantly worse than the baseline on {scored}",
        metric=metric,
    )


def judge(serving: EvalResult, tuned: EvalResult, k: int, metric: MetricName = "hit_rate") -> GateVerdict:
    """Promote when the tuned model's `metric` at k on the gate's queries is not below the serving
    model's and the paired test does not find it worse: McNemar's on hits, the exact sign test on the
    per-query differences of any other metric.

    With the metric not below, the test cannot find it worse; it words a refusal: a significant loss,
    or one the test cannot tell from chance, which the gate refuses all the same (do no harm).
    """
    lower, p, change = _paired_change(serving, tuned, metric)
    where = f"{tuned.query_type} {METRIC_LABELS[metric]}@{k} on {counted(tuned.n, 'validation query')}"
    if not lower:
        return GateVerdict(True, f"promoted: {where} {change}", serving, tuned, p, metric)
    how = "significantly worse" if p < SIGNIFICANCE else "worse, though not significantly"
    return GateVerdict(False, f"not promoted: {where} {change}: {how}; the serving model stays", serving, tuned, p, metric)


@dataclass(frozen=True)
class Gate:
    """The gate of one app: how it scores a table with its encoders, at which k, on which metric.

    Args:
        score: the metrics at k of an index on labeled queries with the retriever that answers the users.
        k: the cut `score` uses.
        metric: the metric `judge` compares.
        tuned_score: the tuned side's `score` when it searches otherwise (a trained reranker); None: `score`.
    """

    score: Callable[[LanceDBIndex, QADataset], EvalResult]
    k: int
    metric: MetricName = "hit_rate"
    tuned_score: Callable[[LanceDBIndex, QADataset], EvalResult] | None = None

    def verdict(self, serving: LanceDBIndex, tuned: LanceDBIndex, queries: QADataset) -> GateVerdict:
        tuned_row = (self.tuned_score or self.score)(tuned, queries)
        return judge(self.score(serving, queries), tuned_row, self.k, self.metric)
