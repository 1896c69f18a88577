"""Labeled QA data: queries, a corpus, which documents answer each query, and seeded splits.

`QADataset` has the JSON shape of LlamaIndex's `EmbeddingQAFinetuneDataset` (queries,
corpus, relevant_docs, mode), so files round-trip with llama-index-finetuning, which
llama-index-core 0.14.21+ no longer ships.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..common.jsonfile import write_json
from ..common.wording import counted
from ..errors import TuningError

logger = logging.getLogger(__name__)


def stable_id(prefix: str, text: str) -> str:
    """An id derived from the text, so reruns and reorderings keep the same ids."""
    return f"{prefix}-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:16]}"


def warn_repeated_queries(source: str | Path, repeated: int, unit: str) -> None:
    """The one warning every loader gives when a query text comes back: it is merged, not counted twice."""
    if repeated:
        logger.warning(
            "%s: %s repeated an earlier query; each query counts once, with all its contexts relevant",
            source,
            counted(repeated, unit),
        )


@dataclass
class QADataset:
    """Queries, a corpus of source documents, and which documents answer each query.

    `relevance_scores` grades documents per query (query id -> document id -> grade) for graded
    metrics such as nDCG; it adds to or overrides the grade 1 every document of `relevant_docs`
    has, and a grade of 0 or below is not relevant. None: grade 1 for each relevant document.
    """

    queries: dict[str, str]
    corpus: dict[str, str]
    relevant_docs: dict[str, list[str]]
    mode: str = "text"
    relevance_scores: dict[str, dict[str, int]] | None = None
    query_ids: list[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.query_ids = list(self.queries)

    def __len__(self) -> int:
        return len(self.queries)

    def grades(self, query_id: str) -> dict[str, int]:
        """The relevance grade of each judged document for `query_id`."""
        graded = dict.fromkeys(self.relevant_docs[query_id], 1)
        graded.update((self.relevance_scores or {}).get(query_id, {}))
        return graded

    # -- JSON, shared with llama-index-finetuning -------------------------------------
    def to_dict(self) -> dict:
        out: dict = {"queries": self.queries, "corpus": self.corpus, "relevant_docs": self.relevant_docs, "mode": self.mode}
        if self.relevance_scores is not None:  # binary data keeps the EmbeddingQAFinetuneDataset shape exactly
            out["relevance_scores"] = self.relevance_scores
        return out

    def save_json(self, path: str | Path) -> None:
        """Write the dataset as an `EmbeddingQAFinetuneDataset` JSON file.

        Args:
            path: the file to write; missing folders are created.
        """
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TuningError(
                f"cannot create the folder {path.parent} for {path.name} ({exc.strerror}); choose a writable location"
            ) from None
        write_json(path, self.to_dict(), indent=2, ensure_ascii=False)

    @classmethod
    def from_json(cls, path: str | Path) -> QADataset:
        """Read an `EmbeddingQAFinetuneDataset` JSON file, as `lancedb-tune generate` or LlamaIndex write it.

        A query text given again under a new id (LlamaIndex's generator does this) counts once, with every
        context it was given relevant, under its first id.

        Args:
            path: the JSON file.
        """
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TuningError(f"{path}: no such file; check the path") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TuningError(
                f"{path}: not a QA dataset JSON file ({exc}); pass a file written by `lancedb-tune generate`"
            ) from None
        missing = {"queries", "corpus", "relevant_docs"} - set(raw) if isinstance(raw, dict) else {"queries"}
        if missing:
            raise TuningError(f"{path}: missing keys {sorted(missing)}; expected the EmbeddingQAFinetuneDataset JSON shape")
        queries, corpus, relevant = raw["queries"], raw["corpus"], raw["relevant_docs"]
        for key, value in (("queries", queries), ("corpus", corpus)):
            if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
                raise TuningError(f"{path}: '{key}' must map ids to text; expected the EmbeddingQAFinetuneDataset JSON shape")
        if not queries:
            raise TuningError(f"{path}: no queries; pass a dataset with at least one query")
        if not isinstance(relevant, dict):
            raise TuningError(f"{path}: 'relevant_docs' must map query ids to lists of corpus ids")
        for query_id in queries:
            docs = relevant.get(query_id)
            if not isinstance(docs, list) or not docs:
                raise TuningError(f"{path}: query '{query_id}' has no relevant_docs; give every query at least one corpus id")
            absent = [d for d in docs if not isinstance(d, str) or d not in corpus]
            if absent:
                raise TuningError(
                    f"{path}: query '{query_id}' points at {absent[0]!r}, which is not in the corpus; "
                    "add that document to 'corpus' or fix relevant_docs"
                )
        first_id_of: dict[str, str] = {}
        merged: dict[str, list[str]] = {}
        for query_id, text in queries.items():
            first = first_id_of.setdefault(text.strip(), query_id)
            docs = merged.setdefault(first, [])
            docs.extend(d for d in relevant[query_id] if d not in docs)
        warn_repeated_queries(path, len(queries) - len(merged), "query")
        scores = _relevance_scores(path, raw.get("relevance_scores"), corpus)
        if scores is not None:  # a repeated query's grades go with its contexts, under its first id
            for query_id, text in queries.items():
                first = first_id_of[text.strip()]
                if query_id != first and query_id in scores:
                    scores[first] = {**scores.pop(query_id), **scores.get(first, {})}
        return cls({q: queries[q] for q in merged}, corpus, merged, raw.get("mode", "text"), scores)

    # -- subsets and seeded splits ----------------------------------------------------
    def subset(self, query_ids: list[str]) -> QADataset:
        """The same corpus with only these queries."""
        return QADataset(
            {q: self.queries[q] for q in query_ids},
            self.corpus,
            {q: self.relevant_docs[q] for q in query_ids},
            self.mode,
            None
            if self.relevance_scores is None
            else {q: self.relevance_scores[q] for q in query_ids if q in self.relevance_scores},
        )

    def split(self, test_size: float = 0.2, seed: int = 42) -> tuple[QADataset, QADataset]:
        """Split by query into (train, test).

        Same permutation as scikit-learn's `train_test_split(test_size, random_state=seed)`
        over the queries in file order, so the split matches the reference recipe's.
        """
        if not 0 < test_size < 1:
            raise TuningError(f"test_size must be between 0 and 1, got {test_size}")
        n = len(self.query_ids)
        n_test = math.ceil(test_size * n)
        if n_test >= n:
            raise TuningError(f"only {counted(n, 'query')}: too few to split off a test set; add labeled rows")
        order = np.random.RandomState(seed).permutation(n)
        ids = self.query_ids
        return self.subset([ids[i] for i in order[n_test:]]), self.subset([ids[i] for i in order[:n_test]])

    def kfold(self, n_splits: int = 5, seed: int = 42) -> Iterator[tuple[QADataset, QADataset]]:
        """Seeded k-fold by query: every query is a test query exactly once."""
        if not 2 <= n_splits <= len(self.query_ids):
            raise TuningError(f"n_splits must be between 2 and the number of queries ({len(self.query_ids)})")
        order = np.random.RandomState(seed).permutation(len(self.query_ids))
        for fold in np.array_split(order, n_splits):
            test = set(fold.tolist())
            ids = self.query_ids
            yield (
                self.subset([ids[i] for i in order if i not in test]),
                self.subset([ids[i] for i in sorted(test)]),
            )


def _relevance_scores(path: Path, raw: object, corpus: dict[str, str]) -> dict[str, dict[str, int]] | None:
    """A QA JSON's optional `relevance_scores`, checked: query id -> corpus id -> integer grade."""
    if raw is None:
        return None
    shape = "'relevance_scores' must map query ids to {corpus id: integer grade}"
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise TuningError(f"{path}: {shape}")
    for query_id, graded in raw.items():
        for doc, grade in graded.items():
            if isinstance(grade, bool) or not isinstance(grade, int):
                raise TuningError(f"{path}: query '{query_id}' grades {doc!r} {grade!r}; {shape}")
            if doc not in corpus:
                raise TuningError(f"{path}: query '{query_id}' grades {doc!r}, which is not in the corpus; fix relevance_scores")
    return {q: dict(graded) for q, graded in raw.items()}
