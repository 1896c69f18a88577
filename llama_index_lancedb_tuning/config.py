"""The run's settings: one validated source of every default, checked before anything is loaded.

Each field carries `metadata={"help": ...}` in the style of sentence-transformers'
`SentenceTransformerTrainingArguments`; a field with a `flag` is a `lancedb-tune` option,
and the CLI builds its parser from these fields. Standard library only: the CLI validates
its arguments with this module before importing torch or sentence-transformers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from functools import cache
from typing import Any, Literal, cast, get_args, get_origin, get_type_hints

from .errors import TuningError

LossName = Literal["mnrl", "cached_mnrl", "gist"]
PositiveChoice = Literal["best", "all"]
PairsSource = Literal["labeled", "offline", "llm"]
TuneMode = Literal["query", "full", "adapter", "reranker"]
# The map `adapter` tuning trains on the app's query vectors (encoding.adapted_embedding.QueryAdapter).
AdapterKind = Literal["linear", "mlp"]
EncoderBackend = Literal["torch", "onnx", "onnx-int8"]
# auto: onnx-int8 on a CPU, torch where CUDA is (encoding.resolve_backend).
Backend = Literal["auto", "torch", "onnx", "onnx-int8"]
Engine = Literal["local", "ray"]
HybridFusion = Literal["rrf", "linear"]
RerankerKind = Literal["fusion", "cohere", "cross-encoder"]
QueryType = Literal["vector", "fts", "reranked_vector", "reranked_fts", "hybrid"]
QUERY_TYPES: tuple[QueryType, ...] = get_args(QueryType)
# The retrieval metrics every row carries (evaluation.ir_metrics defines them).
MetricName = Literal["hit_rate", "mrr", "ndcg", "recall", "precision", "map"]
METRICS: tuple[MetricName, ...] = get_args(MetricName)
# The query type that answers users unless told otherwise: the pack's default, and the one the
# gate decides on, in the pack and in `lancedb-tune run` alike.
SERVING_QUERY_TYPE: QueryType = "hybrid"
# `full` re-embeds the table with the tuned model; the gate keeps a worse one out of service.
DEFAULT_TUNE_MODE: TuneMode = "full"

# Candidates per query as multiples of k, picked on validation queries of data_qa.csv's
# cross-validation folds (BENCHMARKS.md): a reranker sees 4k candidates; each leg of a hybrid
# search brings 3k rows to the fusion, so a passage both legs rank fairly well can outrank one
# that only a single leg ranks first.
RERANK_OVERFETCH = 4
HYBRID_OVERFETCH = 3
# RRF's constant: LanceDB's default is 60. Over the deeper legs a hybrid search fuses, a small
# constant lets the top ranks of each leg count for more; 5 beat 10 and 60 on validation
# queries for the base and the tuned model (BENCHMARKS.md).
DEFAULT_RRF_K = 5
COHERE_MODEL = "rerank-english-v3.0"
# `adapter` tuning: a small map trained on cached vectors, so many cheap epochs. The residual MLP at 1e-4
# for 40 epochs (batch 32) was best in 4-fold cross-validation within the Lyft training queries (hit@5
# 0.845 -> 0.869; linear 0.860; validation peaked near epoch 35); never scored on test queries.
ADAPTER_EPOCHS = 40
ADAPTER_LEARNING_RATE = 1e-4


class InvalidSetting(TuningError):
    """A setting out of its range. `template` names the fields as {0}, {1}...; the CLI words it with its flags."""

    def __init__(self, template: str, *field_names: str) -> None:
        self.template, self.field_names = template, field_names
        super().__init__(template.format(*field_names))

    def worded(self, name_of: Callable[[str], str]) -> TuningError:
        return TuningError(self.template.format(*map(name_of, self.field_names)))


@dataclass(frozen=True)
class RerankerSpec:
    """A parsed `--reranker` value: `fusion`, `cohere[:MODEL]` or `cross-encoder:PATH`."""

    kind: RerankerKind = "fusion"
    model: str | None = None

    @classmethod
    def parse(cls, spec: str | RerankerSpec | None) -> RerankerSpec:
        if isinstance(spec, RerankerSpec):
            return spec
        name, _, arg = (spec or "fusion").partition(":")
        if name == "fusion" and not arg:
            return cls()
        if name == "cohere":
            return cls("cohere", arg or COHERE_MODEL)
        if name == "cross-encoder":
            if not arg:
                raise TuningError("cross-encoder reranker needs a model: --reranker cross-encoder:PATH_OR_ID")
            return cls("cross-encoder", arg)
        raise TuningError(f"unknown reranker '{spec}'; use fusion, cohere[:MODEL] or cross-encoder:PATH")

    def __str__(self) -> str:
        return self.kind if self.model is None else f"{self.kind}:{self.model}"


@cache
def _field_types(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _validate(config: Any, cls: type, at_least: dict[str, float] | None = None, fractions: dict[str, bool] | None = None) -> None:
    """`cls`'s fields of `config`: Literal choices, finite numbers, `at_least` lower bounds, and
    `fractions` below 1 (field -> whether 0 is allowed)."""
    for f in fields(cls):
        value, kind = getattr(config, f.name), _field_types(cls)[f.name]
        if get_origin(kind) is Literal and value not in get_args(kind):
            raise InvalidSetting(f"unknown {{0}} {value!r}; use one of {', '.join(get_args(kind))}", f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise InvalidSetting(f"{{0}} must be a finite number, got {value}", f.name)
    for name, low in (at_least or {}).items():
        value = getattr(config, name)
        if value is not None and value < low:
            raise InvalidSetting(f"{{0}} must be at least {low:g}, got {value}", name)
    for name, zero_allowed in (fractions or {}).items():
        value = getattr(config, name)
        if not (0 <= value < 1 if zero_allowed else 0 < value < 1):
            raise InvalidSetting(f"{{0}} must be {'from 0 up to' if zero_allowed else 'between 0 and'} 1, got {value}", name)


@dataclass(frozen=True, kw_only=True)
class ChunkingConfig:
    """How documents are split into nodes, in the embedding model's tokens."""

    chunk_size: int = field(
        default=128,
        metadata={
            "help": "node size in model tokens; 0 (or --no-chunking): one node per document, its text as given, "
            "truncated at the model's input length",
            "flag": "--chunk-size",
        },
    )
    chunk_overlap: int = field(default=16, metadata={"help": "tokens shared by neighbouring nodes", "flag": "--chunk-overlap"})
    fix_glued_words: bool = field(
        default=True,
        metadata={
            "help": "re-space words PDF extraction ran together (chunking.split_glued_words)",
            "flag": "--keep-glued-words",
        },
    )

    def __post_init__(self) -> None:
        _validate(self, ChunkingConfig, at_least={"chunk_size": 0, "chunk_overlap": 0})
        if self.chunk_size and self.chunk_overlap >= self.chunk_size:
            raise InvalidSetting(
                f"{{0}} ({self.chunk_overlap}) must be smaller than {{1}} ({self.chunk_size})", "chunk_overlap", "chunk_size"
            )


