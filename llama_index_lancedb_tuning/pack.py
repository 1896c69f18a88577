"""`FinetunedLanceDBRetrieverPack`: a tuned model served from LanceDB as LlamaIndex retrievers and a query engine."""

from __future__ import annotations

import ast
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.llms import LLM
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.query_engine import RetrieverQueryEngine
from llama_index.core.response_synthesizers import BaseSynthesizer, get_response_synthesizer
from llama_index.core.response_synthesizers.no_text import NoText
from llama_index.core.schema import BaseNode, Document, NodeWithScore

from .common.llama_index_internals import sentence_transformer_of
from .config import (
    DEFAULT_TUNE_MODE,
    QUERY_TYPES,
    SERVING_QUERY_TYPE,
    ChunkingConfig,
    MetricName,
    RerankerSpec,
    SearchConfig,
    TuneMode,
)
from .data.chunking import chunk_corpus, token_counter
from .data.qa_dataset import QADataset
from .encoding.embed_models import load_embed_model
from .errors import TuningError
from .evaluation.metrics import EvalResult
from .search.index import LanceDBIndex
from .search.rerankers import hybrid_reranker, node_reranker
from .store.encoder_record import recorded_reranker
from .store.table import DEFAULT_TABLE, DEFAULT_URI, TableMode
from .store.versions import Promotion, current_promotion, history, rollback
from .tuning.table_tuning import TuneResult, tune_index

try:  # llama-index-core <= 0.14.20 ships the base class; 0.14.21+ removed it.
    from llama_index.core.llama_pack import BaseLlamaPack
except ImportError:
    from abc import ABC, abstractmethod

    class BaseLlamaPack(ABC):  # type: ignore[no-redef]
        """Same shape as the base LlamaIndex removed: modules to compose, and a `run`."""

        @abstractmethod
        def get_modules(self) -> dict[str, Any]: ...

        @abstractmethod
        def run(self, *args: Any, **kwargs: Any) -> Any: ...


def _document_nodes(
    documents: Sequence[Document], embed_model: BaseEmbedding, chunk_size: int, chunk_overlap: int, fix_glued_words: bool
) -> Sequence[BaseNode]:
    # sentence-transformers' model behind a HuggingFaceEmbedding, or an OnnxEmbedding's own.
    tokenizer = getattr(sentence_transformer_of(embed_model) or embed_model, "tokenizer", None)
    if tokenizer is None:
        raise TuningError("pass nodes= with this embed_model: documents are split with a sentence-transformers tokenizer")
    corpus = {d.doc_id: d.text for d in documents if d.text.strip()}
    if not corpus:
        raise TuningError("the documents hold no text; check what was loaded")
    return chunk_corpus(corpus, token_counter(tokenizer), chunk_size, chunk_overlap, fix_glued_words)


