"""The finetuner under torchrun: two CPU processes (gloo) train one model, and only rank 0 writes it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATA_QA

from llama_index_lancedb_tuning import EmbeddingFinetuner, FinetuneConfig, TuningError, load_labeled_csv
from llama_index_lancedb_tuning.cli import main
from llama_index_lancedb_tuning.common.jsonfile import read_json
from llama_index_lancedb_tuning.training.distributed import is_main_process, world_size

ROOT = Path(__file__).resolve().parents[1]


def test_rank_comes_from_the_launcher_environment(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert (world_size(), is_main_process()) == (2, False)
    monkeypatch.setenv("RANK", "0")
    assert is_main_process()


def test_the_cli_under_torchrun_points_to_a_training_script(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["evaluate", str(DATA_QA), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "EmbeddingFinetuner.fit" in err and "docs/scaling.md" in err


def test_a_batch_that_does_not_split_over_the_processes_is_refused_before_loading(monkeypatch, tmp_path):
    monkeypatch.setenv("WORLD_SIZE", "3")
    finetuner = EmbeddingFinetuner(FinetuneConfig(batch_size=32, show_progress=False))
    with pytest.raises(TuningError, match="batch_size 32 does not split evenly over 3 processes.*e.g. 30"):
        finetuner.fit(load_labeled_csv(DATA_QA), tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_two_process_training_saves_one_model(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",  # one core per process on a 2-core runner
        "HF_HUB_OFFLINE": "1",
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    done = subprocess.run(
        [*command, str(ROOT / "tests" / "ddp_train.py"), str(DATA_QA), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for recipe in ("full", "query"):
        out = tmp_path / recipe
        # One finished model: the weights and metrics.json, no resume state left by any rank.
        assert sorted(p.name for p in out.iterdir() if p.suffix == ".safetensors") == ["model.safetensors"]
        assert not any((out / name).exists() for name in ("checkpoints", "refit_checkpoints", "selection.json"))
        metrics = read_json(out / "metrics.json")
        assert metrics is not None and metrics["n_train_pairs"] == 32
    full, query = read_json(tmp_path / "full" / "metrics.json"), read_json(tmp_path / "query" / "metrics.json")
    # Validation ran on rank 0 and reached every rank: the selection picked an epoch and the refit trained on all 40 pairs.
    assert full["best_epoch"] == 1 and full["refit"]["n_train_pairs"] == 40
    assert "val_frozen_hit@5" in query["val_after"]
