"""The whole loop: split, measure the baseline, fine-tune, index, measure again, report.

Each finished stage leaves its result in the output directory, so a killed run restarts
where it stopped; a directory holding a finished report is refused unless forced.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from llama_index.core.schema import BaseNode, TextNode

from ..common.jsonfile import read_json
from ..common.wording import counted
from ..config import ChunkingConfig, RerankerSpec, RunConfig
from ..data.chunking import chunk_corpus, model_tokenizer
from ..data.qa_dataset import QADataset
from ..encoding.embed_models import check_backend, load_embed_model
from ..encoding.model_ids import DEFAULT_MODEL, resolve_cross_encoder, resolve_model
from ..errors import TuningError
from ..evaluation.caveats import check_data_size, corpus_overlap_warnings, sample_size_warnings
from ..evaluation.metrics import EvalResult, with_significance
from ..evaluation.table_scores import score_model
from ..search.index import LanceDBIndex
from ..search.rerankers import node_reranker
from ..store.encoder_record import table_backend
from ..store.table import connect, open_table
from .gate import GateVerdict, gate_queries, unvalidated_verdict
from .recipe import TuningRecipe
from .run_directory import (
    cached_results,
    claim_tables,
    locked_output,
    prepare_output,
    run_settings,
    save_results,
    training_source,
    write_report,
)
from .source_table import SourceTable

if TYPE_CHECKING:
    import lancedb

logger = logging.getLogger(__name__)


def build_nodes(corpus: dict[str, str], model: str | None, config: ChunkingConfig) -> list[TextNode]:
    """`corpus` chunked as `config` says, in `model`'s tokens."""
    return chunk_corpus(
        corpus, model_tokenizer(resolve_model(model)), config.chunk_size, config.chunk_overlap, config.fix_glued_words
    )


def check_settings(dataset: QADataset, model: str | None, config: RunConfig, splits: bool = False) -> None:
    """Cheap checks of the data, model path and reranker, before anything is loaded or written.

    Args:
        dataset: the labeled queries to score.
        model: the model to score or tune (None: the bundled default).
        config: the run's settings.
        splits: whether a test set is carved from `dataset` with `config.test_size`.
    """
    check_data_size(dataset, config.k, config.test_size if splits else None)
    resolve_model(model)
    check_backend(config.backend)
    reranker = RerankerSpec.parse(config.reranker)
    if reranker.kind == "cross-encoder":
        resolve_cross_encoder(reranker.model)
    elif reranker.kind == "cohere":
        node_reranker(reranker, config.k, None)  # checks the key


def shared_query_count(train: QADataset, test: QADataset) -> int:
    """How many of `test`'s queries are also training queries (the same text, whitespace aside)."""
    seen = {" ".join(text.split()) for text in train.queries.values()}
    return sum(" ".join(text.split()) in seen for text in test.queries.values())


def _warn(messages: list[str]) -> list[str]:
    for message in messages:
        logger.warning(message)
    return messages


def training_data(
    dataset: QADataset,
    out: Path,
    config: RunConfig,
    documents: dict[str, str] | None,
    split: tuple[QADataset, QADataset] | None = None,
    eval_dataset: QADataset | None = None,
    corpus_nodes: list[BaseNode] | None = None,
) -> tuple[QADataset, QADataset, bool]:
    """(train, test, train_is_node_level) for the configured source of training pairs.

    `labeled`: a seeded split of `dataset` by query, or all of it when `eval_dataset` holds the
    test queries. `offline`/`llm`: pairs generated from `documents` (default: the dataset's own
    corpus), saved to `out/pairs.json` as they are made; none of the dataset's queries is trained
    on, so all are test queries, unless `eval_dataset` holds them. `corpus_nodes`: the nodes to
    generate pairs from instead of chunking the documents (an existing table's rows).
    """
    if config.pairs == "labeled":
        if documents is not None:
            raise TuningError("a documents directory has no labeled pairs; pass --pairs offline or --pairs llm")
        if eval_dataset is not None:
            return dataset, eval_dataset, False
        train, test = split or dataset.split(config.test_size, config.seed)
        return train, test, False
    from ..pairs.llm_pairs import generate_llm_pairs, llm_from_spec

    test = dataset if eval_dataset is None else eval_dataset
    pairs_path = out / "pairs.json"
    if pairs_path.exists():
        return QADataset.from_json(pairs_path), test, True
    nodes = corpus_nodes or build_nodes(documents or dataset.corpus, config.finetune.base_model, config)
    llm = llm_from_spec(config.llm or "offline") if config.pairs == "llm" else None
    train = saved_offline_pairs(pairs_path, nodes, config.seed) if llm is None else generate_llm_pairs(nodes, llm, pairs_path)
    return train, test, True


