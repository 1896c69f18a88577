"""Swapping the model of a live table: a reader never sees a mix of two models' vectors, or vectors
the recorded encoders did not make, and a kill at any point of a promotion leaves the old state or
the new one, whole. The swap runs on precomputed vectors in workers forked from a zygote (no
training, no model), so each of the many trials costs milliseconds.
"""

from __future__ import annotations

import inspect
import os
import random
import signal
import time

import numpy as np
import pyarrow as pa
import pytest
from test_kill import DIM, ZYGOTE, shared_zygote  # tests/ is on sys.path under pytest's default import mode

from llama_index_lancedb_tuning.store.encoder_record import EncoderNames, record_encoders, recorded_encoders
from llama_index_lancedb_tuning.store.table import connect, ensure_fts_index, table_schema
from llama_index_lancedb_tuning.store.versions import current_promotion, history, rollback

ROWS = 300
MODELS = {"a": EncoderNames("model-a", "model-a"), "b": EncoderNames("model-b", "model-b")}


def model_vectors(model: str, ids: list[str], dim: int) -> np.ndarray:
    """What model `a` or `b` 'embeds' each row as: fixed per (model, id), different between models."""
    import hashlib

    seeds = [int(hashlib.sha1(f"{model}:{i}".encode()).hexdigest()[:8], 16) for i in ids]
    return np.stack([np.random.default_rng(s).standard_normal(dim) for s in seeds]).astype(np.float32)


SWAP_JOB = (
    r"""
import json, os, sys, warnings
warnings.simplefilter("ignore")
import numpy as np
import pyarrow as pa
from llama_index_lancedb_tuning.store.encoder_record import EncoderNames
from llama_index_lancedb_tuning.store.table import connect
from llama_index_lancedb_tuning.store.versions import promote, rollback
"""
    + inspect.getsource(model_vectors)
    + r"""
def job(spec):
    table = connect(spec["uri"]).open_table(spec["table"])
    for step in spec["steps"]:
        if step == "rollback":
            rollback(table)
            continue
        rows = table.to_arrow()
        vectors = model_vectors(step, rows.column("id").to_pylist(), spec["dim"])
        column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), spec["dim"])
        rows = rows.set_column(rows.schema.get_field_index("vector"), rows.schema.field("vector"), column)
        promote(table, EncoderNames(f"model-{step}", f"model-{step}"), EncoderNames("model-a", "model-a"), {}, rows)

"""
    + ZYGOTE[ZYGOTE.index('print("ready"') :]
)


@pytest.fixture
def swapper():
    return shared_zygote(SWAP_JOB)


def serving_table(uri: str):
    """A table embedded by model `a`, with its encoders recorded and a full-text index."""
    ids = [f"r{i}" for i in range(ROWS)]
    vectors = model_vectors("a", ids, DIM)
    rows = pa.Table.from_pydict(
        {
            "id": ids,
            "doc_id": [f"d{i % 30}" for i in range(ROWS)],
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), DIM),
            "text": [f"passage {i} about topic {i % 7}" for i in range(ROWS)],
            "metadata": [None] * ROWS,
        },
        schema=table_schema(DIM),
    )
    table = connect(uri).create_table("t", rows)
    record_encoders(table, MODELS["a"])
    ensure_fts_index(table)
    return table


def whole_state(uri: str) -> str:
    """Which model serves the table's latest version: all vectors from one model, the recorded pair that
    model's, and both kinds of search answer; fails on anything else."""
    table = connect(uri).open_table("t")  # pinned to the version it opened: every read below is of one version
    rows = table.to_arrow()
    ids, vectors = rows.column("id").to_pylist(), np.asarray(rows.column("vector").to_pylist(), dtype=np.float32)
    assert len(ids) == ROWS and len(set(ids)) == ROWS, f"{len(ids)} rows"
    served = [m for m in MODELS if np.array_equal(vectors, model_vectors(m, ids, DIM))]
    assert served, "a mix of two models' vectors"
    assert recorded_encoders(table) == MODELS[served[0]], f"vectors of model {served[0]}, recorded {recorded_encoders(table)}"
    assert table.search(vectors[0]).limit(3).to_list()
    assert len(table.search("passage topic", query_type="fts").limit(ROWS).to_list()) == ROWS
    return served[0]


def finished(uri: str, promotions: int) -> bool:
    """The swapper's last step is done: its last promotion is tagged and rolled back."""
    table = connect(uri).open_table("t")
    return f"promotion-{promotions}" in table.tags.list() and current_promotion(table) is None


def test_a_reader_sees_only_whole_states_while_another_process_promotes_and_rolls_back(swapper, tmp_path):
    uri, cycles = str(tmp_path), 6
    serving_table(uri)
    pid = swapper.start(uri=uri, steps=["b", "rollback"] * cycles)
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not finished(uri, cycles):
        seen.append(whole_state(uri))
    assert swapper.wait(pid) == 0, "the swapper failed (see captured stderr)"
    assert whole_state(uri) == "a"
    assert [p.number for p in history(connect(uri).open_table("t"))] == list(range(1, cycles + 1))
    assert {"a", "b"} <= set(seen), f"the reader never saw a promotion land ({len(seen)} reads)"


