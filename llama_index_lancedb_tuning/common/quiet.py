"""Keeping the package quiet in a user's app: imports that would configure the app's logging."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def root_logging_unchanged() -> Iterator[None]:
    """The root logger's handlers and level as they were before the block.

    llama-index-readers-file's slides reader calls `logging.basicConfig(level=INFO)` when it is
    imported. In an app that configured no logging, that installs a stderr handler at INFO, and
    every library's INFO records print from then on: model loads, ONNX quantisation notes,
    LlamaIndex's per-query "query_type" lines. An app that configured logging first keeps it:
    basicConfig changes nothing there, so neither does this.
    """
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        for handler in [h for h in root.handlers if h not in handlers]:
            root.removeHandler(handler)
        root.setLevel(level)


def load_file_readers() -> None:
    """Import LlamaIndex's file readers now, with the root logger left as it is.

    Python imports a module once, so a later import of them (SimpleDirectoryReader loads them on
    first use, in the user's code or ours) configures nothing.
    """
    with root_logging_unchanged():
        import llama_index.readers.file  # noqa: F401
