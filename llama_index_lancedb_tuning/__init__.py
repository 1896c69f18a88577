"""Fine-tune an embedding model on your documents, serve it from LanceDB through LlamaIndex,
and prove the gain on held-out queries.

Names are imported on first use: `lancedb-tune` rejects a bad input in a fraction of a
second instead of first importing torch and sentence-transformers.
"""

from __future__ import annotations

import os
from importlib import import_module
from typing import Any

from .errors import TuningError

# LanceDB's Rust logger reads LANCEDB_LOG once, when lancedb loads, so this only helps where this
# package is imported first; the package's queries do not rely on it (each selects its score column,
# which keeps LanceDB's per-query deprecation WARN away, see `LanceDBRetriever._hybrid_rows`). Errors
# still show, and an app that sets LANCEDB_LOG itself keeps its own level.
os.environ.setdefault("LANCEDB_LOG", "error")

_EXPORTS = {
    "data.qa_dataset": ["QADataset"],
    "data.labeled_csv": ["load_dataset", "load_labeled_csv", "load_qa_dataset"],
    "data.beir": ["load_beir", "read_qrels"],
    "data.documents": ["load_documents"],
    "data.chunking": ["chunk_corpus", "model_tokenizer", "split_glued_words"],
    "pairs.llm_pairs": ["generate_llm_pairs", "llm_from_spec"],
    "pairs.offline_pairs": ["generate_offline_pairs"],
    "config": ["ChunkingConfig", "FinetuneConfig", "RerankerSpec", "RunConfig", "SearchConfig"],
    "training.finetuner": ["EmbeddingFinetuner", "FinetuneResult"],
    "encoding.embed_models": ["embed_queries", "embed_texts", "load_embed_model"],
    "store.table": ["connect", "ensure_fts_index", "ensure_vector_index", "open_table", "write_nodes"],
    "store.ray_ingest": ["ray_write_nodes"],
    "search.retrievers": ["LanceDBRetriever", "RerankedRetriever"],
    "search.shared_search": ["SharedSearch"],
    "search.index": ["QUERY_TYPES", "LanceDBIndex"],
    "search.rerankers": ["FusionRerank", "hybrid_reranker", "node_reranker"],
    "evaluation.metrics": ["EvalResult", "bootstrap_ci", "mcnemar_p"],
    "evaluation.evaluator": ["evaluate_retriever", "evaluate_retrievers"],
    "evaluation.report": ["comparison_plot", "comparison_table"],
    "tuning.run_loop": ["build_nodes", "evaluate_model", "tune_and_evaluate"],
    "tuning.table_tuning": ["TuneResult"],
    "store.versions": ["Promotion"],
    "pack": ["FinetunedLanceDBRetrieverPack", "write_pack_source"],
    "encoding.model_ids": ["DEFAULT_MODEL", "resolve_model"],
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = ["TuningError", *sorted(_MODULE_OF)]


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
