"""The whole loop: split, measure the baseline, fine-tune, index, measure again, report.

Each finished stage leaves its result in the output directory, so a killed run restarts
where it stopped; a directory holding a finished report is refused unless forced.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from llama_index.core.schema import TextNode

from .chunking import chunk_corpus, model_tokenizer
from .dataset import QADataset
from .errors import TuningError
from .evaluate import evaluate_retrievers
from .metrics import EvalResult, with_significance
from .report import comparison_plot, comparison_table
from .finetune import EmbeddingFinetuner, FinetuneConfig
from .encoding import check_backend, load_embed_model
from .index import HYBRID_OVERFETCH, RERANK_OVERFETCH, LanceDBIndex
from .jsonfile import read_json, write_json
from .models import DEFAULT_MODEL, resolve_model
from .rerank import DEFAULT_RRF_K, hybrid_reranker, node_reranker, reranker_name

logger = logging.getLogger(__name__)


@dataclass
class RunConfig:
    """Everything a run needs besides its data; defaults are the package's recommended recipe."""

    k: int = 5
    test_size: float = 0.2
    seed: int = 42
    chunk_size: int = 128
    chunk_overlap: int = 16
    fix_glued_words: bool = True  # re-space words PDF extraction ran together (data.split_glued_words)
    reranker: str = "fusion"
    hybrid: str = "rrf"
    rrf_k: int = DEFAULT_RRF_K
    overfetch: int = RERANK_OVERFETCH  # reranked types rerank overfetch × k candidates
    hybrid_overfetch: int = HYBRID_OVERFETCH  # hybrid fuses hybrid_overfetch × k rows of each leg
    pairs: str = "labeled"
    llm: str | None = None
    backend: str = "torch"  # encoder runtime for indexing and queries: torch, onnx or onnx-int8
    finetune: FinetuneConfig | None = None  # None: recommended_finetune(pairs)

    def __post_init__(self) -> None:
        if self.finetune is None:
            self.finetune = recommended_finetune(self.pairs)


def recommended_finetune(pairs: str) -> FinetuneConfig:
    """Fine-tuning defaults per source of pairs. Generated pseudo-queries are noisy: a gentler
    rate and fewer epochs (3e-5, 2) keep the model from memorising their noise, where labeled
    queries take 1e-4 for 4 epochs with the best epoch kept (figures in BENCHMARKS.md).
    """
    if pairs == "labeled":
        return FinetuneConfig()
    return FinetuneConfig(epochs=2, learning_rate=3e-5)


def build_nodes(corpus: dict[str, str], model: str | None, config: RunConfig) -> list[TextNode]:
    """`corpus` chunked as `config` says, in `model`'s tokens."""
    return chunk_corpus(corpus, model_tokenizer(resolve_model(model)), config.chunk_size, config.chunk_overlap, config.fix_glued_words)


def score_model(
    model: str | None,
    label: str,
    nodes: list[TextNode],
    test: QADataset,
    uri: str,
    table_name: str,
    config: RunConfig,
    timings: dict[str, float],
) -> list[EvalResult]:
    """Index `nodes` with `model` into a fresh table and score the five query types on `test`.

    Adds the seconds spent to `timings["index"]` and `timings["evaluate"]`.
    """
    t = time.perf_counter()
    index = LanceDBIndex.build(nodes, load_embed_model(model, backend=config.backend), uri=uri, table_name=table_name, mode="overwrite")
    timings["index"] = round(timings.get("index", 0.0) + time.perf_counter() - t, 2)
    t = time.perf_counter()
    reranker = node_reranker(config.reranker, config.k, index.embed_model, index.table)
    retrievers = index.retrievers(config.k, reranker, hybrid_reranker(config.hybrid, config.rrf_k), config.overfetch, config.hybrid_overfetch)
    names = {qt: (reranker_name(reranker) if qt.startswith("reranked_") else f"lancedb.{config.hybrid}" if qt == "hybrid" else None) for qt in retrievers}
    results = evaluate_retrievers(retrievers, test, config.k, label, names)
    timings["evaluate"] = round(timings.get("evaluate", 0.0) + time.perf_counter() - t, 2)
    return results


def _cached_results(path: Path) -> list[EvalResult] | None:
    if not path.exists():
        return None
    rows = json.loads(path.read_text())
    return [EvalResult(**{**r, "ci95": tuple(r["ci95"])}) for r in rows]


