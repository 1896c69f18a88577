"""Fine-tuning the embedding model on (query, passage) pairs with sentence-transformers' Trainer."""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from datasets import Dataset
from llama_index.core.schema import TextNode
from sentence_transformers import (
    CrossEncoder,
    SentenceTransformer,
    SentenceTransformerTrainer,
    SentenceTransformerTrainingArguments,
)
from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator
from sentence_transformers.sentence_transformer.losses import (
    CachedMultipleNegativesRankingLoss,
    GISTEmbedLoss,
    MultipleNegativesRankingLoss,
)
from sentence_transformers.sentence_transformer.training_args import BatchSamplers
from sentence_transformers.util import mine_hard_negatives
from transformers import PrinterCallback

from ..common.jsonfile import read_json, write_json
from ..config import FinetuneConfig
from ..data.qa_dataset import QADataset
from ..encoding.model_ids import resolve_model, transformers_bars_off
from ..errors import TuningError
from .distributed import cpu_launch, is_main_process, local_device, wait_for_everyone, world_size
from .losses import QueryOnlyLoss
from .progress import TrainingBar
from .training_pairs import source_nodes, training_pairs, with_adaptation_pairs
from .validation_evaluator import ir_evaluator

logger = logging.getLogger(__name__)

_SELECTION_METRIC = "cosine_mrr@10"
# What only resuming needs; each checkpoint holds a model and its optimizer state (~270 MB for MiniLM).
_RESUME_STATE = ("checkpoints", "refit_checkpoints", "selection.json")


@dataclass
class FinetuneResult:
    model_path: Path
    metrics: dict = field(default_factory=dict)
    train_seconds: float = 0.0


