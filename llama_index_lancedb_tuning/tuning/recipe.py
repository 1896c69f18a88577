"""The tuning recipe, one for `lancedb-tune run` and for the pack: fit the model, make the
candidate index, and let the gate decide on it.

Each rule is stated here once. The mode decides what learns: `full` tunes both sides (the caller
re-embeds the corpus with the result), `query` freezes the passages at the serving table's stored
vectors and tunes a query encoder only, `adapter` keeps the table's embedding as it is and trains a
small map on its query vectors against the same stored vectors (`training.adapter`), `reranker`
trains a cross-encoder on hard negatives the serving table gives and leaves its encoders alone. A
tuned model queries in the runtime the searched table records for its vectors (`table_backend`).
The gate scores one query type, the one that answers the users (`query_type`; for a reranker, the
reranked type it reorders), on queries the model never trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import SERVING_QUERY_TYPE, FinetuneConfig, QueryType, RerankerSpec, SearchConfig, TuneMode
from ..data.qa_dataset import QADataset
from ..encoding.adapted_embedding import AdaptedEmbedding
from ..encoding.embed_models import embed_queries, load_embed_model
from ..errors import TuningError
from ..evaluation.metrics import EvalResult
from ..evaluation.table_scores import score_index
from ..search.index import LanceDBIndex
from ..search.retrievers import LanceDBRetriever
from ..store.encoder_record import table_backend
from ..store.table import table_nodes
from .gate import Gate

if TYPE_CHECKING:
    import lancedb
    from llama_index.core.base.embeddings.base import BaseEmbedding
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import BaseNode

    from ..training.finetuner import FinetuneResult


@dataclass(frozen=True)
class TuningRecipe:
    """How a model is tuned and judged.

    Args:
        mode: `full` (both sides learn), `query` (passages frozen at the stored vectors), `adapter`
            (the embedding frozen too: a map on its query vectors learns) or `reranker` (a cross-encoder learns).
        finetune: the fine-tuning settings; the mode sets `freeze_passages`.
        search: how the query types search, and the k they are scored at.
        query_type: the query type that answers the users; the gate decides on it.
        reranker: the postprocessor of the reranked types instead of `search.reranker` (an app's own).
    """

    mode: TuneMode
    finetune: FinetuneConfig
    search: SearchConfig
    query_type: QueryType = SERVING_QUERY_TYPE
    reranker: RerankerSpec | BaseNodePostprocessor | None = None

    @property
    def gate_query_type(self) -> QueryType:
        """The query type the gate decides on: `query_type`; for a reranker, the reranked type it reorders
        (`reranked_vector` when the users' type reranks nothing)."""
        if self.mode != "reranker" or self.query_type.startswith("reranked_"):
            return self.query_type
        return "reranked_vector"

    def fit(
        self,
        train: QADataset,
        output_dir: Path,
        nodes: Sequence[BaseNode] | None,
        serving: LanceDBIndex | None = None,
        resume: bool = False,
        adaptation: Any = None,
    ) -> FinetuneResult:
        """Fine-tune on `train` into `output_dir`.

        Args:
            train: labeled queries (the fine-tuner carves its validation queries from them).
            output_dir: where the model (or adapter) and its `metrics.json` go.
            nodes: the training nodes, or None when the pairs already point at passages.
            serving: for `query` and `adapter`, the table whose rows `nodes` are: its stored vectors are
                the frozen passages (None: the base model encodes them, as for nodes of another corpus);
                for `adapter`, its document encoder is the embedding adapted; for `reranker` (required), the
                table whose candidates the cross-encoder learns to reorder.
            resume: continue from the checkpoints a killed fit left.
            adaptation: label-free pairs from the scored corpus, trained on beside `train`.
        """
        if self.mode == "reranker":
            if serving is None:
                raise TuningError("a reranker trains on the candidates of the table it reranks; pass the serving index")
            return self._fit_reranker(train, output_dir, serving, resume)
        from ..training.finetuner import EmbeddingFinetuner  # torch and sentence-transformers: only once tuning starts

        stored = None
        if self.mode != "full" and serving is not None:
            stored = {n.node_id: n.embedding for n in table_nodes(serving.table)}
        if self.mode == "adapter":
            from ..training.adapter import AdapterTrainer

            if adaptation is not None:
                raise TuningError("adaptation pairs need both sides tuned; an adapter learns against a table's own rows")
            base = (
                serving.embed_model
                if serving is not None
                else load_embed_model(self.finetune.base_model, backend=self.search.backend)
            )
            return AdapterTrainer(self.finetune).fit(train, output_dir, nodes, base, stored)  # type: ignore[arg-type]
        trainer = EmbeddingFinetuner(replace(self.finetune, freeze_passages=self.mode == "query"))
        return trainer.fit(train, output_dir, nodes, resume=resume, stored_vectors=stored, adaptation=adaptation)  # type: ignore[arg-type]

    def _fit_reranker(self, train: QADataset, output_dir: Path, serving: LanceDBIndex, resume: bool) -> FinetuneResult:
        """A cross-encoder from the serving one (or the bundled MiniLM), on the candidates the gated type reranks."""
        from ..training.cross_encoder import CrossEncoderFinetuner  # torch and sentence-transformers: only once tuning starts

        depth = self.search.k * self.search.overfetch
        leg = LanceDBRetriever(serving.table, serving.query_model, self.gate_query_type.removeprefix("reranked_"), depth)  # type: ignore[arg-type]
        current = self.search.reranker if self.reranker is None else self.reranker
        serving_model = current.model if isinstance(current, RerankerSpec) and current.kind == "cross-encoder" else None
        trainer = CrossEncoderFinetuner(replace(self.finetune, reranker_model=self.finetune.reranker_model or serving_model))
        return trainer.fit(
            train,
            output_dir,
            table_nodes(serving.table),
            lambda queries: [[hit.node for hit in hits] for hits in leg.retrieve_many(queries)],
            lambda queries: embed_queries(serving.query_model, queries),
            resume=resume,
        )

    @staticmethod
    def trained_reranker(model_dir: str | Path) -> RerankerSpec:
        """The reranker a `reranker` fit saved in `model_dir`, as a spec a table records."""
        return RerankerSpec("cross-encoder", str(Path(model_dir).resolve()))

    def encoder(self, model_dir: str | Path, table: lancedb.table.Table) -> BaseEmbedding:
        """The tuned model in the runtime `table` records for its vectors, so queries meet their own runtime."""
        return load_embed_model(str(Path(model_dir).resolve()), backend=table_backend(table, self.search.backend))

    def query_tuned(self, serving: LanceDBIndex, model_dir: str | Path) -> LanceDBIndex:
        """The serving table's vectors as they are, searched by the tuned query encoder (for `adapter`: the
        serving document encoder with the adapter in `model_dir`)."""
        if self.mode == "adapter":
            return LanceDBIndex(serving.table, serving.embed_model, AdaptedEmbedding.load(model_dir, serving.embed_model))
        return LanceDBIndex(serving.table, serving.embed_model, self.encoder(model_dir, serving.table))

    def scores(
        self,
        index: LanceDBIndex,
        label: str,
        queries: QADataset,
        timings: dict[str, float] | None = None,
        query_types: list[str] | None = None,
        reranker: RerankerSpec | None = None,
    ) -> list[EvalResult]:
        """The query types of `index` on `queries`, each row labelled `label`; the reranked ones by `reranker` when given."""
        postprocessor = self.reranker if reranker is None else reranker
        return score_index(index, label, queries, self.search, {} if timings is None else timings, query_types, postprocessor)

    def reranked_rows(
        self,
        index: LanceDBIndex,
        baseline: list[EvalResult],
        queries: QADataset,
        reranker: RerankerSpec,
        timings: dict[str, float],
    ) -> list[EvalResult]:
        """`baseline`'s rows of `index` with its reranked types reordered by `reranker`, labelled `tuned`; the
        other types search as they did, so their rows are `baseline`'s."""
        types = [row.query_type for row in baseline if row.query_type.startswith("reranked_")]
        rescored = {row.query_type: row for row in self.scores(index, "tuned", queries, timings, types, reranker)}
        return [rescored.get(row.query_type) or replace(row, model="tuned") for row in baseline]

    def gate(self, tuned_reranker: RerankerSpec | None = None) -> Gate:
        """The do-no-harm gate: both models' `gate_query_type` rows at `search.k` on the gate's queries, compared on
        `search.gate_metric`; with `tuned_reranker`, the tuned side is the table reranked by it."""
        types: list[str] = [self.gate_query_type]
        return Gate(
            lambda index, queries: self.scores(index, "gate", queries, query_types=types)[0],
            self.search.k,
            self.search.gate_metric,
            None
            if tuned_reranker is None
            else lambda index, queries: self.scores(index, "gate", queries, None, types, tuned_reranker)[0],
        )
