"""Labeled QA data, seeded splits and model-sized chunking.

`QADataset` has the JSON shape of LlamaIndex's `EmbeddingQAFinetuneDataset` (queries,
corpus, relevant_docs, mode), so files round-trip with llama-index-finetuning, which
llama-index-core 0.14.21+ no longer ships.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from llama_index.core.node_parser import SentenceSplitter
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode

from .errors import TuningError

logger = logging.getLogger(__name__)

SOURCE_ID_KEY = "source_id"
# Letter runs this long are almost never one English word (the dictionary words that are, such as
# "internationalization", stay whole); picked on validation queries of data_qa.csv (BENCHMARKS.md).
GLUED_RUN_MIN_LETTERS = 16
_GLUED_RUN = re.compile(r"[A-Za-z]{%d,}" % GLUED_RUN_MIN_LETTERS)


def write_json(path: str | Path, data: Any, **dumps: Any) -> None:
    """Write JSON atomically: a killed write never leaves half a file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, **dumps), encoding="utf-8")
    tmp.replace(path)


def read_json(path: str | Path) -> Any | None:
    """A JSON file's content, or None if it is absent or was torn by a kill mid-write."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def stable_id(prefix: str, text: str) -> str:
    """An id derived from the text, so reruns and reorderings keep the same ids."""
    return f"{prefix}-{hashlib.sha1(text.encode('utf-8')).hexdigest()[:16]}"


@dataclass
class QADataset:
    """Queries, a corpus of source documents, and which documents answer each query."""

    queries: dict[str, str]
    corpus: dict[str, str]
    relevant_docs: dict[str, list[str]]
    mode: str = "text"
    query_ids: list[str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.query_ids = list(self.queries)

    def __len__(self) -> int:
        return len(self.queries)

    # -- JSON, shared with llama-index-finetuning -------------------------------------
    def to_dict(self) -> dict:
        return {
            "queries": self.queries,
            "corpus": self.corpus,
            "relevant_docs": self.relevant_docs,
            "mode": self.mode,
        }

    def save_json(self, path: str | Path) -> None:
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, self.to_dict(), indent=2, ensure_ascii=False)
        except OSError as exc:
            raise TuningError(f"cannot write pairs to {path} ({exc.strerror or exc}); choose another --out") from None

    @classmethod
    def from_json(cls, path: str | Path) -> QADataset:
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TuningError(f"{path}: no such file; check the path") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise TuningError(f"{path}: not a QA dataset JSON file ({exc}); pass a file written by `lancedb-tune generate`") from None
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
        return cls(queries, corpus, {q: relevant[q] for q in queries}, raw.get("mode", "text"))

    # -- subsets and seeded splits ----------------------------------------------------
    def subset(self, query_ids: list[str]) -> QADataset:
        """The same corpus with only these queries."""
        return QADataset(
            {q: self.queries[q] for q in query_ids},
            self.corpus,
            {q: self.relevant_docs[q] for q in query_ids},
            self.mode,
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
            raise TuningError(f"only {n} queries: too few to split off a test set; add labeled rows")
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


def load_labeled_csv(
    path: str | Path,
    query_column: str = "query",
    context_column: str = "context",
) -> QADataset:
    """Read a labeled CSV (one row per query, the passage that answers it beside it).

    Rows with an empty query or context are skipped with a warning; a repeated query keeps
    every context it was given as relevant.
    """
    path = Path(path)
    if path.is_dir():
        raise TuningError(f"{path} is a directory; pass a labeled CSV file")
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            rows = list(reader)
    except FileNotFoundError:
        raise TuningError(f"{path}: no such file; check the path") from None
    except UnicodeDecodeError as exc:
        raise TuningError(f"{path}: not UTF-8 text (byte {exc.start}); re-save the CSV as UTF-8") from None
    except csv.Error as exc:
        raise TuningError(f"{path}: unreadable CSV ({exc}); check quoting and delimiters") from None
    except OSError as exc:
        raise TuningError(f"{path}: cannot read ({exc.strerror})") from None
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
        logger.warning("%s: skipped %d rows with an empty query or context; fill them in to use them", path, skipped)
    if repeated:
        logger.warning("%s: %d rows repeat an earlier query; each query counts once, with all its contexts relevant", path, repeated)
    if not queries:
        raise TuningError(f"{path}: no rows with both a query and a context; the file has a header but no usable data")
    return QADataset(queries, corpus, relevant)


def load_dataset(path: str | Path, query_column: str = "query", context_column: str = "context") -> QADataset:
    """A labeled CSV or a QA dataset JSON, by file extension."""
    if Path(path).suffix.lower() == ".json":
        return QADataset.from_json(path)
    return load_labeled_csv(path, query_column, context_column)


def model_tokenizer(model_path: str) -> Callable[[str], list]:
    """The embedding model's own tokenizer, so chunk sizes are counted in its tokens."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except Exception as exc:  # the hub and transformers raise many types for "not found / offline"
        raise TuningError(
            f"cannot load the tokenizer of model '{model_path}' ({type(exc).__name__}); pass a local model directory "
            "or a hub id reachable from this machine"
        ) from None
    return lambda text: tokenizer.encode(text, add_special_tokens=False)


