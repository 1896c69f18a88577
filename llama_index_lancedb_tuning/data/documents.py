"""Raw documents (id -> text) from a file or a folder of PDF, Markdown, text and CSV files."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import TuningError

DOCUMENT_SUFFIXES = (".pdf", ".md", ".markdown", ".txt", ".csv")
# The PDF header; the format lets readers accept it anywhere in the first 1024 bytes.
_PDF_MAGIC = b"%PDF-"
_PDF_HEADER_WINDOW = 1024


def is_pdf(path: str | Path) -> bool:
    """Whether the file's bytes are a PDF's, whatever its name says."""
    with open(path, "rb") as fh:
        return _PDF_MAGIC in fh.read(_PDF_HEADER_WINDOW)


def load_documents(path: str | Path, recursive: bool = True) -> dict[str, str]:
    """Raw documents (doc id -> text) from a file or a directory of PDF, Markdown, text and CSV.

    A CSV gives one document per row, rendered as `column: value` lines by LlamaIndex's
    `PagedCSVReader` as in the LanceDB guide; a PDF gives one document per page. Ids are
    the file path relative to `path` plus the page (`report.pdf:p12`) or row (`qa.csv:r3`),
    so they survive reruns and new files. Hidden files and folders inside `path` are skipped.

    Args:
        path: a document file, or a folder of them.
        recursive: also read the folder's subfolders.
    """
    path = Path(path)
    if not path.exists():
        raise TuningError(f"{path}: no such file or directory; check the path")
    if path.is_file() and path.suffix.lower() not in DOCUMENT_SUFFIXES:
        raise TuningError(f"{path}: unsupported file type '{path.suffix}'; pass one of {', '.join(DOCUMENT_SUFFIXES)}")
    root = path if path.is_dir() else path.parent
    files = _document_files(path, recursive)
    if not files:
        raise TuningError(f"{path}: no {', '.join(DOCUMENT_SUFFIXES)} files; point at a folder of documents")
    for file in files:
        try:
            fake_pdf = file.suffix.lower() == ".pdf" and not is_pdf(file)
        except OSError as exc:
            raise TuningError(f"{file}: cannot read ({exc.strerror}); check its permissions") from None
        if fake_pdf:
            raise TuningError(f"{file} is not a PDF (it has no %PDF- header); rename it to its real type or remove it")
    # Imported only now: a wrong path or file is reported before LlamaIndex's readers load (seconds).
    from llama_index.core import SimpleDirectoryReader

    from ..common.quiet import root_logging_unchanged

    with root_logging_unchanged():  # the readers configure logging on import
        from llama_index.readers.file import PagedCSVReader

    # Files are listed here, not by the reader's input_dir: the reader skips every path with a hidden
    # part, including the folders above `path` (a documents folder under ~/.data would read as empty).
    reader = SimpleDirectoryReader(
        input_files=[str(f) for f in files],
        file_extractor={".csv": PagedCSVReader(encoding="utf-8-sig")},
    )
    documents = reader.load_data()
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


def _document_files(path: Path, recursive: bool) -> list[Path]:
    """`path` itself if it is a file; else the document files in it, without hidden files and folders."""
    if path.is_file():
        return [path]
    files: list[Path] = []
    for folder, subfolders, names in os.walk(path):
        subfolders[:] = [d for d in subfolders if not d.startswith(".")] if recursive else []
        files.extend(Path(folder, n) for n in names if not n.startswith(".") and Path(n).suffix.lower() in DOCUMENT_SUFFIXES)
    return sorted(files)