def _metric_names(names: tuple[str, ...] | str) -> tuple[MetricName, ...]:
    """`metrics` as a tuple of known names, each once: `ndcg,map` or ("ndcg", "map")."""
    given = [n.strip() for n in names.split(",")] if isinstance(names, str) else list(names)
    unknown = next((n for n in given if n not in METRICS), None) if given else ""
    if unknown is not None:
        raise InvalidSetting(f"unknown {{0}} {unknown!r}; use a comma list of {', '.join(METRICS)}", "metrics")
    return cast(tuple[MetricName, ...], tuple(dict.fromkeys(given)))


@dataclass(frozen=True, kw_only=True)
class SearchConfig:
    """How the five query types search and how deep they are scored."""

    k: int = field(default=5, metadata={"help": "the cut of every metric: results per query", "flag": "--k"})
    # A comma list is accepted too (the CLI's value); it is parsed into the tuple.
    metrics: tuple[MetricName, ...] = field(
        default=("hit_rate", "mrr", "ndcg"),
        metadata={
            "help": f"the metrics report.md shows, a comma list of {', '.join(METRICS)} (default: hit_rate,mrr,ndcg; "
            "report.json has them all)",
            "flag": "--metrics",
        },
    )
    gate_metric: MetricName = field(
        default="hit_rate",
        metadata={
            "help": "the metric the do-no-harm gate compares: hit_rate by McNemar's test, the others by a sign test",
            "flag": "--gate-metric",
        },
    )
    reranker: RerankerSpec | str = field(
        default=RerankerSpec(),
        metadata={
            "help": "reranker for the reranked types: fusion (offline), cohere[:MODEL], cross-encoder:PATH",
            "flag": "--reranker",
        },
    )
    hybrid: HybridFusion = field(
        default="rrf", metadata={"help": "LanceDB fusion of the vector and full-text legs for hybrid search", "flag": "--hybrid"}
    )
    rrf_k: int = field(default=DEFAULT_RRF_K, metadata={"help": "RRF constant of the hybrid fusion"})
    overfetch: int = field(default=RERANK_OVERFETCH, metadata={"help": "reranked types rerank overfetch × k candidates"})
    hybrid_overfetch: int = field(
        default=HYBRID_OVERFETCH, metadata={"help": "hybrid fuses hybrid_overfetch × k rows of each leg"}
    )
    backend: Backend = field(
        default="auto",
        metadata={
            "help": "encoder runtime for indexing and queries: auto (onnx-int8 on a CPU, torch on a GPU), torch, onnx (ONNX Runtime, the torch vectors), onnx-int8 (int8 weights: faster, vectors close to fp32)",
            "flag": "--backend",
        },
    )
    engine: Engine = field(
        default="local",
        metadata={
            "help": "who embeds and writes the tables: local (this process) or ray (Ray Data workers, written by lance-ray; "
            "needs the [ray] extra)",
            "flag": "--engine",
        },
    )

    def __post_init__(self) -> None:
        object.__setattr__(self, "reranker", RerankerSpec.parse(self.reranker))  # parsed once, here
        object.__setattr__(self, "metrics", _metric_names(self.metrics))
        _validate(self, SearchConfig, at_least={"k": 1, "rrf_k": 1, "overfetch": 1, "hybrid_overfetch": 1})