def test_a_kill_at_any_point_of_a_promotion_leaves_the_old_or_the_new_state_whole(swapper, tmp_path):
    serving_table(str(tmp_path / "calibrate"))
    t = time.perf_counter()
    pid = swapper.start(uri=str(tmp_path / "calibrate"), steps=["b"])
    assert swapper.wait(pid) == 0
    full = time.perf_counter() - t
    assert whole_state(str(tmp_path / "calibrate")) == "b"

    rng = random.Random(16)
    outcomes, mid_swap = [], 0
    for trial in range(24):
        uri = str(tmp_path / f"trial{trial}")
        serving_table(uri)
        pid = swapper.start(uri=uri, steps=["b"])
        time.sleep(rng.uniform(0.0, 1.1 * full))
        os.kill(pid, signal.SIGKILL)
        assert swapper.wait(pid) in (-signal.SIGKILL, 0)
        outcomes.append(whole_state(uri))
        tags = connect(uri).open_table("t").tags.list()
        mid_swap += "promotion-1-before" in tags and "promotion-1" not in tags
        if outcomes[-1] == "b":  # a promotion a kill cut short of its tag still rolls back, exactly
            rollback(connect(uri).open_table("t"))
            assert whole_state(uri) == "a"
    assert {"a", "b"} <= set(outcomes), f"kills always left {outcomes[0]}: the test did not exercise the swap"
    assert mid_swap >= 3, f"only {mid_swap} of 24 kills landed inside a promotion"


def test_history_and_rollback_from_the_command_line(tmp_path, capsys):
    from llama_index_lancedb_tuning.cli import main
    from llama_index_lancedb_tuning.store.versions import promote

    uri = str(tmp_path)
    table = serving_table(uri)
    before = table.version
    argv = ["--uri", uri, "--table-name", "t"]
    assert main(["history", *argv]) == 0 and "has served no tuned model yet" in capsys.readouterr().out
    rows = table.to_arrow()
    vectors = pa.FixedSizeListArray.from_arrays(pa.array(model_vectors("b", rows.column("id").to_pylist(), DIM).reshape(-1)), DIM)
    figures = {"query_type": "vector", "n": 12, "serving": {"hit_rate": 0.5}, "tuned": {"hit_rate": 0.75}, "p_value": 0.25}
    version = promote(table, MODELS["b"], MODELS["a"], figures, rows.set_column(2, rows.schema.field("vector"), vectors))
    assert whole_state(uri) == "b"

    assert main(["history", *argv]) == 0
    assert capsys.readouterr().out.strip() == (
        f"#1 version {version} (replaced {before}) full [serving]: queries model-b, documents model-b; "
        "vector hit on 12 validation queries: 0.500 -> 0.750"
    )
    assert main(["rollback", *argv]) == 0
    assert "as before its last promotion; encoders: queries model-a, documents model-a" in capsys.readouterr().out
    assert whole_state(uri) == "a"
    assert main(["rollback", *argv]) == 2
    assert capsys.readouterr().err.strip() == (
        "lancedb-tune: error: table 't' serves no promotion to roll back; its history lists what it served"
    )


def test_the_gate_promotes_only_when_validation_shows_no_loss():
    from llama_index_lancedb_tuning.evaluation.ir_metrics import per_query_scores
    from llama_index_lancedb_tuning.evaluation.metrics import EvalResult
    from llama_index_lancedb_tuning.tuning.gate import judge

    def scored(hits: list[int]) -> EvalResult:
        ranked = [["answer"] if hit else ["other"] for hit in hits]
        return EvalResult.from_scores(per_query_scores(ranked, [{"answer": 1}] * len(hits), 5), "m", "hybrid", None, 0.0)

    serving = scored([1, 1, 0, 0, 1, 0, 1, 0, 1, 1])
    tie = judge(serving, scored([1, 0, 1, 0, 1, 0, 1, 0, 1, 1]), 5)
    assert (
        tie.promoted
        and tie.reason == "promoted: hybrid hit@5 on 10 validation queries 0.600 -> 0.600 (+0 queries, McNemar p=1.000)"
    )
    loss = judge(serving, scored([1, 1, 0, 0, 1, 0, 1, 0, 1, 0]), 5)
    assert not loss.promoted and loss.reason.endswith(
        "(-1 query, McNemar p=1.000): worse, though not significantly; the serving model stays"
    )
    collapse = judge(scored([1] * 10), scored([0] * 10), 5)
    assert not collapse.promoted and "significantly worse" in collapse.reason and collapse.p_value == 0.002
    assert collapse.figures()["serving"]["hit_rate"] == 1.0 and collapse.figures()["tuned"]["hit_rate"] == 0.0


def test_the_gate_needs_queries_the_model_never_trains_on(small_dataset):
    from llama_index_lancedb_tuning import TuningError
    from llama_index_lancedb_tuning.training.finetuner import FinetuneConfig
    from llama_index_lancedb_tuning.tuning.gate import gate_queries

    # The default recipe never trains on its validation carve: the fine-tuner gets every query and
    # carves the gate's queries itself.
    given, held_out = gate_queries(small_dataset, None, FinetuneConfig())
    assert len(held_out) == 8 and given is small_dataset
    assert set(held_out.queries) == set(small_dataset.split(0.2, 42)[1].queries)
    # A refit trains on that carve too: the gate's queries are kept from it.
    fit, kept = gate_queries(small_dataset, None, FinetuneConfig(refit=True))
    assert set(kept.queries) == set(held_out.queries) and not set(fit.queries) & set(kept.queries)
    with pytest.raises(TuningError, match="never trains on; pass eval_dataset=, a val_fraction above 0, or gate=False"):
        gate_queries(small_dataset, None, FinetuneConfig(val_fraction=0.0))
    with pytest.raises(TuningError, match="8 gate queries also appear among the training queries"):
        gate_queries(small_dataset, held_out, FinetuneConfig())
