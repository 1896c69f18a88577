"""Training a cross-encoder reranker, as LlamaIndex's deprecated `CrossEncoderFinetuneEngine` did, on
sentence-transformers' `CrossEncoderTrainer`: each training query's passage against hard negatives
mined from the candidates the serving table gives it.

The negatives come from the table's own search (the caller's `candidates`), not from
sentence-transformers' `mine_hard_negatives`: that helper re-encodes the corpus with a
`SentenceTransformer`, so it cannot search the vectors a table holds (made in ONNX, by an app's
LlamaIndex embedding, or frozen under a tuned query encoder), and it excludes only the positive's own
text, where any node of a relevant document is a hit. The candidates are the very lists the reranker
will reorder when it serves, so it learns to order what it will be shown.
"""

from __future__ import annotations

import logging
import math
import random
import shutil
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from datasets import Dataset
from llama_index.core.schema import BaseNode, MetadataMode
from sentence_transformers import CrossEncoder
from sentence_transformers.cross_encoder import CrossEncoderTrainer, CrossEncoderTrainingArguments
from sentence_transformers.cross_encoder.evaluation import CrossEncoderRerankingEvaluator
from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss
from transformers import PrinterCallback
from transformers.utils import logging as transformers_logging

from ..common.jsonfile import write_json
from ..common.wording import counted
from ..config import FinetuneConfig
from ..data.chunking import SOURCE_ID_KEY
from ..data.qa_dataset import QADataset
from ..encoding.model_ids import ENCODE_BATCH, resolve_model, transformers_bars_off
from ..errors import TuningError
from .finetuner import FinetuneResult, newest_complete_checkpoint, save_model, warmup_steps
from .progress import TrainingBar

# FinetuneConfig's fields a cross-encoder's training reads, the ones its metrics.json records.
_SETTINGS = (
    "reranker_model",
    "reranker_negatives",
    "reranker_max_length",
    "epochs",
    "batch_size",
    "learning_rate",
    "warmup_ratio",
    "val_fraction",
    "seed",
    "k",
    "eval_each_epoch",
)
# The ranked candidates the serving table gives each query, and the table's query vectors.
CandidateSearch = Callable[[Sequence[str]], list[list[BaseNode]]]
QueryVectors = Callable[[Sequence[str]], np.ndarray]


def node_source(node: BaseNode) -> str:
    """The document a node came from, as relevance is judged: its `source_id` metadata, else its `ref_doc_id`."""
    return node.metadata.get(SOURCE_ID_KEY) or node.ref_doc_id or node.node_id


def passage(node: BaseNode) -> str:
    """A node's text as LlamaIndex's `SentenceTransformerRerank` shows it to the model when serving."""
    return node.get_content(metadata_mode=MetadataMode.EMBED)


@dataclass(frozen=True)
class RerankerExample:
    """One training query: the node its relevant documents offer first, and hard negatives from none of them."""

    query: str
    positive: BaseNode
    negatives: list[BaseNode]


def mine_examples(
    train: QADataset,
    nodes: Sequence[BaseNode],
    candidates: CandidateSearch,
    query_vectors: QueryVectors,
    negatives: int,
    seed: int,
) -> list[RerankerExample]:
    """Per query of `train`: a positive and up to `negatives` hard negatives.

    The positive is the node of a relevant document the table offers first: the first among the
    query's candidates, else (none was found) the one whose stored vector the query vector is
    closest to. The negatives are a seeded draw from the query's candidates that belong to no
    relevant document: drawn across the list rather than its top, which is where passages that
    answer the query without being labeled gather (neighbouring chunks of one source, a second
    context asked about the same thing).

    Args:
        train: labeled queries over the documents of `nodes`.
        nodes: every row of the serving table, with its stored vector.
        candidates: the table's ranked candidates for a list of query texts.
        query_vectors: the table's query encoder, for a list of query texts.
        negatives: negatives per query.
        seed: seeds the draw.
    """
    by_source: dict[str, list[BaseNode]] = {}
    for node in nodes:
        by_source.setdefault(node_source(node), []).append(node)
    missing = [q for q in train.query_ids if not any(d in by_source for d in train.relevant_docs[q])]
    if missing:
        raise TuningError(
            f"{counted(len(missing), 'training query')} point at no document of the table; "
            "their corpus ids must be the table's document ids"
        )
    texts = [train.queries[q] for q in train.query_ids]
    lists = candidates(texts)
    relevant = [set(train.relevant_docs[q]) for q in train.query_ids]
    unfound = [i for i, found in enumerate(lists) if not any(node_source(n) in relevant[i] for n in found)]
    vectors = dict(zip(unfound, query_vectors([texts[i] for i in unfound]))) if unfound else {}
    rng = random.Random(seed)
    examples = []
    for i, (text, found) in enumerate(zip(texts, lists)):
        ranked = [n for n in found if node_source(n) in relevant[i]]
        own = [n for d in relevant[i] for n in by_source.get(d, [])]
        positive = ranked[0] if ranked else max(own, key=lambda n: _similarity(n, vectors[i]))
        pool = [n for n in found if node_source(n) not in relevant[i]]
        examples.append(RerankerExample(text, positive, rng.sample(pool, min(negatives, len(pool)))))
    return examples


