"""A reranker model must be a cross-encoder, and a tuned model's files are as readable as any other."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from llama_index_lancedb_tuning import TuningError, node_reranker
from llama_index_lancedb_tuning.encoding.model_ids import resolve_cross_encoder

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "examples" / "sample_qa.csv"


def test_an_embedding_model_is_refused_as_a_cross_encoder(default_model_path):
    with pytest.raises(TuningError, match="is not a cross-encoder \\(no trained classification head"):
        resolve_cross_encoder(default_model_path)
    with pytest.raises(TuningError, match="is not a cross-encoder"):
        node_reranker(f"cross-encoder:{default_model_path}", 5, None)


def test_a_saved_cross_encoder_is_accepted(tmp_path, default_model_path):
    from sentence_transformers import CrossEncoder

    path = tmp_path / "reranker"
    CrossEncoder(default_model_path, num_labels=1).save(str(path))
    assert resolve_cross_encoder(str(path)) == str(path)


def test_the_cli_refuses_a_bi_encoder_reranker_before_any_scoring(tmp_path, default_model_path):
    code = "import sys; from llama_index_lancedb_tuning.cli import main; sys.exit(main(sys.argv[1:]))"
    argv = ["run", str(SAMPLE), "--reranker", f"cross-encoder:{default_model_path}", "--out", str(tmp_path / "out")]
    proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("lancedb-tune: error:") and "is not a cross-encoder" in lines[0], proc.stderr
    assert not (tmp_path / "out" / "baseline_results.json").exists()


def test_a_saved_model_gets_the_permissions_of_any_new_file(tmp_path, default_model_path):
    from sentence_transformers import SentenceTransformer

    from llama_index_lancedb_tuning.training.finetuner import save_model

    probe = tmp_path / "probe"
    probe.touch()
    expected = stat.S_IMODE(probe.stat().st_mode)
    save_model(SentenceTransformer(default_model_path, device="cpu"), tmp_path / "model")
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in (tmp_path / "model").rglob("*") if p.is_file()}
    assert modes["model.safetensors"] == expected, modes
    assert os.access(tmp_path / "model" / "model.safetensors", os.R_OK)