def _save_results(path: Path, results: list[EvalResult]) -> None:
    write_json(path, [{**r.to_dict(), "per_query": r.per_query} for r in results])


def prepare_output(out: Path, force: bool, settings: dict | None = None) -> None:
    """Refuse a finished report (unless forced); resume an unfinished run only if made with the same `settings`."""
    if out.exists() and not out.is_dir():
        raise TuningError(f"--out {out} is a file; pass a directory for the report")
    if (out / "report.json").exists():
        if not force:
            raise TuningError(f"{out} already holds a finished report; pass --force to redo it or choose another --out")
        shutil.rmtree(out)
    settings_path = out / "settings.json"
    if settings is not None and settings_path.exists() and json.loads(settings_path.read_text()) != settings:
        if not force and any(p.name != settings_path.name for p in out.iterdir()):
            raise TuningError(
                f"{out} holds an unfinished run made with other data or settings; rerun that command to resume it, "
                "pass --force to start over, or choose another --out"
            )
        shutil.rmtree(out)  # nothing cached yet, or forced: start over
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TuningError(f"cannot create output directory {out} ({exc.strerror}); choose another --out") from None
    if settings is not None and not settings_path.exists():
        write_json(settings_path, settings, indent=2)  # cached stages below are only reused for these settings


def run_settings(
    dataset: QADataset, config: RunConfig, documents: dict[str, str] | None, split: tuple[QADataset, QADataset] | None = None
) -> dict:
    """What a resumed run must share with the killed one: a digest of the data and the config."""
    cfg = asdict(config)
    cfg["finetune"].pop("show_progress", None)
    folds = [part.query_ids for part in split] if split else None
    data = json.dumps([dataset.to_dict(), documents, folds], sort_keys=True, ensure_ascii=False)
    return json.loads(json.dumps({"data_sha1": hashlib.sha1(data.encode("utf-8")).hexdigest(), "config": cfg}, default=str))


def check_settings(dataset: QADataset, model: str | None, config: RunConfig) -> None:
    """Cheap checks of the data, model path and reranker, before anything is loaded or written."""
    if config.k > len(dataset.corpus):
        raise TuningError(
            f"k={config.k} is larger than the corpus ({len(dataset.corpus)} documents), so hit rate@k would count "
            f"nearly every query as found; pass --k {len(dataset.corpus)} or less"
        )
    resolve_model(model)
    check_backend(config.backend)
    if isinstance(config.reranker, str) and config.reranker:
        name, _, arg = config.reranker.partition(":")
        if name == "cross-encoder" and arg:
            resolve_model(arg)
        elif name != "fusion":
            node_reranker(config.reranker, config.k, None)  # cohere: checks the key; unknown: names the choices


def write_report(out: Path, report: dict, results: list[EvalResult], k: int) -> str:
    table = comparison_table(results, k)
    comparison_plot(results, out / "report.png", k)
    (out / "report.md").write_text(
        f"# Retrieval before and after fine-tuning\n\nbase model: `{report['base_model']}` · tuned model: "
        f"`{report['tuned_model']}` · {report['dataset']['n_test_queries']} held-out queries · k={k}\n\n{table}\n"
    )
    # report.json last: its presence marks the run finished.
    write_json(out / "report.json", report, indent=2)
    return table


def training_data(
    dataset: QADataset,
    out: Path,
    config: RunConfig,
    documents: dict[str, str] | None,
    split: tuple[QADataset, QADataset] | None = None,
) -> tuple[QADataset, QADataset, bool]:
    """(train, test, train_is_node_level) for the configured source of training pairs.

    `labeled`: a seeded split of `dataset` by query. `offline`/`llm`: pairs generated from
    `documents` (default: the dataset's own corpus), saved to `out/pairs.json` as they are
    made; none of the dataset's queries is trained on, so all are test queries.
    """
    if config.pairs == "labeled":
        if documents is not None:
            raise TuningError("a documents directory has no labeled pairs; pass --pairs offline or --pairs llm")
        train, test = split or dataset.split(config.test_size, config.seed)
        return train, test, False
    if config.pairs not in ("offline", "llm"):
        raise TuningError(f"unknown --pairs '{config.pairs}'; use labeled, offline or llm")
    from .llm_pairs import generate_llm_pairs, llm_from_spec
    from .offline_pairs import generate_offline_pairs

    pairs_path = out / "pairs.json"
    if pairs_path.exists():
        return QADataset.from_json(pairs_path), dataset, True
    nodes = build_nodes(documents or dataset.corpus, config.finetune.base_model, config)
    llm = llm_from_spec(config.llm or "offline") if config.pairs == "llm" else None
    if config.pairs == "llm" and llm is None:
        raise TuningError("--pairs llm needs --llm openai:MODEL or ollama:MODEL")
    if llm is None:
        train = generate_offline_pairs(nodes, seed=config.seed)
        train.save_json(pairs_path)
    else:
        train = generate_llm_pairs(nodes, llm, pairs_path)
    return train, dataset, True


