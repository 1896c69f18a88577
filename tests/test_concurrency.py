"""Concurrent writers and readers on one LanceDB table: no lost rows, no torn reads."""

from __future__ import annotations

import time

import numpy as np
import pytest
from test_kill import DIM, node_ids, shared_zygote, table_ids  # tests/ is on sys.path under pytest's default import mode

from llama_index_lancedb_tuning.store.table import connect, existing_table, table_schema


@pytest.fixture
def zygote():
    return shared_zygote()


def read_snapshot(uri: str, batch: int, allowed: set[str]) -> int:
    """One read while writers run: whole batches only, ids unique and known, searches answer."""
    table = existing_table(connect(uri), "t")
    if table is None:
        return 0  # being created right now
    ids = table_ids(table)
    assert len(ids) % batch == 0, f"torn read: {len(ids)} rows"
    assert len(set(ids)) == len(ids), "duplicate ids"
    assert set(ids) <= allowed
    if ids:
        assert table.search(np.ones(DIM, dtype=np.float32)).limit(3).to_list()
    return len(ids)


@pytest.mark.parametrize("create", [False, True], ids=["existing-table", "both-create"])
def test_two_appenders_and_a_reader_lose_nothing(zygote, tmp_path, create):
    n, batch, rounds = 60, 4, 4
    mid_write_reads = 0
    for round_ in range(rounds):
        uri = str(tmp_path / f"r{round_}")
        if not create:
            connect(uri).create_table("t", schema=table_schema(DIM))
        # Both workers ask for mode="append": the first one to commit creates the table when it is missing.
        pids = [zygote.start(uri=uri, mode="append", prefix=p, start=0, stop=n, batch=batch) for p in ("a", "b")]
        allowed = set(node_ids("a", 0, n)) | set(node_ids("b", 0, n))
        reads = []
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            reads.append(read_snapshot(uri, batch, allowed))
            if reads[-1] == 2 * n:
                break
        codes = [zygote.wait(pid) for pid in pids]
        assert codes == [0, 0], "a writer failed (see captured stderr)"
        assert read_snapshot(uri, batch, allowed) == 2 * n
        assert sorted(table_ids(connect(uri).open_table("t"))) == sorted(allowed)
        assert reads == sorted(reads), "a reader saw rows disappear"
        mid_write_reads += sum(0 < r < 2 * n for r in reads)
        table = connect(uri).open_table("t")
        assert len(table.search("passage topic", query_type="fts").limit(2 * n).to_list()) == 2 * n
    assert mid_write_reads >= 2, "the reader never caught the writers mid-way; the test did not exercise concurrent reads"