class FinetunedLanceDBRetrieverPack(BaseLlamaPack):
    """Index documents or nodes with a (fine-tuned) embedding model in LanceDB and serve the
    five query types of the reference table: vector, fts, reranked_vector, reranked_fts, hybrid.

    With neither `documents` nor `nodes`, an existing table is opened without re-embedding.
    `mode="create"` (default) never touches an existing table; `append` adds to it and
    `overwrite` replaces it, both only when asked for.

    Two encoders serve the table: the document encoder (`embed_model`, the model its vectors
    were made with, which embeds what `add` appends) and the query encoder (the same model, one
    `finetune(mode="query")` tuned against the frozen vectors, or the document encoder with a
    `finetune(mode="adapter")` map on its query vectors). Tuning records the pair with the table,
    and opening it with no `embed_model` brings the pair back; likewise the cross-encoder
    `finetune(mode="reranker")` promotes, with no `reranker`.
    """

    def __init__(
        self,
        documents: Sequence[Document] | None = None,
        nodes: Sequence[BaseNode] | None = None,
        embed_model: str | BaseEmbedding | None = None,
        uri: str = DEFAULT_URI,
        table_name: str = DEFAULT_TABLE,
        query_type: str = SERVING_QUERY_TYPE,
        reranker: str | BaseNodePostprocessor | None = None,
        similarity_top_k: int = 5,
        llm: LLM | None = None,
        mode: TableMode = "create",
        chunk_size: int = ChunkingConfig.chunk_size,
        chunk_overlap: int = ChunkingConfig.chunk_overlap,
        fix_glued_words: bool = ChunkingConfig.fix_glued_words,
        hybrid_fusion: str = "rrf",
        storage_options: dict[str, str] | None = None,
        show_progress: bool = False,
        query_encoder: str | BaseEmbedding | None = None,
    ) -> None:
        if query_type not in QUERY_TYPES:
            raise TuningError(f"unknown query_type '{query_type}'; use one of {', '.join(QUERY_TYPES)}")
        if documents is not None and nodes is not None:
            raise TuningError("pass documents= or nodes=, not both")
        if query_encoder is not None and (documents is not None or nodes is not None):
            raise TuningError("query_encoder= opens a table tuned on the query side; to build one, pass embed_model= alone")
        if documents is None and nodes is None:
            self.lancedb_index = LanceDBIndex.open(embed_model, uri, table_name, storage_options, query_encoder)
        else:
            model = load_embed_model(embed_model)
            if documents is not None:
                nodes = _document_nodes(documents, model, chunk_size, chunk_overlap, fix_glued_words)
            assert nodes is not None
            self.lancedb_index = LanceDBIndex.build(nodes, model, uri, table_name, mode, storage_options, show_progress)
        self.query_type = query_type
        self.similarity_top_k = similarity_top_k
        self.llm = llm
        self.reranker_spec = recorded_reranker(self.lancedb_index.table) if reranker is None else reranker
        self.hybrid_fusion = hybrid_fusion
        self.hybrid_reranker = hybrid_reranker(hybrid_fusion)
        self._build_views()

    @classmethod
    def from_table(
        cls,
        uri: str = DEFAULT_URI,
        table_name: str = DEFAULT_TABLE,
        embed_model: str | BaseEmbedding | None = None,
        **kwargs: Any,
    ) -> FinetunedLanceDBRetrieverPack:
        """Reopen an existing table: an app restarts without re-embedding the corpus.

        Tables written by LlamaIndex's `LanceDBVectorStore` open too; a missing full-text index is
        built (rows and vectors untouched).

        Args:
            uri: where the table lives.
            table_name: the table.
            embed_model: the model its vectors were made with; None: the pair recorded by `finetune`,
                else the bundled MiniLM. An API embedding (OpenAI...) is passed with its key: the
                table's adapter for it, if it records one, embeds the queries.
            **kwargs: the constructor's other arguments (query_type, reranker, query_encoder...); no `reranker`:
                the one `finetune(mode="reranker")` recorded, else fusion.
        """
        return cls(embed_model=embed_model, uri=uri, table_name=table_name, **kwargs)

    @property
    def query_encoder(self) -> BaseEmbedding:
        """The model that embeds queries."""
        return self.lancedb_index.query_model

    @property
    def document_encoder(self) -> BaseEmbedding:
        """The model that made the table's vectors and embeds what `add` appends."""
        return self.lancedb_index.embed_model

    def _build_views(self) -> None:
        ix = self.lancedb_index
        self.embed_model = ix.embedding
        self.reranker = node_reranker(self.reranker_spec, self.similarity_top_k, self.embed_model, ix.table)
        self.retrievers = ix.retrievers(self.similarity_top_k, self.reranker, self.hybrid_reranker)
        self.retriever = self.retrievers[self.query_type]
        self.vector_store = ix.vector_store()
        self.index = ix.vector_store_index()
        if self.llm is None:
            from llama_index.core.llms import MockLLM

            # No LLM: answer with the retrieved nodes (no text). Built directly, because
            # get_response_synthesizer drops `llm` for NO_TEXT and the synthesizer then resolves
            # Settings.llm, which fails without an OpenAI key. MockLLM is never called here.
            synthesizer: BaseSynthesizer = NoText(llm=MockLLM())
        else:
            synthesizer = get_response_synthesizer(llm=self.llm)
        self.query_engine = RetrieverQueryEngine(self.retriever, response_synthesizer=synthesizer)

    def add(
        self,
        documents: Sequence[Document] | None = None,
        nodes: Sequence[BaseNode] | None = None,
        chunk_size: int = ChunkingConfig.chunk_size,
        chunk_overlap: int = ChunkingConfig.chunk_overlap,
        fix_glued_words: bool = ChunkingConfig.fix_glued_words,
    ) -> None:
        """Append documents or nodes; the full-text index is rebuilt so they are searchable at once."""
        if documents is not None:
            nodes = _document_nodes(documents, self.lancedb_index.embed_model, chunk_size, chunk_overlap, fix_glued_words)
        if not nodes:
            raise TuningError("nothing to add: pass documents= or nodes=")
        self.lancedb_index.add(nodes)
        self._build_views()

    def evaluate(self, dataset: QADataset, k: int = 5, model: str = "model") -> list[EvalResult]:
        """Hit rate, MRR, nDCG, recall, precision and MAP at k (with n and 95% intervals) of the five query types on `dataset`.

        The same retrievers at the same depths as `lancedb-tune evaluate`, so a table chunked and
        embedded as that command indexes its corpus gives the same numbers; a hit is a node of a relevant document.

        Args:
            dataset: labeled queries whose corpus ids are the table's documents' ids.
            k: the cut of every metric (and the results each retriever returns).
            model: the label of every row.

        Raises:
            TuningError: when a query points at no document of the table, or `k` exceeds the
                table's documents: either would report hit rates that mean nothing.
        """
        from .evaluation.caveats import check_k
        from .tuning.source_table import SourceTable

        source = SourceTable.read(self.lancedb_index.table)
        source.check_labels(dataset)
        check_k(k, len(source.sources()), "k=")
        return self._scores(self.lancedb_index, dataset, k, model)

    def _search(self, k: int, gate_metric: MetricName = SearchConfig.gate_metric) -> SearchConfig:
        spec = None if isinstance(self.reranker_spec, BaseNodePostprocessor) else self.reranker_spec
        return SearchConfig(k=k, hybrid=self.hybrid_fusion, reranker=RerankerSpec.parse(spec), gate_metric=gate_metric)  # type: ignore[arg-type]

    def _app_reranker(self) -> BaseNodePostprocessor | None:
        """The app's own postprocessor for the reranked types, which no `SearchConfig` spells."""
        return self.reranker_spec if isinstance(self.reranker_spec, BaseNodePostprocessor) else None

    def _scores(self, ix: LanceDBIndex, dataset: QADataset, k: int, model: str = "model") -> list[EvalResult]:
        from .evaluation.table_scores import score_index

        return score_index(ix, model, dataset, self._search(k), {}, reranker=self._app_reranker())

    def finetune(
        self,
        train: QADataset,
        mode: TuneMode = DEFAULT_TUNE_MODE,
        output_dir: str | Path | None = None,
        gate: bool = True,
        eval_dataset: QADataset | None = None,
        gate_metric: MetricName = SearchConfig.gate_metric,
        **overrides: Any,
    ) -> TuneResult:
        """Tune the embedding model on the table's own nodes; serve it only if it does no harm.

        `query`: only a query encoder learns, against the table's stored vectors, frozen; no row
        or vector is rewritten, and `add` keeps embedding documents with the table's model.
        `full`: both sides are tuned and every row is re-embedded (ids, text, metadata kept).
        `adapter`: the table's embedding, whatever it is (OpenAI, Cohere, HuggingFace...), stays as
        it is; a small map on its query vectors (`adapter="mlp"` or `"linear"`) learns against the
        stored vectors, from the training queries embedded once (cached in the adapter's folder).
        `reranker`: a cross-encoder learns to reorder the candidates the table gives the reranked
        types, against hard negatives from them; the gate compares it with the serving reranker on
        the reranked type (`reranked_vector` unless `query_type` is reranked).

        The gate scores the serving and the tuned model with the pack's own retriever
        (`query_type`, at `similarity_top_k`) on validation queries the tuned model never saw;
        the tuned one is promoted only if its `gate_metric` is not below. Until then the table and
        the answers stay as they were; a promotion is a new tagged table version recording the
        pair of encoders and both models' figures, which `from_table` reopens, `history` lists
        and `rollback` undoes. The tuned model is saved either way.

        Args:
            train: labeled queries; relevance is by document (a node's `source_id` metadata or
                `ref_doc_id`), so its corpus ids must be the ids of the table's documents.
            mode: `query`, `full`, `adapter` or `reranker`.
            output_dir: where the tuned model (or adapter) goes; default beside a local table, a new folder for each attempt (`TuneResult.model_path`).
            gate: False promotes the tuned model without scoring it.
            eval_dataset: the gate's validation queries; None: the `val_fraction` of `train` the
                fine-tuning holds out for validation (carved apart before training when `refit`
                would train on it).
            gate_metric: what the gate compares: `hit_rate` (McNemar's test) or `mrr`, `ndcg`, `recall`,
                `precision`, `map` (a sign test on the per-query differences).
            **overrides: `FinetuneConfig` fields (epochs, learning_rate, val_fraction...; for `adapter`:
                adapter, adapter_epochs, adapter_learning_rate, batch_size; for `reranker`: epochs, learning_rate,
                batch_size, reranker_model, reranker_negatives, reranker_max_length); bars are off unless `show_progress=True`.
        """
        self.lancedb_index, result = tune_index(
            self.lancedb_index,
            train,
            mode,
            output_dir,
            self._search(self.similarity_top_k, gate_metric),
            gate,
            eval_dataset,
            self.query_type,
            self._app_reranker(),
            **overrides,
        )
        if result.promoted and mode == "reranker":
            self.reranker_spec = recorded_reranker(self.lancedb_index.table)
        self._build_views()
        return result

    def rollback(self) -> int:
        """Serve again what served before the last promotion: the table version (rows, vectors,
        indices) and the pack's encoders and reranker, exactly (an app's own postprocessor, which no
        table records, gives way to fusion: pass it again). Returns the table version now serving (a
        new one, equal to the restored one)."""
        table = self.lancedb_index.table
        serving = self.lancedb_index.embed_model
        undone = current_promotion(table)
        version, previous = rollback(table, serving)
        if undone is not None and undone["mode"] == "reranker":
            self.reranker_spec = undone["previous_reranker"]
        self.lancedb_index = LanceDBIndex.from_record(table, previous, serving)
        self._build_views()
        return version

    def history(self) -> list[Promotion]:
        """Every promotion of the table, oldest first: its version, mode, encoders and validation
        figures, rolled-back ones included, the one serving marked."""
        return history(self.lancedb_index.table)

    def get_modules(self) -> dict[str, Any]:
        return {
            "vector_store": self.vector_store,
            "index": self.index,
            "embed_model": self.embed_model,
            "query_encoder": self.query_encoder,
            "document_encoder": self.document_encoder,
            "table": self.lancedb_index.table,
            "retrievers": self.retrievers,
            "retriever": self.retriever,
            "reranker": self.reranker,
            "hybrid_reranker": self.hybrid_reranker,
            "query_engine": self.query_engine,
            "llm": self.llm,
        }

    def run(self, query: str, **kwargs: Any) -> Any:
        """Answer `query` with the LLM; without one, return the retrieved nodes."""
        if self.llm is None:
            nodes: list[NodeWithScore] = self.retriever.retrieve(query)
            return nodes
        return self.query_engine.query(query, **kwargs)