class EmbeddingFinetuner:
    """Fine-tunes a sentence-transformers model with MNRL (or a variant) and the no-duplicates sampler.

    Validation queries are carved from the training queries (seeded) to pick the best
    epoch; test queries never reach this class.

    Args:
        config: how to fine-tune (base model, epochs, loss, validation); None: the defaults.
    """

    def __init__(self, config: FinetuneConfig | None = None) -> None:
        self.config = config or FinetuneConfig()

    def _loss(self, model: SentenceTransformer):
        cfg = self.config
        # Under torchrun each process sees only its own batch; gathered, every anchor is scored against
        # the whole global batch's passages, as in one process.
        gather = world_size() > 1
        if cfg.loss == "mnrl":
            return MultipleNegativesRankingLoss(model, gather_across_devices=gather)
        if cfg.loss == "cached_mnrl":
            return CachedMultipleNegativesRankingLoss(model, mini_batch_size=16, gather_across_devices=gather)
        # gist (FinetuneConfig admits no other name): the frozen base model is the guide; it masks
        # in-batch "negatives" it already scores above the positive, which on a small corpus are
        # often other chunks of the same document.
        guide = SentenceTransformer(resolve_model(cfg.base_model), device=str(model.device))
        return GISTEmbedLoss(model, guide=guide, gather_across_devices=gather)

    def _with_hard_negatives(self, pairs: Dataset, by_source: dict[str, list[TextNode]], model: SentenceTransformer) -> Dataset:
        corpus = sorted({n.text for ns in by_source.values() for n in ns})
        source_of = {n.text: s for s, ns in by_source.items() for n in ns}
        mined = mine_hard_negatives(
            pairs,
            model,
            corpus=corpus,
            num_negatives=self.config.hard_negatives,
            range_min=2,
            range_max=30,
            relative_margin=0.05,
            sampling_strategy="top",
            output_format="n-tuple",
            verbose=False,
        )
        # Another chunk of the positive's own document is not a negative: drop such rows' negatives.
        neg_columns = [c for c in mined.column_names if c.startswith("negative")]
        keep = [
            i for i, row in enumerate(mined) if all(source_of.get(row[c]) != source_of.get(row["positive"]) for c in neg_columns)
        ]
        return mined.select(keep) if len(keep) >= len(mined) // 2 else pairs

    def fit(
        self,
        train: QADataset,
        output_dir: str | Path,
        nodes: list[TextNode] | None = None,
        resume: bool = False,
        stored_vectors: Mapping[str, Sequence[float]] | None = None,
        adaptation: QADataset | None = None,
    ) -> FinetuneResult:
        """Fine-tune on `train` and save a sentence-transformers model plus `metrics.json` in `output_dir`.

        Args:
            train: the training queries, their relevant documents and the corpus; validation queries
                are carved from them.
            output_dir: where the model and `metrics.json` go; `metrics.json` is written last and marks
                the model finished. Checkpoints live there while training runs and are removed after.
            nodes: the chunks the corpus documents were split into (None: one node per document).
            resume: continue from the newest complete checkpoint a killed run left in `output_dir`.
            stored_vectors: node id -> the vector a table already holds for that node; with
                `freeze_passages`, the query encoder is trained against these instead of the base
                model's encoding of the node texts (every node needs one).
            adaptation: generated pairs (one passage per query) from the corpus the model will serve,
                when it is not `train`'s: as many as the fit pairs join them (never validated on).

        Raises:
            TuningError: training diverged (non-finite weights or embeddings), nothing is marked finished;
                under torchrun, batch_size does not split evenly over the processes; or adaptation pairs
                were given with `freeze_passages`.
        """
        if adaptation is not None and self.config.freeze_passages:
            raise TuningError("adaptation pairs need both sides tuned; their passages are not rows of a table")
        batch, processes = self.config.batch_size, world_size()
        if batch % processes:
            raise TuningError(
                f"batch_size {batch} does not split evenly over {processes} processes; "
                f"pick a multiple of {processes}, e.g. {batch - batch % processes or processes}"
            )
        with transformers_bars_off():
            return self._fit(train, Path(output_dir), nodes, resume, stored_vectors, adaptation)

    def _fit(
        self,
        train: QADataset,
        output_dir: Path,
        nodes: list[TextNode] | None,
        resume: bool,
        stored_vectors: Mapping[str, Sequence[float]] | None,
        adaptation: QADataset | None,
    ) -> FinetuneResult:
        cfg = self.config
        start = time.perf_counter()
        fit_ds, val_ds = train.split(cfg.val_fraction, cfg.seed) if cfg.val_fraction > 0 else (train, None)
        by_source = source_nodes(train, nodes)
        model = SentenceTransformer(resolve_model(cfg.base_model), device=local_device())
        loss = QueryOnlyLoss.for_corpus(model, by_source, stored_vectors) if cfg.freeze_passages else None
        # Positives are picked by the base model for every training query at once, so a refit
        # reuses them; with frozen passages the loss's vectors serve, encoded only once.
        all_pairs = training_pairs(train, by_source, model, cfg.positives, loss.vectors_by_text() if loss else None)
        if cfg.hard_negatives > 0 and not cfg.freeze_passages:
            all_pairs = self._with_hard_negatives(all_pairs, by_source, model)
        fit_queries = set(fit_ds.queries.values())
        pairs = (
            all_pairs.select([i for i, a in enumerate(all_pairs["anchor"]) if a in fit_queries])
            if val_ds is not None
            else all_pairs
        )
        if adaptation is not None:
            pairs, n_adaptation = with_adaptation_pairs(pairs, adaptation, cfg.seed)
        evaluator = ir_evaluator(val_ds, by_source, cfg.k, "val", cfg.seed) if val_ds is not None else None
        metrics: dict = {"config": asdict(cfg), "n_train_pairs": len(pairs), "n_val_queries": len(val_ds or [])}
        if adaptation is not None:
            metrics["n_adaptation_pairs"] = n_adaptation
        if loss is not None:
            pairs, evaluator = QueryOnlyLoss.label_pairs(pairs, by_source), None
        if evaluator is not None and cfg.eval_each_epoch:
            metrics["val_before"] = _rounded(evaluator(model))
        final_evaluator, evaluator = evaluator, evaluator if cfg.eval_each_epoch else None

        will_refit = cfg.refit and evaluator is not None
        # Kept for benchmarks/fusion_validation.py, which scores the selection checkpoint.
        keep_checkpoints = cfg.keep_checkpoints
        selection_path = output_dir / "selection.json"
        selection = read_json(selection_path) if resume and will_refit else None
        if selection is None:
            trainer = self._train(model, pairs, loss, evaluator, output_dir / "checkpoints", cfg.epochs, resume, "training")
            if evaluator is not None:  # the kept epoch's scores: no second pass over the corpus
                best = _best_evaluation(trainer)
                metrics["val_after"] = _rounded({k[len("eval_") :]: v for k, v in best.items() if k.startswith("eval_val_")})
                metrics["best_checkpoint"] = trainer.state.best_model_checkpoint
                metrics["best_epoch"] = max(1, round(best["epoch"]))
            elif final_evaluator is not None:
                metrics["val_after"] = _rounded(final_evaluator(model))
            if loss is not None and val_ds is not None:
                metrics["val_after"] = loss.validation_hits(val_ds, by_source, cfg.k)
            selection = {k: metrics[k] for k in ("val_before", "val_after", "best_checkpoint", "best_epoch") if k in metrics}
            if will_refit and is_main_process():
                write_json(selection_path, selection, indent=2)  # a killed refit resumes without training this stage again
        metrics.update(selection)

        if will_refit:
            wait_for_everyone()  # under torchrun, other ranks may still be loading the best checkpoint
            if not keep_checkpoints and is_main_process():  # selection.json holds all the refit needs from them
                _remove(output_dir, "checkpoints")
            # Validation queries are trained on from here: the val_* figures above describe the
            # selection model, not the refit one.
            model = SentenceTransformer(resolve_model(cfg.base_model), device=local_device())
            self._train(model, all_pairs, None, None, output_dir / "refit_checkpoints", selection["best_epoch"], resume, "refit")
            metrics["refit"] = {"epochs": selection["best_epoch"], "n_train_pairs": len(all_pairs)}
        self._check_finite(model, output_dir)
        metrics["train_seconds"] = round(time.perf_counter() - start, 2)
        # Under torchrun every rank holds the same weights: one writes, and none returns before the model is there.
        wait_for_everyone()
        if is_main_process():
            save_model(model, output_dir)
            write_json(output_dir / "metrics.json", metrics, indent=2)  # its presence marks training finished: never half-written
            if not keep_checkpoints:
                _remove(output_dir, *_RESUME_STATE)
        wait_for_everyone()
        return FinetuneResult(output_dir, metrics, metrics["train_seconds"])

    def _check_finite(self, model: SentenceTransformer, output_dir: Path) -> None:
        """Refuse a diverged model before it is saved as finished: LanceDB would reject its NaN vectors at every run."""
        weights_finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
        probe = model.encode(["a probe sentence to check the embeddings"], convert_to_numpy=True)
        if weights_finite and np.isfinite(probe).all():
            return
        # Resuming would only continue from the diverged weights.
        if is_main_process():
            _remove(output_dir, *_RESUME_STATE)
        part = "embeddings" if weights_finite else "weights"
        raise TuningError(
            f"training diverged: the tuned model's {part} are not finite (NaN or inf) at learning rate "
            f"{self.config.learning_rate:g}; lower the learning rate (--lr, e.g. 1e-4) and run again"
        )

    def _train(
        self,
        model: SentenceTransformer,
        pairs: Dataset,
        loss: torch.nn.Module | None,
        evaluator: InformationRetrievalEvaluator | None,
        checkpoint_dir: Path,
        epochs: int,
        resume: bool,
        label: str,
    ) -> SentenceTransformerTrainer:
        cfg = self.config
        processes = world_size()
        args = SentenceTransformerTrainingArguments(
            output_dir=str(checkpoint_dir),
            num_train_epochs=epochs,
            per_device_train_batch_size=cfg.batch_size,
            per_device_eval_batch_size=cfg.batch_size,
            # batch_size is the global batch: under torchrun the no-duplicates sampler forms each batch of
            # batch_size pairs once and every process takes its share, so no pair's duplicate sits on
            # another rank as a gathered negative and the steps are one process's steps.
            accelerator_config={"split_batches": processes > 1},
            learning_rate=cfg.learning_rate,
            batch_sampler=BatchSamplers.NO_DUPLICATES,
            seed=cfg.seed,
            data_seed=cfg.seed,
            eval_strategy="epoch" if evaluator else "no",
            save_strategy="epoch",
            # Resuming needs the newest checkpoint only; with load_best_model_at_end the trainer also keeps the best.
            save_total_limit=1,
            load_best_model_at_end=evaluator is not None,
            metric_for_best_model=f"eval_val_{_SELECTION_METRIC}" if evaluator else None,
            greater_is_better=True,
            logging_steps=10,
            report_to="none",
            dataloader_pin_memory=model.device.type == "cuda",
            use_cpu=cpu_launch(),
            disable_tqdm=True,  # the trainer's bar is unlabeled; _TrainingBar replaces it
        )
        # The model card's hub widget is otherwise sampled from the training set behind a progress bar.
        model.model_card_data.widget = model.model_card_data.widget or [{"text": pairs["anchor"][0]}]
        trainer = SentenceTransformerTrainer(
            model=model,
            args=args,
            train_dataset=pairs,
            loss=loss or self._loss(model),
            evaluator=evaluator,
        )
        trainer.remove_callback(PrinterCallback)  # it prints every metric dict on stdout
        if cfg.show_progress and is_main_process():
            trainer.add_callback(TrainingBar(label))
        args.warmup_steps = warmup_steps(len(trainer.get_train_dataloader()) * epochs, cfg.warmup_ratio)
        trainer.train(resume_from_checkpoint=newest_complete_checkpoint(checkpoint_dir) if resume else None)
        return trainer


