"""Interruptions lose nothing: SIGKILLed ingests, killed fine-tuning, killed pipeline runs.

Ingest workers are forked from one "zygote" process that imported everything once and
never touched LanceDB, so each of the many kill trials costs milliseconds, not an import
of torch; the test process itself never forks (LanceDB state is not fork-safe mid-use).
"""

from __future__ import annotations

import atexit
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.schema import TextNode

from llama_index_lancedb_tuning import QADataset, TuningError
from llama_index_lancedb_tuning.cli import main
from llama_index_lancedb_tuning.evaluation.metrics import EvalResult
from llama_index_lancedb_tuning.search.index import LanceDBIndex
from llama_index_lancedb_tuning.store.table import connect, existing_table, missing_nodes, write_nodes

ROOT = Path(__file__).resolve().parents[1]
DIM = 8

ZYGOTE = r"""
import json, os, sys, warnings
warnings.simplefilter("ignore")
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.schema import TextNode
from llama_index_lancedb_tuning.store.table import connect, existing_table, missing_nodes, write_nodes

def job(spec):
    db = connect(spec["uri"])
    nodes = [TextNode(id_=f"{spec['prefix']}{i}", text=f"passage {i} of {spec['prefix']} about topic {i % 7}")
             for i in range(spec["start"], spec["stop"])]
    if spec.get("resume"):
        nodes = missing_nodes(existing_table(db, spec["table"]), nodes)
    write_nodes(nodes, MockEmbedding(embed_dim=spec["dim"]), db, spec["table"], mode=spec["mode"],
                batch_size=spec["batch"], show_progress=False)

print("ready", flush=True)
for line in sys.stdin:
    msg = json.loads(line)
    if msg["op"] == "start":
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                job(msg["spec"])
            except BaseException as exc:
                sys.stderr.write(f"worker failed: {type(exc).__name__}: {exc}\n")
                code = 1
            sys.stderr.flush()
            os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
    elif msg["op"] == "wait":
        _, status = os.waitpid(msg["pid"], 0)
        print(json.dumps({"status": os.waitstatus_to_exitcode(status)}), flush=True)
"""


class Zygote:
    """A process that forks workers on request (ingest workers, or the `job` of another `script`); `start` returns the worker's pid."""

    def __init__(self, script: str = ZYGOTE) -> None:
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        assert self.proc.stdout.readline().strip() == "ready"

    def _ask(self, msg: dict) -> dict:
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def start(self, **spec) -> int:
        return self._ask({"op": "start", "spec": {"dim": DIM, "table": "t", "prefix": "n", **spec}})["pid"]

    def wait(self, pid: int) -> int:
        return self._ask({"op": "wait", "pid": pid})["status"]

    def close(self) -> None:
        self.proc.kill()  # it holds no state worth a clean shutdown, which takes seconds
        self.proc.wait(timeout=30)


_shared: dict[str, Zygote] = {}


def shared_zygote(script: str = ZYGOTE) -> Zygote:
    """One zygote per script and test session (its start costs an import of the whole stack), closed at exit."""
    if script not in _shared:
        _shared[script] = Zygote(script)
        atexit.register(_shared[script].close)
    return _shared[script]


@pytest.fixture
def zygote():
    return shared_zygote()


def node_ids(prefix: str, start: int, stop: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(start, stop)]


def make_nodes(prefix: str, start: int, stop: int) -> list[TextNode]:
    return [TextNode(id_=f"{prefix}{i}", text=f"passage {i} of {prefix} about topic {i % 7}") for i in range(start, stop)]


def table_ids(table) -> list[str]:
    return table.search().select(["id"]).limit(None).to_arrow().column("id").to_pylist()


def check_whole_batches(uri: str, batch: int, expected: list[str]):
    """The table after a kill: opens, holds whole batches of a prefix of `expected`, no duplicates, searchable."""
    table = existing_table(connect(uri), "t")
    if table is None:
        return None, 0  # killed before the table's first commit
    ids = table_ids(table)
    assert len(ids) % batch == 0, f"{len(ids)} rows: a torn batch"
    assert len(set(ids)) == len(ids), "duplicate ids"
    assert sorted(ids) == sorted(expected[: len(ids)]), "rows beyond whole batches in order"
    assert table.count_rows() == len(ids)
    if ids:
        hits = table.search(np.ones(DIM, dtype=np.float32)).limit(2).to_list()
        assert len(hits) == min(2, len(ids))
    return table, len(ids)