_PACKAGE = "llama_index_lancedb_tuning"  # fixed: a copy of this file must still import from the installed package
_RELATIVE_IMPORT = re.compile(r"^([ \t]*)from \.+(\w[\w.]*)? import ", re.MULTILINE)
_PACK_FILES = ("__init__.py", "base.py", "README.md")


def pack_source() -> str:
    """This module's source with relative imports made absolute, so a copy imports from anywhere."""
    source = Path(__file__).read_text(encoding="utf-8")

    def absolute(m: re.Match[str]) -> str:
        module = f"{_PACKAGE}.{m.group(2)}" if m.group(2) else _PACKAGE
        return f"{m.group(1)}from {module} import "

    out = _RELATIVE_IMPORT.sub(absolute, source)
    tree = ast.parse(out)  # a rewrite we missed would fail at import time in the user's copy; fail here instead
    if any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree)):
        raise TuningError("pack source still has relative imports after rewriting; report this as a bug")
    return out


def write_pack_source(dest: str | Path, overwrite: bool = False) -> Path:
    """Write an editable copy of the pack into `dest` (``__init__.py``, ``base.py``, ``README.md``).

    The copy imports the rest of this package absolutely, so only the pack itself is yours
    to change. An existing non-empty folder is refused unless `overwrite`; even then only
    the three files above are replaced, nothing else in the folder is touched.
    """
    dest = Path(dest).expanduser()
    if dest.exists() and not dest.is_dir():
        raise TuningError(f"{dest} is a file; pass a folder for the pack source")
    if dest.is_dir() and any(dest.iterdir()) and not overwrite:
        raise TuningError(f"{dest} exists and is not empty; pick a new folder or pass overwrite=True (--overwrite)")
    dest.mkdir(parents=True, exist_ok=True)
    name = FinetunedLanceDBRetrieverPack.__name__
    files = {
        "base.py": pack_source(),
        "__init__.py": f'"""Editable copy of {name}; the pack lives in base.py."""\n\nfrom .base import {name}, write_pack_source\n\n__all__ = ["{name}", "write_pack_source"]\n',
        "README.md": (
            f"# {name} (editable copy)\n\n"
            f"Written by `lancedb-tune download-pack` from {_PACKAGE}. Edit `base.py` freely; it imports the\n"
            f"index, rerankers and data helpers from the installed `{_PACKAGE}` package.\n\n"
            "```python\n"
            f"from {dest.name if dest.name.isidentifier() else 'my_pack'} import {name}\n\n"
            f'pack = {name}(documents=docs, embed_model="path/to/tuned-model", uri="./lancedb")\n'
            'nodes = pack.run("what changed in 2021?")\n'
            "```\n"
        ),
    }
    for filename in _PACK_FILES:
        (dest / filename).write_text(files[filename], encoding="utf-8")
    return dest
