"""EmbeddingFinetuner on real data_qa slices: the default single pass, epoch selection on validation, and the refit on every training query."""

from __future__ import annotations

import json

import numpy as np
import pytest


@pytest.fixture()
def spy_trainer(monkeypatch):
    import llama_index_lancedb_tuning.training.finetuner as finetune_module

    runs: list[dict] = []

    class SpyTrainer(finetune_module.SentenceTransformerTrainer):
        def train(self, *args, **kwargs):
            result = super().train(*args, **kwargs)
            runs.append(
                {
                    "anchors": set(self.train_dataset["anchor"]),
                    "epochs": self.args.num_train_epochs,
                    "evaluated": self.evaluator is not None,
                    "steps": self.state.global_step,
                }
            )
            return result

    monkeypatch.setattr(finetune_module, "SentenceTransformerTrainer", SpyTrainer)
    return runs


def test_refit_trains_every_training_query_for_the_epochs_validation_picked(tmp_path, small_dataset, small_nodes, spy_trainer):
    from llama_index_lancedb_tuning import EmbeddingFinetuner, FinetuneConfig

    config = FinetuneConfig(epochs=2, batch_size=8, refit=True, show_progress=False)
    result = EmbeddingFinetuner(config).fit(small_dataset, tmp_path / "model", small_nodes)

    fit_ds, val_ds = small_dataset.split(config.val_fraction, config.seed)
    selection, refit = spy_trainer
    assert selection["anchors"] == set(fit_ds.queries.values()) and selection["evaluated"]
    assert not selection["anchors"] & set(val_ds.queries.values())  # validation picks the epoch, unseen
    # The refit sees all 40 queries, validation included, for the epoch count the selection kept.
    assert refit["anchors"] == set(small_dataset.queries.values()) and not refit["evaluated"]
    best = result.metrics["best_epoch"]
    assert best in (1, 2) and refit["epochs"] == best
    assert refit["steps"] == best * -(-len(small_dataset) // config.batch_size)
    assert result.metrics["refit"] == {"epochs": best, "n_train_pairs": len(small_dataset)}
    saved = json.loads((tmp_path / "model" / "metrics.json").read_text())
    assert saved["n_train_pairs"] == len(fit_ds) and saved["n_val_queries"] == len(val_ds)
    assert saved["val_after"]["val_cosine_mrr@10"] >= saved["val_before"]["val_cosine_mrr@10"] - 1e-9  # best epoch kept


def test_the_default_recipe_trains_once_and_never_on_its_validation_queries(tmp_path, small_dataset, small_nodes, spy_trainer):
    from llama_index_lancedb_tuning import EmbeddingFinetuner, FinetuneConfig

    config = FinetuneConfig(batch_size=8, show_progress=False)
    result = EmbeddingFinetuner(config).fit(small_dataset, tmp_path / "model", small_nodes)

    fit_ds, _ = small_dataset.split(config.val_fraction, config.seed)
    assert len(spy_trainer) == 1 and spy_trainer[0]["epochs"] == 1
    assert spy_trainer[0]["anchors"] == set(fit_ds.queries.values())  # the validation fifth stays unseen
    assert "refit" not in result.metrics
    assert {"val_before", "val_after"} <= result.metrics.keys()  # the base model and the saved one, on unseen queries


def test_a_killed_refit_resumes_without_repeating_the_selection(tmp_path, small_dataset, small_nodes, spy_trainer):
    from llama_index_lancedb_tuning import EmbeddingFinetuner, FinetuneConfig

    config = FinetuneConfig(epochs=1, batch_size=8, refit=True, show_progress=False)
    out = tmp_path / "model"
    out.mkdir()
    (out / "selection.json").write_text(json.dumps({"best_epoch": 1, "val_before": {}, "val_after": {}}))
    result = EmbeddingFinetuner(config).fit(small_dataset, out, small_nodes, resume=True)
    assert len(spy_trainer) == 1 and spy_trainer[0]["anchors"] == set(small_dataset.queries.values())
    assert result.metrics["refit"]["epochs"] == 1 and (out / "model.safetensors").exists()


def test_no_refit_without_a_per_epoch_choice(tmp_path, small_dataset, small_nodes, spy_trainer):
    from llama_index_lancedb_tuning import EmbeddingFinetuner, FinetuneConfig

    config = FinetuneConfig(epochs=1, batch_size=8, eval_each_epoch=False, show_progress=False)
    result = EmbeddingFinetuner(config).fit(small_dataset, tmp_path / "model", small_nodes)
    assert len(spy_trainer) == 1 and "refit" not in result.metrics and "val_after" in result.metrics
    assert not (tmp_path / "model" / "selection.json").exists()


def test_given_passage_vectors_pick_the_same_positives(small_dataset, small_nodes, default_model_path):
    from sentence_transformers import SentenceTransformer

    from llama_index_lancedb_tuning.data.chunking import SOURCE_ID_KEY
    from llama_index_lancedb_tuning.training.losses import QueryOnlyLoss
    from llama_index_lancedb_tuning.training.training_pairs import source_nodes, training_pairs

    model = SentenceTransformer(default_model_path)
    by_source = source_nodes(small_dataset, small_nodes)
    loss = QueryOnlyLoss.for_corpus(model, by_source)
    assert loss.passages.shape == (len({(n.text, n.metadata[SOURCE_ID_KEY]) for n in small_nodes}), 384)
    reused = training_pairs(small_dataset, by_source, model, "best", loss.vectors_by_text())
    encoded = training_pairs(small_dataset, by_source, model, "best")
    assert reused["positive"] == encoded["positive"] and len(reused) == len(small_dataset)
    norms = np.linalg.norm(loss.passages.numpy(), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