@dataclass(frozen=True)
class FinetuneConfig:
    """How to fine-tune. Defaults were chosen on validation queries of data_qa.csv and of the Lyft 10-K
    queries, never on test queries (see BENCHMARKS.md).

    Inside a `RunConfig`, `k` and `seed` are the run's.
    """

    base_model: str | None = field(
        default=None,
        metadata={"help": "HF id or local path of the model to tune (default: bundled all-MiniLM-L6-v2)", "flag": "--base-model"},
    )
    # Validation peaked after the first epoch on both corpora (data_qa's five folds, Lyft's carve) and
    # fell after it: more epochs memorise the pairs and cost time.
    epochs: int = field(default=1, metadata={"help": "training epochs", "flag": "--epochs"})
    batch_size: int = field(
        default=32,
        metadata={
            "help": "pairs per batch (under torchrun, the global batch each process takes a share of); "
            "the others in a batch are each pair's negatives",
            "flag": "--batch-size",
        },
    )
    learning_rate: float = field(default=1e-4, metadata={"help": "peak learning rate", "flag": "--lr"})
    warmup_ratio: float = field(default=0.1, metadata={"help": "fraction of the steps spent warming the learning rate up"})
    loss: LossName = field(
        default="mnrl",
        metadata={"help": "mnrl, cached_mnrl (less memory) or gist (the base model masks false negatives)", "flag": "--loss"},
    )
    positives: PositiveChoice = field(
        default="best", metadata={"help": "per query, the node the model ranks first (best) or every node of its document (all)"}
    )
    hard_negatives: int = field(
        default=0, metadata={"help": "mined hard negatives per pair (0: none)", "flag": "--hard-negatives"}
    )
    val_fraction: float = field(
        default=0.2, metadata={"help": "fraction of the training queries carved off to pick the best epoch (0: none)"}
    )
    seed: int = field(default=42, metadata={"help": "seed of the validation split and the trainer"})
    k: int = field(default=5, metadata={"help": "k of the validation metrics"})
    show_progress: bool = field(default=True, metadata={"help": "training progress bars"})
    eval_each_epoch: bool = field(
        default=True,
        metadata={
            "help": "validate before training and after each epoch, keeping the best epoch; False: once, at the end "
            "(validation encodes the whole corpus, which costs more than a training epoch on small data)"
        },
    )
    freeze_passages: bool = field(
        default=False,
        metadata={
            "help": "tune the query side only, against the base model's passage vectors: an index built with the base model stays valid "
            "(see QueryOnlyLoss)"
        },
    )
    keep_checkpoints: bool = field(
        default=False,
        metadata={
            "help": "keep the checkpoint directories of a finished run (benchmarks/fusion_validation.py scores the selection checkpoint)"
        },
    )
    adapter: AdapterKind = field(
        default="mlp",
        metadata={
            "help": "for --tune adapter: the map trained on the query vectors, mlp (residual, one hidden layer) or linear",
            "flag": "--adapter",
        },
    )
    adapter_epochs: int = field(
        default=ADAPTER_EPOCHS,
        metadata={
            "help": "for --tune adapter: epochs over the training queries (the best on validation is kept)",
            "flag": "--adapter-epochs",
        },
    )
    adapter_learning_rate: float = field(
        default=ADAPTER_LEARNING_RATE, metadata={"help": "for --tune adapter: Adam's learning rate"}
    )
    # `reranker` tuning trains a cross-encoder with the epochs, batch and learning rate above (training.cross_encoder).
    reranker_model: str | None = field(
        default=None,
        metadata={"help": "for --tune reranker: the cross-encoder to tune (None: the serving one, else MiniLM, new head)"},
    )
    reranker_negatives: int = field(default=4, metadata={"help": "for --tune reranker: hard negatives per training query"})
    reranker_max_length: int = field(default=256, metadata={"help": "for --tune reranker: query and passage tokens trained on"})
    # Off by default: a refit trains on the validation queries too, so nothing would be left to judge
    # the final model on (the promotion gate needs queries it never saw), for one more training run.
    refit: bool = field(
        default=False,
        metadata={
            "help": "once validation picked the best epoch, train a fresh base model on every training query, validation ones included, "
            "for that many epochs (the validation fifth covers documents the rest does not; needs eval_each_epoch)"
        },
    )

    def __post_init__(self) -> None:
        # One pair per batch leaves MNRL no in-batch negatives: the loss is 0 and nothing is learned.
        _validate(
            self,
            FinetuneConfig,
            at_least=dict(
                epochs=1,
                batch_size=2,
                hard_negatives=0,
                k=1,
                seed=0,
                adapter_epochs=1,
                reranker_negatives=1,
                reranker_max_length=16,
            ),
            fractions={"warmup_ratio": True, "val_fraction": True},
        )
        for name in ("learning_rate", "adapter_learning_rate"):
            if not getattr(self, name) > 0:
                raise InvalidSetting(f"{{0}} must be a positive number, got {getattr(self, name)}", name)