def _similarity(node: BaseNode, query_vector: np.ndarray) -> float:
    """The stored vector's dot product with the query's (a row stored without one ranks last)."""
    return -math.inf if node.embedding is None else float(np.asarray(node.embedding, dtype=np.float32) @ query_vector)


def validation_samples(queries: QADataset, nodes: Sequence[BaseNode], candidates: CandidateSearch) -> list[dict[str, Any]]:
    """sentence-transformers' reranking samples: each query's candidates in the table's order, any node of
    a relevant document a positive (the hit the evaluation counts), whether or not it was found."""
    texts = [queries.queries[q] for q in queries.query_ids]
    samples = []
    for qid, text, found in zip(queries.query_ids, texts, candidates(texts)):
        relevant = set(queries.relevant_docs[qid])
        positives = list(dict.fromkeys(passage(n) for n in nodes if node_source(n) in relevant))
        samples.append({"query": text, "positive": positives, "documents": [passage(n) for n in found]})
    return samples


@contextmanager
def _quiet_loading() -> Iterator[None]:
    """No "Converting SentenceTransformer model" notice, load report or bar: a new scoring head on an
    embedding model is the point here, not a warning."""
    st_logger = logging.getLogger("sentence_transformers")
    level, verbosity = st_logger.level, transformers_logging.get_verbosity()
    st_logger.setLevel(logging.ERROR)
    transformers_logging.set_verbosity_error()
    try:
        with transformers_bars_off():
            yield
    finally:
        st_logger.setLevel(level)
        transformers_logging.set_verbosity(verbosity)


def load_base(model: str | None, max_length: int) -> CrossEncoder:
    """The cross-encoder to tune: a cross-encoder's own head, or a new one-logit head on an embedding
    model's transformer (the bundled MiniLM when `model` is None); nothing is downloaded for the default."""
    with _quiet_loading():
        return CrossEncoder(resolve_model(model), num_labels=1, max_length=max_length)


