"""The private parts of LanceDB this package reads, in one place.

LanceDB's sync `Table` offers no public way to its connection, its async table or the event loop
that runs both. Each is read here only, where `tests/test_lancedb_internals.py` checks it against the
installed lancedb, so a release that renames one fails that test instead of a user's query.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

import lancedb

T = TypeVar("T")


def table_connection(table: lancedb.table.Table) -> lancedb.DBConnection:
    """The connection that opened `table`: a second handle on it, or LlamaIndex's store over it."""
    return table._conn  # type: ignore[attr-defined]


def async_table(table: lancedb.table.Table) -> lancedb.table.AsyncTable | None:
    """The async table behind a local sync table; None for one without (a remote table)."""
    inner = getattr(table, "_table", None)
    return inner if isinstance(inner, lancedb.table.AsyncTable) else None


def run_on_lancedb_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    """Await `coroutine` on the background loop LanceDB's sync API runs on, where its async tables live."""
    from lancedb.background_loop import LOOP

    return LOOP.run(coroutine)