def tune_and_evaluate(
    dataset: QADataset,
    out: str | Path,
    config: RunConfig | None = None,
    documents: dict[str, str] | None = None,
    dataset_path: str = "",
    force: bool = False,
    resume: bool = True,
    split: tuple[QADataset, QADataset] | None = None,
) -> dict:
    """Baseline vs tuned on held-out queries; writes report.md/json/png and model/ under `out`.

    Training pairs come from `config.pairs` (see `training_data`); test queries are never
    trained on. `documents` (doc id -> text) tunes on another corpus than the dataset's;
    `split` gives the (train, test) queries instead of the seeded split (cross-validation).
    """
    config = config or RunConfig()
    out = Path(out)
    check_settings(dataset, config.finetune.base_model, config)
    prepare_output(out, force, run_settings(dataset, config, documents, split))
    t0 = time.perf_counter()
    train, test, node_level = training_data(dataset, out, config, documents, split)
    overlap = set(train.queries.values()) & set(test.queries.values())
    if overlap:
        raise TuningError(f"{len(overlap)} test queries also appear among training queries; remove them from the training data")
    base = config.finetune.base_model
    nodes = build_nodes(dataset.corpus, base, config)
    uri = str(out / "lancedb")
    timings: dict[str, float] = {}

    baseline = _cached_results(out / "baseline_results.json")
    if baseline is None:
        baseline = score_model(base, "baseline", nodes, test, uri, "baseline", config, timings)
        _save_results(out / "baseline_results.json", baseline)

    model_dir = out / "model"
    t = time.perf_counter()
    if read_json(model_dir / "metrics.json") is None:  # absent, or torn by a kill mid-write
        # Generated pairs already point at passages; labeled ones point at whole documents.
        EmbeddingFinetuner(config.finetune).fit(train, model_dir, None if node_level else nodes, resume=resume)
    timings["finetune"] = round(time.perf_counter() - t, 2)

    tuned = score_model(str(model_dir), "tuned", nodes, test, uri, "tuned", config, timings)
    with_significance(baseline, tuned)
    timings["total"] = round(time.perf_counter() - t0, 2)

    results = baseline + tuned
    report = {
        "k": config.k,
        "base_model": base or DEFAULT_MODEL,
        "tuned_model": str(model_dir),
        "dataset": {
            "path": dataset_path,
            "n_corpus": len(dataset.corpus),
            "n_nodes": len(nodes),
            "n_train_queries": len(train),
            "n_test_queries": len(test),
            "pairs": config.pairs,
        },
        "results": [r.to_dict() for r in results],
        "finetune_metrics": json.loads((model_dir / "metrics.json").read_text()),
        "timings_s": timings,
    }
    report["table"] = write_report(out, report, results, config.k)
    return report


def evaluate_model(
    dataset: QADataset,
    model: str | None,
    out: str | Path,
    config: RunConfig | None = None,
    dataset_path: str = "",
    force: bool = False,
) -> dict:
    """Score one model on every query of a labeled dataset (no training: all queries are test queries)."""
    config = config or RunConfig()
    out = Path(out)
    check_settings(dataset, model, config)
    prepare_output(out, force)
    t0 = time.perf_counter()
    nodes = build_nodes(dataset.corpus, model, config)
    timings: dict[str, float] = {}
    results = score_model(model, "model", nodes, dataset, str(out / "lancedb"), "model", config, timings)
    report = {
        "k": config.k,
        "base_model": model or DEFAULT_MODEL,
        "tuned_model": None,
        "dataset": {"path": dataset_path, "n_corpus": len(dataset.corpus), "n_nodes": len(nodes), "n_train_queries": 0, "n_test_queries": len(dataset)},
        "results": [r.to_dict() for r in results],
        "timings_s": {**timings, "total": round(time.perf_counter() - t0, 2)},
    }
    report["table"] = write_report(out, report, results, config.k)
    return report
