"""The tuning recipe, one for `lancedb-tune run` and for the pack: fit the model, make the
candidate index, and let the gate decide on it.

Each rule is stated here once. The mode decides what learns: `full` tunes both sides (the caller
re-embeds the corpus with the result), `query` freezes the passages at the serving table's stored
vectors and tunes a query encoder only, `adapter` keeps the table's embedding as it is and trains a
small map on its query vectors against the same stored vectors (`training.adapter`). A tuned model
queries in the runtime the searched table records for its vectors (`table_backend`). The gate scores one query type, the one that answers
the users (`query_type`), on queries the model never trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import SERVING_QUERY_TYPE, FinetuneConfig, QueryType, RerankerSpec, SearchConfig, TuneMode
from ..data.qa_dataset import QADataset
from ..encoding.adapted_embedding import AdaptedEmbedding
from ..encoding.embed_models import load_embed_model
from ..errors import TuningError
from ..evaluation.metrics import EvalResult
from ..evaluation.table_scores import score_index
from ..search.index import LanceDBIndex
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
        mode: `full` (both sides learn), `query` (passages frozen at the stored vectors) or `adapter`
            (the embedding frozen too: a map on its query vectors learns).
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
                for `adapter`, its document encoder is the embedding adapted.
            resume: continue from the checkpoints a killed fit left.
            adaptation: label-free pairs from the scored corpus, trained on beside `train`.
        """
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
    ) -> list[EvalResult]:
        """The query types of `index` on `queries`, each row labelled `label`."""
        return score_index(index, label, queries, self.search, {} if timings is None else timings, query_types, self.reranker)

    def gate(self) -> Gate:
        """The do-no-harm gate: both models' `query_type` rows at `search.k` on the gate's queries, compared on `search.gate_metric`."""
        return Gate(
            lambda index, queries: self.scores(index, "gate", queries, query_types=[self.query_type])[0],
            self.search.k,
            self.search.gate_metric,
        )
