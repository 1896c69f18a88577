"""Labeled data from a file: a CSV or TSV with one row per query and the passage that answers it,
or a QA dataset JSON."""

from __future__ import annotations

import csv
import ctypes
import logging
import sys
from pathlib import Path

from ..common.wording import counted
from ..errors import TuningError
from .beir import is_beir_folder, load_beir
from .documents import is_pdf
from .qa_dataset import QADataset, stable_id, warn_repeated_queries

logger = logging.getLogger(__name__)

# csv's default limit (131,072 characters a field) exists to stop runaway quoting, but a whole page
# is a normal context. The limit is stored in a C long, which is narrower than sys.maxsize on Windows.
_FIELD_SIZE_LIMIT = min(sys.maxsize, 2 ** (8 * ctypes.sizeof(ctypes.c_long) - 1) - 1)


def load_labeled_csv(
    path: str | Path,
    query_column: str = "query",
    context_column: str = "context",
) -> QADataset:
    """Read a labeled CSV (one row per query, the passage that answers it beside it).

    Tab-separated files (a `.tsv` suffix, or a tab-separated header naming `query_column`) load too.
    Rows with an empty query or context are skipped with a warning; a repeated query keeps
    every context it was given as relevant.

    Args:
        path: the CSV or TSV file.
        query_column: the header of the column holding queries.
        context_column: the header of the column holding the passage that answers each query.
    """
    path = Path(path)
    columns, rows = _read_rows(path, query_column)
    if not columns:
        raise TuningError(f"{path} is empty; it needs a header row with '{query_column}' and '{context_column}' columns")
    for wanted, flag in ((query_column, "--query-column"), (context_column, "--context-column")):
        if wanted not in columns:
            raise TuningError(
                f"{path}: no column '{wanted}' (columns: {', '.join(c or '<unnamed>' for c in columns)}); "
                f"name the right one with {flag}"
            )
    queries: dict[str, str] = {}
    corpus: dict[str, str] = {}
    relevant: dict[str, list[str]] = {}
    skipped = repeated = 0
    for row in rows:
        query = (row.get(query_column) or "").strip()
        context = (row.get(context_column) or "").strip()
        if not query or not context:
            skipped += 1
            continue
        doc_id = stable_id("doc", context)
        query_id = stable_id("q", query)
        repeated += query_id in queries
        corpus[doc_id] = context
        queries[query_id] = query
        docs = relevant.setdefault(query_id, [])
        if doc_id not in docs:
            docs.append(doc_id)
    if skipped:
        logger.warning("%s: skipped %s with an empty query or context; fill them in to use them", path, counted(skipped, "row"))
    warn_repeated_queries(path, repeated, "row")
    if not queries:
        raise TuningError(f"{path}: no rows with both a query and a context; the file has a header but no usable data")
    return QADataset(queries, corpus, relevant)


def _read_rows(path: Path, query_column: str) -> tuple[list[str], list[dict[str, str]]]:
    """The header and rows of a comma- or tab-separated file, or a one-line error saying what the file is."""
    if path.is_dir():
        raise TuningError(f"{path} is a directory; pass a labeled CSV file")
    try:
        if is_pdf(path):
            raise TuningError(
                f"{path} is a PDF, not a labeled CSV; train on it as documents with labeled queries to evaluate on "
                f"(`lancedb-tune run {path} --queries LABELED.csv --out DIR`), or make training pairs from it "
                f"with `lancedb-tune generate {path} --out pairs.json`"
            )
        if csv.field_size_limit() < _FIELD_SIZE_LIMIT:
            csv.field_size_limit(_FIELD_SIZE_LIMIT)
        with path.open(encoding="utf-8-sig", newline="") as fh:
            delimiter = _delimiter(path, fh.readline(), query_column)
            fh.seek(0)
            reader = csv.DictReader(fh, delimiter=delimiter)
            return list(reader.fieldnames or []), list(reader)
    except FileNotFoundError:
        raise TuningError(f"{path}: no such file; check the path") from None
    except UnicodeDecodeError as exc:
        raise TuningError(f"{path}: not UTF-8 text (byte {exc.start}); re-save the CSV as UTF-8") from None
    except csv.Error as exc:
        raise TuningError(f"{path}: unreadable CSV ({exc}); check quoting and delimiters") from None
    except OSError as exc:
        raise TuningError(f"{path}: cannot read ({exc.strerror})") from None


def _delimiter(path: Path, header: str, query_column: str) -> str:
    """A tab for a `.tsv` file or a header whose tab-separated names hold the query column, else a comma."""
    if path.suffix.lower() == ".tsv":
        return "\t"
    if query_column not in next(csv.reader([header]), []) and query_column in next(csv.reader([header], delimiter="\t"), []):
        return "\t"
    return ","


def load_qa_dataset(path: str | Path, query_column: str = "query", context_column: str = "context") -> QADataset:
    """A labeled CSV/TSV, a QA dataset JSON (by file extension) or a BEIR folder's test queries.

    Args:
        path: a `.json` file as `lancedb-tune generate` or LlamaIndex write it, a BEIR folder (`load_beir`
            reads other splits), else a labeled CSV or TSV.
        query_column: the CSV's query column.
        context_column: the CSV's context column.
    """
    if is_beir_folder(path):
        return load_beir(path)
    if Path(path).suffix.lower() == ".json":
        return QADataset.from_json(path)
    return load_labeled_csv(path, query_column, context_column)


# The name earlier releases exported, kept so their imports work; it shadows Hugging Face datasets'
# `load_dataset` where both are imported, so new code uses `load_qa_dataset`.
load_dataset = load_qa_dataset