def saved_offline_pairs(path: Path, nodes: Sequence[BaseNode], seed: int) -> QADataset:
    """Offline pairs from `nodes`, saved to `path` once made; a resumed run reads them back."""
    from ..pairs.offline_pairs import generate_offline_pairs

    if path.exists():
        return QADataset.from_json(path)
    pairs = generate_offline_pairs(nodes, seed=seed)
    pairs.save_json(path)
    return pairs


def tune_and_evaluate(
    dataset: QADataset,
    out: str | Path,
    config: RunConfig | None = None,
    documents: dict[str, str] | None = None,
    dataset_path: str = "",
    force: bool = False,
    resume: bool = True,
    split: tuple[QADataset, QADataset] | None = None,
    eval_dataset: QADataset | None = None,
    eval_path: str = "",
    source_table: lancedb.table.Table | None = None,
    documents_path: str = "",
) -> dict:
    """Baseline vs tuned on held-out queries; writes report.md/json/png and model/ under `out`.

    Args:
        dataset: labeled queries; test queries come from it and are never trained on, unless
            `eval_dataset` holds them: then all of it trains (its validation queries carved as usual).
        out: the run directory; locked while the run lasts, resumed if a killed run left it.
        config: the run's settings (default: the recommended recipe); `config.pairs` says
            where training pairs come from (see `training_data`), `config.tune` whether both
            sides are tuned and the corpus re-embedded (`full`), or only the query encoder (`query`)
            or an adapter on the base model's query vectors (`adapter`), against the baseline table's
            stored vectors, or a cross-encoder learns to rerank the baseline table (`reranker`).
        documents: doc id -> text to tune on instead of the dataset's corpus.
        dataset_path: where `dataset` was read from, for the report.
        force: redo a directory that holds a finished report or another run's stages.
        resume: continue from the checkpoints a killed run left.
        split: (train, test) queries instead of the seeded split (cross-validation).
        eval_dataset: labeled queries to score on instead of a split of `dataset`, with their own
            corpus, which the baseline and tuned tables index; none may be a training query.
        eval_path: where `eval_dataset` was read from, for the report.
        source_table: an existing table whose rows are the corpus instead of the dataset's
            (relevance by document id); it is only read: the baseline is a copy of its rows in
            `out/lancedb`, and `full` writes the re-embedded copy there too.
        documents_path: where `documents` were read from, for the report.
    """
    config = config or RunConfig()
    out = Path(out)
    if source_table is not None and (documents is not None or eval_dataset is not None):
        raise TuningError("an existing table is the corpus; pass neither documents nor eval data with it")
    if eval_dataset is not None:
        if split is not None:
            raise TuningError("split and eval_dataset both name the test queries; pass one of them")
        shared = shared_query_count(dataset, eval_dataset) if config.pairs == "labeled" else 0
        if shared:
            raise TuningError(
                f"{shared} of {counted(len(eval_dataset), 'eval query')} also appear among the training queries; "
                "remove them from the training or the eval data"
            )
    if config.tune == "reranker" and (config.pairs != "labeled" or eval_dataset is not None or documents is not None):
        raise TuningError(
            "--tune reranker learns from labeled queries over the corpus it reranks; pass no --eval-data, documents or --pairs"
        )
    scored = dataset if eval_dataset is None else eval_dataset
    splits = config.pairs == "labeled" and split is None and eval_dataset is None
    check_settings(scored, config.finetune.base_model, config, splits=splits)
    source = None if source_table is None else SourceTable.read(source_table)
    if source is not None:
        source.check_labels(dataset)
    with locked_output(out):
        prepare_output(out, force, run_settings(dataset, config, documents, split, eval_dataset, source))
        uri = claim_tables(out, ["baseline", "tuned"])
        paths = (dataset_path, None if eval_dataset is None else eval_path, documents_path)
        return _tune_and_evaluate(dataset, eval_dataset, out, uri, config, documents, paths, resume, split, source)


