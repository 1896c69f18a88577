"""BEIR folders as labeled datasets: `corpus.jsonl`, `queries.jsonl` and `qrels/<split>.tsv`.

The layout of the BEIR benchmark (Thakur et al. 2021) and of MTEB's retrieval tasks. A document's
title is joined to its text with a space, as BEIR's and MTEB's sentence-transformers evaluation
does; qrels may have a header or not, CRLF or LF line ends, and graded scores (0: judged not
relevant).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import TuningError
from .qa_dataset import QADataset

CORPUS_FILE = "corpus.jsonl"
QUERIES_FILE = "queries.jsonl"
QRELS_FOLDER = "qrels"
DEFAULT_SPLIT = "test"  # what `evaluate` scores, and `run` when the folder has it
TRAIN_SPLIT = "train"  # what `run` trains on


def is_beir_folder(path: str | Path) -> bool:
    """Whether `path` is a folder in BEIR's layout (it holds `corpus.jsonl`)."""
    return (Path(path) / CORPUS_FILE).is_file()


def beir_splits(folder: str | Path) -> list[str]:
    """The splits a BEIR folder has qrels for (`qrels/train.tsv` -> `train`), sorted."""
    return sorted(p.stem for p in (Path(folder) / QRELS_FOLDER).glob("*.tsv"))


def check_beir_folder(folder: str | Path, split: str) -> None:
    """The files `load_beir(folder, split)` reads are there; a one-line error names what is missing.

    Args:
        folder: the BEIR folder.
        split: the qrels to read, `qrels/<split>.tsv`.
    """
    folder = Path(folder)
    for name in (CORPUS_FILE, QUERIES_FILE):
        if not (folder / name).is_file():
            raise TuningError(f"{folder}: no {name}; a BEIR folder holds {CORPUS_FILE}, {QUERIES_FILE} and {QRELS_FOLDER}/")
    if not (folder / QRELS_FOLDER / f"{split}.tsv").is_file():
        held = ", ".join(beir_splits(folder)) or "none"
        raise TuningError(f"{folder}: no {QRELS_FOLDER}/{split}.tsv (splits: {held}); name one with --split")


def load_beir(folder: str | Path, split: str = DEFAULT_SPLIT, qrels_path: str | Path | None = None) -> QADataset:
    """The queries of one split of a BEIR folder, over the whole corpus.

    Every judged document with a score above 0 is relevant; a score above 1 is kept as its grade for
    graded metrics (nDCG). Queries the split judges nothing relevant for are left out, as BEIR does.

    Args:
        folder: a folder with `corpus.jsonl`, `queries.jsonl` and `qrels/<split>.tsv`.
        split: which qrels to read: `train`, `dev`, `test` or any other `qrels/<split>.tsv`.
        qrels_path: a qrels file to read instead of the split's, over the folder's corpus and queries
            (a split kept elsewhere, such as held-back test qrels).
    """
    folder = Path(folder)
    if qrels_path is None:
        check_beir_folder(folder, split)
        qrels_path = folder / QRELS_FOLDER / f"{split}.tsv"
    return _judged_queries(folder, Path(qrels_path), *_corpus_and_queries(folder))


def load_beir_splits(folder: str | Path, splits: list[str]) -> list[QADataset]:
    """Several splits of a BEIR folder (`load_beir`), the corpus and queries read once for all of them.

    Args:
        folder: the BEIR folder.
        splits: the qrels to read, `qrels/<split>.tsv` each.
    """
    folder = Path(folder)
    for split in splits:
        check_beir_folder(folder, split)
    corpus, queries = _corpus_and_queries(folder)
    return [_judged_queries(folder, folder / QRELS_FOLDER / f"{split}.tsv", corpus, queries) for split in splits]


def _corpus_and_queries(folder: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Document id -> title and text joined by a space, and query id -> text."""
    corpus = {
        str(row["_id"]): " ".join(part for part in (row.get("title", ""), row.get("text", "")) if part).strip()
        for row in _jsonl(folder / CORPUS_FILE)
    }
    return corpus, {str(row["_id"]): str(row.get("text", "")) for row in _jsonl(folder / QUERIES_FILE)}


def _judged_queries(folder: Path, qrels_path: Path, corpus: dict[str, str], all_queries: dict[str, str]) -> QADataset:
    """The queries `qrels_path` judges some document relevant for, over `corpus`."""
    relevant: dict[str, list[str]] = {}
    graded: dict[str, dict[str, int]] = {}
    for query_id, judged in read_qrels(qrels_path).items():
        if query_id not in all_queries:
            raise TuningError(f"{qrels_path} judges query '{query_id}', which {folder / QUERIES_FILE} lacks")
        for doc_id, score in judged.items():
            if doc_id not in corpus:
                raise TuningError(f"{qrels_path} judges document '{doc_id}', which {folder / CORPUS_FILE} lacks")
            if score > 0:
                relevant.setdefault(query_id, []).append(doc_id)
            if score > 1:
                graded.setdefault(query_id, {})[doc_id] = score
    if not relevant:
        raise TuningError(f"{qrels_path} judges no document relevant (a score above 0)")
    return QADataset({q: all_queries[q] for q in relevant}, corpus, relevant, relevance_scores=graded or None)


def read_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """A BEIR or TREC-style qrels TSV as query id -> document id -> score.

    Three tab-separated columns (`query-id corpus-id score`), or TREC's four (`query-id 0 corpus-id
    score`); a first line whose score is not a number is a header.

    Args:
        path: the qrels file.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # splitlines: CRLF and LF alike
    except FileNotFoundError:
        raise TuningError(f"{path}: no such qrels file; check the path") from None
    except UnicodeDecodeError as exc:
        raise TuningError(f"{path}: not UTF-8 text (byte {exc.start}); pass a qrels TSV") from None
    qrels: dict[str, dict[str, int]] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if len(fields) not in (3, 4):
            raise TuningError(f"{path} line {number}: {len(fields)} columns; a qrels line is 'query-id corpus-id score'")
        query_id, doc_id, score = fields[0], fields[-2], fields[-1]
        try:
            grade = int(float(score))
        except ValueError:
            if number == 1:
                continue  # the header
            raise TuningError(f"{path} line {number}: score {score!r} is not a number") from None
        qrels.setdefault(query_id.strip(), {})[doc_id.strip()] = grade
    if not qrels:
        raise TuningError(f"{path}: no qrels lines; expected 'query-id corpus-id score' per line")
    return qrels


def _jsonl(path: Path) -> list[dict]:
    rows = []
    try:
        with path.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                row = json.loads(line)
                if not isinstance(row, dict) or "_id" not in row:
                    raise TuningError(f"{path} line {number}: expected a JSON object with an '_id'")
                rows.append(row)
    except json.JSONDecodeError as exc:
        raise TuningError(f"{path} line {number}: not JSON ({exc.msg}); a BEIR file holds one JSON object per line") from None
    except UnicodeDecodeError as exc:
        raise TuningError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    if not rows:
        raise TuningError(f"{path} is empty; it needs one JSON object per line")
    return rows
