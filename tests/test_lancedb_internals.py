"""The private parts of LanceDB read in `lancedb_internals` still exist in the installed lancedb: a release
that renames one fails here, not in a user's query."""

from __future__ import annotations

import lancedb

from llama_index_lancedb_tuning.store.lancedb_internals import async_table, run_on_lancedb_loop, table_connection


def test_a_sync_table_exposes_its_connection_async_table_and_loop(tmp_path):
    db = lancedb.connect(str(tmp_path))
    table = db.create_table("t", data=[{"id": "a", "vector": [0.1, 0.2]}])
    assert isinstance(table_connection(table), lancedb.DBConnection)
    assert table_connection(table).open_table("t").count_rows() == 1
    inner = async_table(table)
    assert isinstance(inner, lancedb.table.AsyncTable), "lancedb no longer keeps the async table in Table._table"
    assert run_on_lancedb_loop(inner.count_rows()) == 1