def warmup_steps(total_steps: int, ratio: float) -> int:
    """Linear warmup steps for `ratio` of `total_steps`, or none when that would be a single step.

    Warmup starts at rate 0, so a one-step warmup only wastes a step: on a one-step epoch it
    was the whole training, and the model came out unchanged.
    """
    steps = math.ceil(total_steps * ratio)
    return steps if 1 < steps < total_steps else 0


def newest_complete_checkpoint(checkpoint_dir: Path) -> str | None:
    """The newest checkpoint the trainer finished writing, or None; newer torn ones are removed.

    The trainer writes `trainer_state.json` last, so a checkpoint without a readable one was
    cut off mid-write (Ctrl-C during a save) and cannot be resumed from.
    """
    by_step = {int(p.name.split("-")[1]): p for p in checkpoint_dir.glob("checkpoint-*") if p.name.split("-")[1].isdigit()}
    for step in sorted(by_step, reverse=True):
        if read_json(by_step[step] / "trainer_state.json") is not None:
            return str(by_step[step])
        shutil.rmtree(by_step[step], ignore_errors=True)
    return None


def save_model(model: SentenceTransformer | CrossEncoder, output_dir: Path) -> None:
    """Save a sentence-transformers model or cross-encoder whose files all get the permissions the umask gives (0644 usually).

    safetensors writes its files through a private temporary file that it renames, so the weights
    came out 0600, unreadable to the group and the serving account that every other file allows.

    Args:
        model: the model.
        output_dir: its folder (created if needed).
    """
    model.save(str(output_dir))
    mode = _new_file_mode(output_dir)
    for weights in output_dir.rglob("*.safetensors"):
        weights.chmod(mode)


def _new_file_mode(folder: Path) -> int:
    """The permissions a file created in `folder` gets: the umask cannot be read without being changed."""
    probe = folder / ".permissions-probe"
    probe.touch()
    try:
        return probe.stat().st_mode & 0o777
    finally:
        probe.unlink()


def _remove(output_dir: Path, *names: str) -> None:
    for name in names:
        path = output_dir / name
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def _best_evaluation(trainer: SentenceTransformerTrainer) -> dict:
    """The logged validation scores of the epoch the trainer kept (its best checkpoint)."""
    key = f"eval_val_{_SELECTION_METRIC}"
    scored = [entry for entry in trainer.state.log_history if key in entry]
    return max(scored, key=lambda entry: entry[key])  # max keeps the first of equals, as the trainer does


def _rounded(scores: dict) -> dict:
    return {k: round(float(v), 4) for k, v in scores.items() if isinstance(v, (int, float, np.floating))}
