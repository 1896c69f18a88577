"""What the data can and cannot support: too few queries to mean anything, a training corpus that
shares nothing with the evaluation corpus (warnings for the report), and data too small to run at all
(an error). Standard library only, so the CLI checks before torch is imported."""

from __future__ import annotations

import math
import re
from typing import Any

from ..common.wording import counted
from ..errors import TuningError

# A hit rate measured on fewer queries than this has a 95% interval wider than ±0.20 near 0.8:
# it cannot tell a real gain from noise.
MEANINGFUL_HALF_WIDTH = 0.20
# What a reader usually wants: ±0.10 on a rate near 0.8, the reference table's range.
WANTED_HALF_WIDTH = 0.10
TYPICAL_RATE = 0.8
_Z95 = 1.96
_SHINGLE_WORDS = 8
_WORD = re.compile(r"\w+")


def queries_for_half_width(half_width: float, rate: float = TYPICAL_RATE) -> int:
    """Queries a 95% interval of `half_width` on a hit rate near `rate` needs (normal approximation)."""
    return math.ceil(_Z95**2 * rate * (1 - rate) / half_width**2)


def sample_size_warnings(n_test: int, n_val: int | None) -> list[str]:
    """A warning per query set too small to mean anything; `n_val` None: no validation set."""
    least, wanted = queries_for_half_width(MEANINGFUL_HALF_WIDTH), queries_for_half_width(WANTED_HALF_WIDTH)
    sets = [("test set", n_test), ("validation set", n_val)]
    return [
        f"the {name} has only {counted(n, 'query')}: its hit rates are too uncertain to compare; "
        f"a 95% interval of ±{WANTED_HALF_WIDTH:.2f} on a rate near {TYPICAL_RATE} needs about {wanted} queries"
        for name, n in sets
        if n is not None and n < least
    ]


def _shingles(text: str) -> set[int]:
    words = _WORD.findall(text.lower())
    return {hash(tuple(words[i : i + _SHINGLE_WORDS])) for i in range(max(1, len(words) - _SHINGLE_WORDS + 1))}


def corpus_overlap_warnings(training: dict[str, str], evaluation: dict[str, str]) -> list[str]:
    """A warning when under half the evaluation documents share any 8-word passage with the
    training documents: tuning on one corpus and scoring on another measures nothing useful."""
    seen: set[int] = set()
    for text in training.values():
        seen |= _shingles(text)
    shared = sum(1 for text in evaluation.values() if _shingles(text) & seen)
    if shared * 2 >= len(evaluation):
        return []
    message = (
        f"only {shared} of {counted(len(evaluation), 'evaluation document')} share a passage with the training documents: "
        "the model is tuned on one corpus and scored on another; pass the documents the queries were written from"
    )
    return [message]


def check_data_size(dataset: Any, k: int, test_size: float | None) -> None:
    """Refuse data that cannot support the run at all, naming the one real problem.

    Args:
        dataset: a `QADataset` (its queries and corpus are counted).
        k: the hit-rate cut; it must not exceed the corpus.
        test_size: the fraction held out when a test set is split off, or None when none is.
    """
    n = len(dataset)
    n_test = 0 if test_size is None else math.ceil(test_size * n)
    if test_size is not None and n_test >= n:
        raise TuningError(
            f"only {counted(n, 'query')}: too few to hold out test queries and train on the rest; add labeled rows "
            f"(at least {queries_for_half_width(MEANINGFUL_HALF_WIDTH)} test queries make a hit rate worth comparing)"
        )
    # The fine-tuner and the gate each hold out validation queries from the training ones: one is too few.
    if test_size is not None and n - n_test < 2:
        raise TuningError(
            f"test size {test_size:g} holds out {n_test} of {counted(n, 'query')}, leaving {counted(n - n_test, 'training query')}: "
            "too few to train and validate on; pass a smaller --test-size or add labeled rows"
        )
    check_k(k, len(dataset.corpus), "--k")


def check_k(k: int, n_docs: int, option: str) -> None:
    """Refuse a cut `k` beyond the corpus's `n_docs` documents, naming `option` (`--k`, `k=`) in the fix."""
    if k > n_docs:
        fix = f"pass {option} {n_docs} or less" if option.startswith("--") else f"pass {option}{n_docs} or less"
        raise TuningError(
            f"k={k} is larger than the corpus ({counted(n_docs, 'document')}), so hit rate@k would count "
            f"nearly every query as found; {fix}"
        )