def recommended_finetune(pairs: PairsSource) -> FinetuneConfig:
    """Fine-tuning defaults per source of pairs. Labeled queries train one epoch at 1e-4; generated
    pseudo-queries are noisy, so a gentler rate for two epochs (3e-5, 2) keeps the model from
    memorising their noise (figures in BENCHMARKS.md).
    """
    if pairs == "labeled":
        return FinetuneConfig()
    return FinetuneConfig(epochs=2, learning_rate=3e-5)


@dataclass(frozen=True, kw_only=True)
class RunConfig(SearchConfig, ChunkingConfig):
    """Everything a run needs besides its data; defaults are the package's recommended recipe.

    `k` and `seed` are given once, here: the fine-tuning's copies are set from them.
    """

    test_size: float = field(
        default=0.2, metadata={"help": "fraction of the labeled queries held out as test queries", "flag": "--test-size"}
    )
    seed: int = field(default=42, metadata={"help": "seed of the test split, generated pairs and training", "flag": "--seed"})
    pairs: PairsSource = field(
        default="labeled",
        metadata={
            "help": "where training pairs come from (default: labeled for a labeled CSV, offline with --queries, llm with --llm)",
            "flag": "--pairs",
        },
    )
    llm: str | None = field(default=None, metadata={"help": "openai:MODEL or ollama:MODEL, for --pairs llm", "flag": "--llm"})
    tune: TuneMode = field(
        default=DEFAULT_TUNE_MODE,
        metadata={
            "help": "full: tune both sides and re-embed the corpus into a tuned table; query: tune the query encoder only, "
            "against the baseline table's stored vectors, which are scored as they are (nothing re-embedded); adapter: "
            "train a small map on the base model's query vectors against those stored vectors (the model itself unchanged); "
            "reranker: train a cross-encoder on hard negatives from the baseline table, to rerank the reranked types",
            "flag": "--tune",
        },
    )
    adapt: bool = field(
        default=True,
        metadata={
            "help": "with eval data over another corpus, also train on as many label-free pairs cut from that "
            "corpus's documents (never its queries) as there are labeled pairs",
            "flag": "--no-adapt",
        },
    )
    gate: bool = field(
        default=True,
        metadata={
            "help": "score the tuned model against the base one on validation queries carved from the training queries "
            "before training, and report it promoted only if its hybrid (--tune reranker: reranked_vector) --gate-metric at k is not below",
            "flag": "--no-gate",
        },
    )
    # Annotated as always present: None is only an input, replaced at construction.
    finetune: FinetuneConfig = field(default=None, metadata={"help": "fine-tuning settings (None: recommended_finetune(pairs))"})  # type: ignore[assignment]

    def __post_init__(self) -> None:
        ChunkingConfig.__post_init__(self)
        SearchConfig.__post_init__(self)
        _validate(self, RunConfig, at_least={"seed": 0}, fractions={"test_size": False})
        if self.pairs == "llm" and not self.llm:
            raise InvalidSetting("{0} llm needs {1} openai:MODEL or ollama:MODEL", "pairs", "llm")
        recipe = self.finetune or recommended_finetune(self.pairs)
        object.__setattr__(self, "finetune", replace(recipe, k=self.k, seed=self.seed))
