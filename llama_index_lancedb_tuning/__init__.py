"""Fine-tune an embedding model on your documents, serve it from LanceDB through LlamaIndex,
and prove the gain on held-out queries."""

from .data import QADataset, chunk_corpus, load_dataset, load_labeled_csv, model_tokenizer
from .errors import TuningError
from .evaluate import EvalResult, comparison_plot, comparison_table, evaluate_retriever, evaluate_retrievers, mcnemar_p
from .finetune import EmbeddingFinetuner, FinetuneConfig, FinetuneResult
from .index import QUERY_TYPES, LanceDBIndex, LanceDBRetriever, RerankedRetriever, load_embed_model
from .models import DEFAULT_MODEL, resolve_model
from .pipeline import RunConfig, evaluate_model, tune_and_evaluate
from .rerank import FusionRerank, hybrid_reranker, node_reranker

__all__ = [
    "DEFAULT_MODEL",
    "QUERY_TYPES",
    "EmbeddingFinetuner",
    "EvalResult",
    "FinetuneConfig",
    "FinetuneResult",
    "FusionRerank",
    "LanceDBIndex",
    "LanceDBRetriever",
    "QADataset",
    "RerankedRetriever",
    "RunConfig",
    "TuningError",
    "chunk_corpus",
    "comparison_plot",
    "comparison_table",
    "evaluate_model",
    "evaluate_retriever",
    "evaluate_retrievers",
    "hybrid_reranker",
    "load_dataset",
    "load_embed_model",
    "load_labeled_csv",
    "mcnemar_p",
    "model_tokenizer",
    "node_reranker",
    "resolve_model",
    "tune_and_evaluate",
]