def _baseline_index(uri: str, config: RunConfig) -> LanceDBIndex:
    """The baseline table a finished baseline stage left, with the base model in the runtime of its vectors."""
    table = open_table(connect(uri), "baseline")
    return LanceDBIndex(table, load_embed_model(config.finetune.base_model, backend=table_backend(table, config.backend)))


def _recipe(config: RunConfig) -> TuningRecipe:
    return TuningRecipe(config.tune, config.finetune, config)


def _gate_verdict(
    config: RunConfig,
    queries: QADataset | None,
    scored: tuple[list[EvalResult], list[EvalResult]],
    indexes: tuple[LanceDBIndex, LanceDBIndex | None] | None = None,
    tuned_reranker: RerankerSpec | None = None,
) -> GateVerdict:
    """The recipe's gate on the run's (baseline, tuned) `indexes`, the tuned one reranked by `tuned_reranker`
    when given; without the gate's queries, the `scored` (baseline, tuned) rows may refuse the model but not validate it."""
    if queries is None or indexes is None or indexes[1] is None:
        why = "--no-gate" if not config.gate else "the gate needs labeled training queries over the scored corpus"
        return unvalidated_verdict(why, *scored, config.k, config.gate_metric)
    return _recipe(config).gate(tuned_reranker).verdict(indexes[0], indexes[1], queries)


def _tune_and_evaluate(
    dataset: QADataset,
    eval_dataset: QADataset | None,
    out: Path,
    uri: str,
    config: RunConfig,
    documents: dict[str, str] | None,
    paths: tuple[str, str | None, str],
    resume: bool,
    split: tuple[QADataset, QADataset] | None,
    source: SourceTable | None,
) -> dict:
    t0 = time.perf_counter()
    corpus_nodes = None if source is None else source.nodes
    train, test, node_level = training_data(dataset, out, config, documents, split, eval_dataset, corpus_nodes)
    shared = shared_query_count(train, test)
    if shared:
        raise TuningError(f"{shared} test queries also appear among training queries; remove them from the training data")
    tuning = config.finetune
    recipe = _recipe(config)
    # The gate needs the tables to index the training queries' documents: labeled pairs over the scored corpus.
    gated = config.gate and not node_level and eval_dataset is None and documents is None
    fit, held_out = gate_queries(train, None, tuning) if gated else (train, None)
    n_val = math.ceil(tuning.val_fraction * len(fit)) if tuning.val_fraction > 0 else None
    # Eval data from another corpus is the point of eval data, not a mistake to warn about.
    mismatch = corpus_overlap_warnings(documents, dataset.corpus) if documents and eval_dataset is None else []
    warnings = _warn(sample_size_warnings(len(test), n_val) + mismatch)
    base = tuning.base_model
    scored_corpus = dataset.corpus if eval_dataset is None else eval_dataset.corpus
    nodes = build_nodes(scored_corpus, base, config) if source is None else source.nodes
    train_nodes = None  # generated pairs already point at passages
    if not node_level:  # labeled pairs point at whole training documents: the finetuner picks positives among their nodes
        train_nodes = nodes if eval_dataset is None else build_nodes(dataset.corpus, base, config)
    timings: dict[str, float] = {}

    baseline = cached_results(out / "baseline_results.json")
    if baseline is None:
        if source is None:
            baseline = score_model(base, "baseline", nodes, test, uri, "baseline", config, timings)
        else:
            t = time.perf_counter()
            copy = source.copy_to(uri, "baseline", load_embed_model(base, backend=table_backend(source.table, config.backend)))
            timings["index"] = round(time.perf_counter() - t, 2)
            baseline = recipe.scores(copy, "baseline", test, timings)
        save_results(out / "baseline_results.json", baseline)

    model_dir = out / "model"
    t = time.perf_counter()
    if read_json(model_dir / "metrics.json") is None:  # absent, or torn by a kill mid-write
        adapting = config.tune == "full" and config.adapt and eval_dataset is not None and not node_level
        adaptation = saved_offline_pairs(out / "adaptation_pairs.json", nodes, config.seed) if adapting else None
        # Positives of `query` and `adapter` tuning are the baseline table's own rows, so the frozen passages are its
        # stored vectors; generated pairs and another corpus's documents are not rows of it: the base model encodes them.
        serving = _baseline_index(uri, config) if config.tune != "full" and train_nodes is nodes else None
        recipe.fit(fit, model_dir, train_nodes, serving, resume=resume, adaptation=adaptation)
    timings["finetune"] = round(time.perf_counter() - t, 2)

    # The indexes load models, so only for what needs them: the query-tuned rows and the gate.
    baseline_index = _baseline_index(uri, config) if config.tune != "full" or held_out is not None else None
    tuned_index = None
    trained_reranker = recipe.trained_reranker(model_dir) if config.tune == "reranker" else None
    if config.tune == "full":
        tuned = score_model(str(model_dir), "tuned", nodes, test, uri, "tuned", config, timings, timing_key="reembed")
        if held_out is not None:
            tuned_table = open_table(connect(uri), "tuned")
            tuned_index = LanceDBIndex(tuned_table, recipe.encoder(model_dir, tuned_table))
    elif trained_reranker is not None:  # the baseline table as it is: only its reranked types change
        timings["reembed"] = 0.0
        assert baseline_index is not None
        tuned_index = baseline_index
        tuned = recipe.reranked_rows(baseline_index, baseline, test, trained_reranker, timings)
    else:  # the tuned query encoder (or the adapted base) searches the baseline table's vectors as they are
        timings["reembed"] = 0.0
        assert baseline_index is not None
        tuned_index = recipe.query_tuned(baseline_index, model_dir)
        tuned = recipe.scores(tuned_index, "tuned", test, timings)
    with_significance(baseline, tuned)
    indexes = None if baseline_index is None else (baseline_index, tuned_index)
    verdict = _gate_verdict(config, held_out, (baseline, tuned), indexes, trained_reranker)
    timings["total"] = round(time.perf_counter() - t0, 2)

    results = baseline + tuned
    finetune_metrics = json.loads((model_dir / "metrics.json").read_text())
    report = {
        "k": config.k,
        "base_model": base or DEFAULT_MODEL,
        "tuned_model": str(model_dir),
        "tune": config.tune,
        "promoted": verdict.promoted,
        "promotion": {"reason": verdict.reason, **verdict.figures()},
        "dataset": {
            "path": paths[0],
            "eval_path": paths[1],
            "table": None if source is None else {"uri": source.identity()["uri"], "name": source.table.name},
            "n_corpus": len(scored_corpus) if source is None else len(source.sources()),
            "n_nodes": len(nodes),
            "n_train_queries": len(train),
            "n_gate_queries": 0 if held_out is None else len(held_out),
            "n_test_queries": len(test),
            "pairs": config.pairs,
            **training_source(config.pairs, paths, documents, source),
            "n_adaptation_pairs": finetune_metrics.get("n_adaptation_pairs", 0),
        },
        "results": [r.to_dict() for r in results],
        "finetune_metrics": finetune_metrics,
        "timings_s": timings,
        "warnings": warnings,
    }
    report["table"] = write_report(out, report, results, config.k, config.metrics)
    return report