def finish_ingest(uri: str, nodes: list[TextNode], batch: int) -> None:
    """The documented resume: append only the nodes the table does not hold yet."""
    db = connect(uri)
    write_nodes(
        missing_nodes(existing_table(db, "t"), nodes),
        MockEmbedding(embed_dim=DIM),
        db,
        "t",
        mode="append",
        batch_size=batch,
        show_progress=False,
    )


def test_sigkilled_ingest_leaves_whole_batches_and_resumes_without_loss(zygote, tmp_path):
    n, batch = 120, 4
    nodes = make_nodes("n", 0, n)
    expected = node_ids("n", 0, n)
    spec = {"start": 0, "stop": n, "batch": batch}

    t = time.perf_counter()
    pid = zygote.start(uri=str(tmp_path / "calibrate"), mode="create", **spec)
    assert zygote.wait(pid) == 0
    full = time.perf_counter() - t
    assert check_whole_batches(str(tmp_path / "calibrate"), batch, expected)[1] == n

    rng = random.Random(7)
    trials, mid_ingest, killed_resumes = 24, 0, 0
    for trial in range(trials):
        uri = str(tmp_path / f"trial{trial}")
        pid = zygote.start(uri=uri, mode="create", **spec)
        time.sleep(rng.uniform(0.0, 1.1 * full))
        os.kill(pid, signal.SIGKILL)
        assert zygote.wait(pid) in (-signal.SIGKILL, 0)
        _, rows = check_whole_batches(uri, batch, expected)
        mid_ingest += 0 < rows < n
        if trial % 2:
            # Kill the resume too, then resume again: still whole batches, nothing twice.
            pid = zygote.start(uri=uri, mode="append", resume=True, **spec)
            time.sleep(rng.uniform(0.0, 0.6 * full))
            os.kill(pid, signal.SIGKILL)
            killed_resumes += zygote.wait(pid) == -signal.SIGKILL
            check_whole_batches(uri, batch, expected)
        finish_ingest(uri, nodes, batch)
        table, rows = check_whole_batches(uri, batch, expected)
        assert rows == n and sorted(table_ids(table)) == sorted(expected)
        assert table.search("passage topic", query_type="fts").limit(n).to_list(), "full-text index rebuilt by the resume"
    assert mid_ingest >= 3, f"only {mid_ingest} of {trials} kills landed mid-ingest; the test did not exercise it"
    assert killed_resumes >= 1


def test_missing_nodes_is_what_a_resume_needs(tmp_path):
    nodes = make_nodes("m", 0, 10)
    db = connect(str(tmp_path))
    assert missing_nodes(None, nodes) == nodes
    table = write_nodes(nodes[:6], MockEmbedding(embed_dim=DIM), db, "t", batch_size=3, show_progress=False)
    assert [n.node_id for n in missing_nodes(table, nodes)] == node_ids("m", 6, 10)
    write_nodes(missing_nodes(table, nodes), MockEmbedding(embed_dim=DIM), db, "t", mode="append", show_progress=False)
    assert missing_nodes(db.open_table("t"), nodes) == []
    assert sorted(table_ids(db.open_table("t"))) == sorted(node_ids("m", 0, 10))


def test_create_killed_before_its_first_commit_counts_as_no_table(tmp_path):
    """A kill inside create_table leaves t.lance/_transactions and no version: listed, yet unopenable."""
    (tmp_path / "t.lance" / "_transactions").mkdir(parents=True)
    db = connect(str(tmp_path))
    assert "t" in db.table_names() and existing_table(db, "t") is None
    with pytest.raises(TuningError, match="no table 't'.*build it first"):
        LanceDBIndex.open(MockEmbedding(embed_dim=DIM), uri=str(tmp_path), table_name="t")
    nodes = make_nodes("c", 0, 4)
    assert missing_nodes(existing_table(db, "t"), nodes) == nodes
    write_nodes(nodes, MockEmbedding(embed_dim=DIM), db, "t", mode="create", show_progress=False)  # not "already exists"
    assert sorted(table_ids(existing_table(db, "t"))) == node_ids("c", 0, 4)


