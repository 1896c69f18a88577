"""Fine-tuning on tiny data: a one-epoch run trains, resumes survive torn checkpoints, a diverged model is
never marked finished, a finished run keeps only its model, and a quiet run prints nothing."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from llama_index_lancedb_tuning import EmbeddingFinetuner, FinetuneConfig, QADataset, TuningError

TOOLS = ["hammer", "wrench", "chisel", "trowel", "pliers", "spanner", "mallet", "rasp", "awl", "vice"]


def tool_qa() -> QADataset:
    queries = {f"q{i}": f"Which tool is the {t}?" for i, t in enumerate(TOOLS)}
    corpus = {f"d{i}": f"The {t} is a hand tool kept on the third shelf of the workshop." for i, t in enumerate(TOOLS)}
    return QADataset(queries, corpus, {f"q{i}": [f"d{i}"] for i in range(len(TOOLS))})


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny batches gain nothing from threads, and on a shared CPU spinning threads cost 5x."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def weights(path: str | Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(Path(path) / "model.safetensors")


def test_a_one_epoch_run_changes_the_weights(tmp_path, default_model_path):
    # One optimizer step per stage: warmup used to spend it at learning rate 0.
    config = FinetuneConfig(epochs=1, batch_size=32, show_progress=False)
    EmbeddingFinetuner(config).fit(tool_qa(), tmp_path / "model")
    base, tuned = weights(default_model_path), weights(tmp_path / "model")
    assert tuned.keys() <= base.keys()
    changed = [name for name in tuned if not np.array_equal(base[name], tuned[name])]
    assert len(changed) > len(tuned) // 2


def test_a_finished_run_keeps_only_the_model_and_its_metrics(tmp_path):
    config = FinetuneConfig(epochs=2, batch_size=4, show_progress=False)
    out = tmp_path / "model"
    EmbeddingFinetuner(config).fit(tool_qa(), out, resume=True)
    names = {p.name for p in out.iterdir()}
    assert {"metrics.json", "model.safetensors", "config.json"} <= names
    assert not names & {"checkpoints", "refit_checkpoints", "selection.json"}
    assert not list(out.rglob("optimizer.pt"))


def test_resume_skips_a_checkpoint_torn_by_a_kill(tmp_path, monkeypatch):
    import llama_index_lancedb_tuning.training.finetuner as finetune_module

    calls = {"steps": 0, "kill_at": 3, "resume": []}

    class KilledTrainer(finetune_module.SentenceTransformerTrainer):
        def training_step(self, *args, **kwargs):
            calls["steps"] += 1
            if calls["steps"] == calls["kill_at"]:
                raise KeyboardInterrupt  # Ctrl-C in epoch 2, after checkpoint-2 was saved
            return super().training_step(*args, **kwargs)

        def train(self, resume_from_checkpoint=None, **kwargs):
            calls["resume"].append(resume_from_checkpoint)
            return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    monkeypatch.setattr(finetune_module, "SentenceTransformerTrainer", KilledTrainer)
    config = FinetuneConfig(epochs=2, batch_size=5, val_fraction=0, show_progress=False)  # 2 steps per epoch
    out = tmp_path / "model"
    with pytest.raises(KeyboardInterrupt):
        EmbeddingFinetuner(config).fit(tool_qa(), out, resume=True)
    checkpoints = out / "checkpoints"
    assert (checkpoints / "checkpoint-2" / "trainer_state.json").exists()
    # A second Ctrl-C landed while checkpoint-3 was being written: weights, no trainer state.
    (checkpoints / "checkpoint-3").mkdir()
    shutil.copy(checkpoints / "checkpoint-2" / "model.safetensors", checkpoints / "checkpoint-3")

    calls.update(steps=0, kill_at=-1, resume=[])
    result = EmbeddingFinetuner(config).fit(tool_qa(), out, resume=True)
    assert calls["resume"] == [str(checkpoints / "checkpoint-2")] and calls["steps"] == 2  # continued from epoch 1
    assert (out / "metrics.json").exists() and result.metrics["n_train_pairs"] == len(TOOLS)


def test_a_diverged_model_is_refused_and_not_marked_finished(tmp_path):
    config = FinetuneConfig(epochs=1, batch_size=5, learning_rate=1e30, val_fraction=0, show_progress=False)
    out = tmp_path / "model"
    with pytest.raises(TuningError, match=r"diverged.*not finite.*lower the learning rate"):
        EmbeddingFinetuner(config).fit(tool_qa(), out, resume=True)
    assert not (out / "metrics.json").exists()
    assert not (out / "checkpoints").exists()  # a rerun must not resume from the diverged weights


def test_a_quiet_run_prints_nothing(tmp_path, capfd):
    config = FinetuneConfig(epochs=1, batch_size=4, show_progress=False)
    EmbeddingFinetuner(config).fit(tool_qa(), tmp_path / "model")
    captured = capfd.readouterr()
    assert (captured.out, captured.err) == ("", "")