def evaluate_model(
    dataset: QADataset,
    model: str | None,
    out: str | Path,
    config: RunConfig | None = None,
    dataset_path: str = "",
    force: bool = False,
) -> dict:
    """Score one model on every query of a labeled dataset (no training: all queries are test queries).

    Args:
        dataset: labeled queries, all scored.
        model: HF id or local path (None: the bundled default).
        out: directory for report.md/json/png and the LanceDB table `model`; locked while it runs.
        config: search and chunking settings (default: the recommended recipe).
        dataset_path: where `dataset` was read from, for the report.
        force: redo a directory that holds a finished report.
    """
    config = config or RunConfig()
    out = Path(out)
    check_settings(dataset, model, config)
    with locked_output(out):
        prepare_output(out, force)
        uri = claim_tables(out, ["model"])
        t0 = time.perf_counter()
        warnings = _warn(sample_size_warnings(len(dataset), None))
        nodes = build_nodes(dataset.corpus, model, config)
        timings: dict[str, float] = {}
        results = score_model(model, "model", nodes, dataset, uri, "model", config, timings)
        report = {
            "k": config.k,
            "base_model": model or DEFAULT_MODEL,
            "tuned_model": None,
            "dataset": {
                "path": dataset_path,
                "eval_path": None,
                "n_corpus": len(dataset.corpus),
                "n_nodes": len(nodes),
                "n_train_queries": 0,
                "n_test_queries": len(dataset),
            },
            "results": [r.to_dict() for r in results],
            "timings_s": {**timings, "total": round(time.perf_counter() - t0, 2)},
            "warnings": warnings,
        }
        report["table"] = write_report(out, report, results, config.k, config.metrics)
        return report