# -- fine-tuning resumes from its last checkpoint ----------------------------------------

TOPICS = ["volcanoes", "glaciers", "coral reefs", "deserts", "rainforests", "tundra", "estuaries", "savannas"]


def tiny_qa() -> QADataset:
    queries = {f"q{i}": f"What lives in {t}?" for i, t in enumerate(TOPICS)}
    corpus = {f"d{i}": f"Many animals and plants live in {t}, adapted to its climate." for i, t in enumerate(TOPICS)}
    return QADataset(queries, corpus, {f"q{i}": [f"d{i}"] for i in range(len(TOPICS))})


@pytest.fixture
def one_torch_thread():
    """Tiny batches gain nothing from threads, and on a shared CPU spinning threads cost 5x."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_killed_finetune_resumes_from_the_last_checkpoint(tmp_path, monkeypatch, one_torch_thread):
    import llama_index_lancedb_tuning.training.finetuner as finetune_module
    from llama_index_lancedb_tuning import EmbeddingFinetuner, FinetuneConfig

    calls = {"resume": [], "steps": 0, "global_step": None, "kill_at": -1}

    class SpyTrainer(finetune_module.SentenceTransformerTrainer):
        def training_step(self, *args, **kwargs):
            calls["steps"] += 1
            if calls["steps"] == calls["kill_at"]:
                raise KeyboardInterrupt
            return super().training_step(*args, **kwargs)

        def train(self, resume_from_checkpoint=None, **kwargs):
            calls["resume"].append(resume_from_checkpoint)
            result = super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
            calls["global_step"] = self.state.global_step
            return result

    monkeypatch.setattr(finetune_module, "SentenceTransformerTrainer", SpyTrainer)
    config = FinetuneConfig(epochs=2, batch_size=4, val_fraction=0, show_progress=False)
    EmbeddingFinetuner(config).fit(tiny_qa(), tmp_path / "uninterrupted", resume=True)
    assert calls == {"resume": [None], "steps": 4, "global_step": 4, "kill_at": -1}  # 8 pairs, batch 4: 2 steps x 2 epochs
    assert not (tmp_path / "uninterrupted" / "checkpoints").exists()  # a finished run keeps only its model
    from safetensors.numpy import load_file

    uninterrupted = load_file(tmp_path / "uninterrupted" / "model.safetensors")

    # Killed during epoch 2: the epoch-1 checkpoint is all that was saved.
    out = tmp_path / "model"
    calls.update(resume=[], steps=0, global_step=None, kill_at=3)
    with pytest.raises(KeyboardInterrupt):
        EmbeddingFinetuner(config).fit(tiny_qa(), out, resume=True)
    assert sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*")) == ["checkpoint-2"]
    calls.update(resume=[], steps=0, global_step=None, kill_at=-1)
    EmbeddingFinetuner(config).fit(tiny_qa(), out, resume=True)
    # Continued, not restarted.
    assert calls["resume"] == [str(out / "checkpoints" / "checkpoint-2")] and calls["steps"] == 2 and calls["global_step"] == 4
    assert (out / "metrics.json").exists()
    resumed = load_file(out / "model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    for name, weights in uninterrupted.items():  # same weights as the run that was never interrupted
        np.testing.assert_allclose(resumed[name], weights, atol=1e-5, err_msg=name)


# -- a killed `run` restarts without redoing finished stages ------------------------------


def fake_results(label: str) -> list[EvalResult]:
    return [EvalResult(label, qt, None, 0.5, 0.4, (0.2, 0.8), 3, 1.0, per_query=[1.0, 0.0, 1.0]) for qt in ("vector", "fts")]


@pytest.fixture
def staged(monkeypatch, tmp_path):
    """The pipeline with its two expensive stages replaced by recorders; `kill_at` interrupts one.

    They make no tables, so runs on it pass --no-gate (the gate scores the tables).
    """
    import llama_index_lancedb_tuning.training.finetuner as finetuner_module
    import llama_index_lancedb_tuning.tuning.run_loop as pipeline_module

    state = {"scored": [], "fits": [], "kill_at": None}

    def score_model(model, label, *args, **kwargs):
        if state["kill_at"] == label:
            raise KeyboardInterrupt  # what Ctrl-C does; a SIGKILL leaves the same files behind
        state["scored"].append(label)
        return fake_results(label)

    def fit(self, train, output_dir, nodes=None, resume=False, stored_vectors=None, adaptation=None):
        state["fits"].append(resume)
        if state["kill_at"] == "finetune":
            raise KeyboardInterrupt
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "metrics.json").write_text(json.dumps({"n_train_pairs": len(train)}))

    monkeypatch.setattr(pipeline_module, "score_model", score_model)
    monkeypatch.setattr(finetuner_module.EmbeddingFinetuner, "fit", fit)
    rows = "".join(
        f"What does note {i} cover?,Note {i % 6} covers subject {i % 6} in a few plain words. "
        f"It also explains why subject {i % 6} matters to every team member.\n"
        for i in range(12)
    )
    (tmp_path / "qa.csv").write_text("query,context\n" + rows)
    return state


def test_killed_run_restarts_where_it_stopped(staged, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["run", str(tmp_path / "qa.csv"), "--out", str(out), "--k", "3", "--quiet", "--no-gate"]

    staged["kill_at"] = "finetune"
    assert main(argv) == 130
    assert "interrupted; rerun the same command to resume" in capsys.readouterr().err
    assert staged["scored"] == ["baseline"] and not (out / "report.json").exists()
    baseline_mtime = (out / "baseline_results.json").stat().st_mtime_ns

    staged.update(kill_at="tuned", scored=[], fits=[])
    assert main(argv) == 130
    assert staged["scored"] == [] and staged["fits"] == [True]  # baseline reused; training resumes
    assert (out / "baseline_results.json").stat().st_mtime_ns == baseline_mtime
    assert not (out / "report.json").exists()

    staged.update(kill_at=None, scored=[], fits=[])
    assert main(argv) == 0
    assert staged["scored"] == ["tuned"] and staged["fits"] == []  # neither baseline nor training redone
    assert (out / "baseline_results.json").stat().st_mtime_ns == baseline_mtime
    report = json.loads((out / "report.json").read_text())
    assert [r["model"] for r in report["results"]] == ["baseline"] * 2 + ["tuned"] * 2
    capsys.readouterr()

    # Finished now: a rerun is refused rather than silently redone.
    assert main(argv) == 2 and "already holds a finished report" in capsys.readouterr().err


def test_torn_metrics_file_reruns_training_and_no_resume_is_passed_on(staged, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["run", str(tmp_path / "qa.csv"), "--out", str(out), "--k", "3", "--quiet", "--no-resume", "--no-gate"]
    staged["kill_at"] = "tuned"
    assert main(argv) == 130
    assert staged["fits"] == [False]
    (out / "model" / "metrics.json").write_text('{"n_train_pa')  # killed mid-write
    staged.update(kill_at=None, fits=[])
    assert main(argv) == 0, capsys.readouterr().err
    assert staged["fits"] == [False]
    assert json.loads((out / "report.json").read_text())["finetune_metrics"]["n_train_pairs"] > 0


def test_generated_pairs_are_not_regenerated(staged, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["run", str(tmp_path / "qa.csv"), "--out", str(out), "--k", "3", "--quiet", "--pairs", "offline"]
    staged["kill_at"] = "baseline"
    assert main(argv) == 130
    pairs = out / "pairs.json"
    mtime = pairs.stat().st_mtime_ns
    staged["kill_at"] = None
    assert main(argv) == 0, capsys.readouterr().err
    assert pairs.stat().st_mtime_ns == mtime