def split_glued_words(text: str) -> str:
    """Put back the spaces PDF extraction lost: "Wehaveimplementedaqualityassuranceprocess" becomes
    "We have implemented a quality assurance process".

    Only runs of at least `GLUED_RUN_MIN_LETTERS` letters are touched. A WordPiece tokenizer cuts
    such a run into meaningless pieces and BM25 sees one unknown term, so both searches miss the
    words inside it: 24% of the letters of data_qa.csv's contexts sit in such runs. English only:
    wordninja splits by a unigram model of English Wikipedia, bundled with it (no download).
    """
    import wordninja  # loads its word list on import (about half a second): only when text is repaired

    def split(match: re.Match[str]) -> str:
        words = wordninja.split(match.group(0))
        return " ".join(words) if "".join(words) == match.group(0) else match.group(0)

    return _GLUED_RUN.sub(split, text)


def chunk_corpus(
    corpus: dict[str, str],
    tokenizer: Callable[[str], list],
    chunk_size: int,
    chunk_overlap: int,
    fix_glued_words: bool = True,
) -> list[TextNode]:
    """Split each document into nodes of at most `chunk_size` model tokens.

    Every node points back to its document (SOURCE relationship and `source_id` metadata),
    so a hit on any node counts for its document. `fix_glued_words`: re-space words that PDF
    extraction ran together first (`split_glued_words`); the nodes then hold the repaired text.
    """
    if chunk_overlap >= chunk_size:
        raise TuningError(f"chunk_overlap ({chunk_overlap}) must be smaller than chunk_size ({chunk_size})")
    splitter = SentenceSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap, tokenizer=tokenizer)
    nodes = []
    for doc_id, text in corpus.items():
        for i, chunk in enumerate(splitter.split_text(split_glued_words(text) if fix_glued_words else text)):
            nodes.append(
                TextNode(
                    id_=f"{doc_id}:{i}",
                    text=chunk,
                    metadata={SOURCE_ID_KEY: doc_id},
                    excluded_embed_metadata_keys=[SOURCE_ID_KEY],
                    excluded_llm_metadata_keys=[SOURCE_ID_KEY],
                    relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=doc_id)},
                )
            )
    return nodes


DOCUMENT_SUFFIXES = (".pdf", ".md", ".markdown", ".txt", ".csv")


def load_documents(path: str | Path, recursive: bool = True) -> dict[str, str]:
    """Raw documents (doc id -> text) from a file or a directory of PDF, Markdown, text and CSV.

    A CSV gives one document per row, rendered as `column: value` lines by LlamaIndex's
    `PagedCSVReader` as in the LanceDB guide; a PDF gives one document per page. Ids are
    the file path relative to `path` plus the page (`report.pdf:p12`) or row (`qa.csv:r3`),
    so they survive reruns and new files.
    """
    from llama_index.core import SimpleDirectoryReader
    from llama_index.readers.file import PagedCSVReader

    path = Path(path)
    if not path.exists():
        raise TuningError(f"{path}: no such file or directory; check the path")
    if path.is_file() and path.suffix.lower() not in DOCUMENT_SUFFIXES:
        raise TuningError(f"{path}: unsupported file type '{path.suffix}'; pass one of {', '.join(DOCUMENT_SUFFIXES)}")
    root = path if path.is_dir() else path.parent
    try:
        reader = SimpleDirectoryReader(
            input_dir=str(path) if path.is_dir() else None,
            input_files=None if path.is_dir() else [str(path)],
            recursive=recursive,
            required_exts=list(DOCUMENT_SUFFIXES),
            file_extractor={".csv": PagedCSVReader(encoding="utf-8-sig")},
        )
        documents = reader.load_data()
    except ValueError as exc:  # SimpleDirectoryReader's "No files found in ..."
        raise TuningError(f"{path}: no {', '.join(DOCUMENT_SUFFIXES)} files ({exc}); point at a folder of documents") from None
    out: dict[str, str] = {}
    seen_per_file: dict[str, int] = {}
    for document in documents:
        text = document.text.strip()
        file_path = document.metadata.get("file_path")
        name = Path(file_path).resolve().relative_to(root.resolve()).as_posix() if file_path else "doc"
        index = seen_per_file[name] = seen_per_file.get(name, -1) + 1
        if not text:
            continue
        page = document.metadata.get("page_label")
        if page is not None:
            doc_id = f"{name}:p{page}"
        elif name.lower().endswith(".csv"):
            doc_id = f"{name}:r{index + 1}"
        else:
            doc_id = name if index == 0 else f"{name}#{index}"
        # Page labels can repeat (e.g. roman and arabic numbering); keep both pages.
        out[doc_id if doc_id not in out else f"{doc_id}#{index}"] = text
    if not out:
        raise TuningError(f"{path}: found no readable text (scanned PDFs need OCR first); pass documents with extractable text")
    return out