class CrossEncoderFinetuner:
    """Fine-tunes a cross-encoder with binary cross-entropy on (query, passage, 0/1) pairs.

    Pointwise BCE, the positives weighted up by the negatives' count, as sentence-transformers
    trains its MS MARCO cross-encoders. A listwise loss (ListNet, LambdaLoss) would score the same
    1 + negatives passages per query at the same cost, with a list of a handful of passages to
    exploit; BCE keeps each pair a row of its own, so the trainer's shuffling, checkpoints and
    resume work as they do for the embedding model. Validation queries are carved from the
    training queries (seeded) and reranked as the table gives them; test queries never reach this class.

    Args:
        config: how to train: its `reranker_*` fields and epochs, batch_size, learning_rate, warmup_ratio,
            val_fraction, seed, k, show_progress, eval_each_epoch and keep_checkpoints; None: the defaults.
    """

    def __init__(self, config: FinetuneConfig | None = None) -> None:
        self.config = config or FinetuneConfig()

    def fit(
        self,
        train: QADataset,
        output_dir: str | Path,
        nodes: Sequence[BaseNode],
        candidates: CandidateSearch,
        query_vectors: QueryVectors,
        resume: bool = False,
    ) -> FinetuneResult:
        """Train on `train` and save a `CrossEncoder` plus `metrics.json` (written last: it marks the model finished).

        Args:
            train: labeled queries over the table's documents; validation queries are carved from them.
            output_dir: where the model, `metrics.json` and, while training runs, its checkpoints go.
            nodes: every row of the serving table, with its stored vector.
            candidates: the table's ranked candidates for query texts (those of the query type it will rerank).
            query_vectors: the table's query encoder.
            resume: continue from the newest complete checkpoint a killed run left in `output_dir`.

        Raises:
            TuningError: a query points at no document of the table, no query has a negative, or
                training diverged (nothing is marked finished).
        """
        cfg, out, start = self.config, Path(output_dir), time.perf_counter()
        fit_ds, val_ds = train.split(cfg.val_fraction, cfg.seed) if cfg.val_fraction > 0 else (train, None)
        examples = mine_examples(fit_ds, nodes, candidates, query_vectors, cfg.reranker_negatives, cfg.seed)
        pairs = _labeled_pairs(examples)
        evaluator = None
        if val_ds is not None:
            samples = validation_samples(val_ds, nodes, candidates)
            evaluator = CrossEncoderRerankingEvaluator(
                samples, at_k=cfg.k, always_rerank_positives=False, name="val", batch_size=ENCODE_BATCH, write_csv=False
            )
        metrics: dict[str, Any] = {
            "config": {name: value for name, value in asdict(cfg).items() if name in _SETTINGS},
            "n_train_queries": len(fit_ds),
            "n_train_pairs": len(pairs),
            "n_negatives": len(pairs) - len(examples),
            "n_val_queries": len(val_ds or []),
        }
        model = load_base(cfg.reranker_model, cfg.reranker_max_length)
        with transformers_bars_off():
            trainer = self._train(model, pairs, evaluator if cfg.eval_each_epoch else None, out / "checkpoints", resume)
            if evaluator is not None and cfg.eval_each_epoch:  # the kept epoch's scores: no second pass
                best = _best_evaluation(trainer, cfg.k)
                metrics["val_after"], metrics["best_epoch"] = _val_scores(best), max(1, round(best["epoch"]))
            elif evaluator is not None:
                metrics["val_after"] = _val_scores(evaluator(model))
            _check_finite(model, out)
            metrics["train_seconds"] = round(time.perf_counter() - start, 2)
            save_model(model, out)
        write_json(out / "metrics.json", metrics, indent=2)
        if not cfg.keep_checkpoints:
            shutil.rmtree(out / "checkpoints", ignore_errors=True)
        return FinetuneResult(out, metrics, metrics["train_seconds"])

    def _train(
        self,
        model: CrossEncoder,
        pairs: Dataset,
        evaluator: CrossEncoderRerankingEvaluator | None,
        checkpoint_dir: Path,
        resume: bool,
    ) -> CrossEncoderTrainer:
        cfg = self.config
        args = CrossEncoderTrainingArguments(
            output_dir=str(checkpoint_dir),
            num_train_epochs=cfg.epochs,
            per_device_train_batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate,
            seed=cfg.seed,
            data_seed=cfg.seed,
            eval_strategy="epoch" if evaluator else "no",
            save_strategy="epoch",
            save_total_limit=1,  # resuming needs the newest; the trainer also keeps the best
            load_best_model_at_end=evaluator is not None,
            metric_for_best_model=f"eval_val_mrr@{cfg.k}" if evaluator else None,
            greater_is_better=True,
            logging_steps=10,
            report_to="none",
            dataloader_pin_memory=torch.cuda.is_available(),
            disable_tqdm=True,  # the trainer's bar is unlabeled; TrainingBar replaces it
        )
        # The positives are a 1 in 1 + negatives of the rows: weighted up, they count as much as the negatives.
        weight = torch.tensor(max(1.0, (len(pairs) - sum(pairs["label"])) / max(1.0, sum(pairs["label"]))))
        trainer = CrossEncoderTrainer(
            model=model,
            args=args,
            train_dataset=pairs,
            loss=BinaryCrossEntropyLoss(model, pos_weight=weight),
            evaluator=evaluator,
        )
        trainer.remove_callback(PrinterCallback)  # it prints every metric dict on stdout
        if cfg.show_progress:
            trainer.add_callback(TrainingBar("reranker training"))
        args.warmup_steps = warmup_steps(len(trainer.get_train_dataloader()) * cfg.epochs, cfg.warmup_ratio)
        trainer.train(resume_from_checkpoint=newest_complete_checkpoint(checkpoint_dir) if resume else None)
        return trainer


def _labeled_pairs(examples: list[RerankerExample]) -> Dataset:
    """(query, passage, label) rows: 1 for each positive, 0 for each of its negatives."""
    if not any(e.negatives for e in examples):
        raise TuningError(
            "no training query has a candidate outside its relevant documents to learn against; "
            "index more documents than the queries are about, or raise overfetch"
        )
    rows: dict[str, list[Any]] = {"query": [], "passage": [], "label": []}
    for example in examples:
        for node, label in [(example.positive, 1.0), *((n, 0.0) for n in example.negatives)]:
            rows["query"].append(example.query)
            rows["passage"].append(passage(node))
            rows["label"].append(label)
    return Dataset.from_dict(rows)


def _best_evaluation(trainer: CrossEncoderTrainer, k: int) -> dict[str, float]:
    """The logged validation scores of the epoch the trainer kept (its best checkpoint)."""
    key = f"eval_val_mrr@{k}"
    scored = [entry for entry in trainer.state.log_history if key in entry]
    return max(scored, key=lambda entry: entry[key])  # max keeps the first of equals, as the trainer does


def _val_scores(scores: dict[str, float]) -> dict[str, float]:
    """The evaluator's figures as it names them, the trainer's `eval_` prefix dropped: `val_mrr@5` reranked,
    `val_base_mrr@5` in the table's order."""
    named = {k.removeprefix("eval_"): v for k, v in scores.items()}
    return {k: round(float(v), 4) for k, v in named.items() if k.startswith("val_")}


def _check_finite(model: CrossEncoder, output_dir: Path) -> None:
    """Refuse a diverged model before it is saved as finished: it would score every candidate NaN."""
    if all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        probe = model.predict([("a probe query", "a probe passage")], show_progress_bar=False)
        if np.isfinite(probe).all():
            return
    shutil.rmtree(output_dir / "checkpoints", ignore_errors=True)  # resuming would only continue from the diverged weights
    raise TuningError("reranker training diverged: its weights or scores are not finite; lower learning_rate and run again")
