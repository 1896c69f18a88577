"""Rerankers: LanceDB's fusion rerankers for hybrid search, LlamaIndex node postprocessors for the rest.

`reranked_*` query types take any LlamaIndex node postprocessor: Cohere's hosted reranker
(as in the reference), a local cross-encoder, or `FusionRerank`, the offline default.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from lancedb.rerankers import LinearCombinationReranker, RRFReranker
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from ..config import DEFAULT_RRF_K, RerankerSpec
from ..encoding.embed_models import embed_queries, embed_texts
from ..errors import TuningError
from ..store.table import fts_ids, sql_id_list

logger = logging.getLogger(__name__)

# BM25 scores of rows (by id) for a query, or None where the lookup does not know them.
BM25Lookup = Callable[[str, Sequence[str]], "dict[str, float] | None"]


def hybrid_reranker(kind: str = "rrf", rrf_k: int = DEFAULT_RRF_K, vector_weight: float = 0.7) -> Any:
    """LanceDB's own fusion of the vector and full-text lists for hybrid search."""
    if kind == "rrf":
        return RRFReranker(K=rrf_k)
    if kind == "linear":
        return LinearCombinationReranker(weight=vector_weight)
    raise TuningError(f"unknown hybrid fusion '{kind}'; use rrf or linear")


class FusionRerank(BaseNodePostprocessor):
    """Rerank candidates by dense similarity plus scaled BM25 evidence:
    `cosine + lexical_weight * bm25 / max(bm25 over the candidates)`.

    Both signals are recomputed for every candidate, so the same reranker serves vector
    candidates (adds lexical evidence) and full-text candidates (adds the tuned model's
    judgement). BM25 comes from the LanceDB full-text index over the whole corpus,
    restricted to the candidates, so term weights are corpus-level. No cross-encoder is
    used: none trained on this little data helped (a MiniLM cross-encoder trained on 880
    pairs cut the tuned top-5 from 0.85 to 0.67); this linear fusion, with its weight picked
    on validation queries of data_qa.csv, never fell below plain vector search there.
    """

    top_n: int = Field(default=5, description="Nodes to keep.")
    lexical_weight: float = Field(default=0.5, description="Weight of the max-normalised BM25 score added to the cosine.")
    _embed_model: BaseEmbedding = PrivateAttr()
    _table: Any = PrivateAttr(default=None)

    def __init__(self, embed_model: BaseEmbedding, table: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._embed_model = embed_model
        self._table = table

    @classmethod
    def class_name(cls) -> str:
        return "FusionRerank"

    def _lexical_scores(self, query: str, nodes: list[NodeWithScore]) -> dict[str, float]:
        """BM25 of the candidates from the table's full-text index, restricted to them (corpus-level term weights)."""
        if self._table is None:
            return {}
        where = f"id IN ({sql_id_list(n.node.node_id for n in nodes)})"
        return dict(fts_ids(self._table, query, len(nodes), where))

    def _query_vector(self, query: QueryBundle) -> np.ndarray:
        if query.embedding is not None:
            return np.asarray(query.embedding, dtype=np.float32)
        return embed_queries(self._embed_model, [query.query_str])[0]

    def _passage_vectors(self, nodes: list[NodeWithScore]) -> np.ndarray:
        """Stored vectors where the retriever brought them (normalised at ingest), else embedded now."""
        if all(n.node.embedding is not None for n in nodes):
            return np.asarray([n.node.embedding for n in nodes], dtype=np.float32)
        return embed_texts(self._embed_model, [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes])

    def _postprocess_nodes(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        if query_bundle is None:
            raise TuningError("FusionRerank needs the query")
        return self.rerank(nodes, query_bundle)

    def rerank(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle, bm25: BM25Lookup | None = None
    ) -> list[NodeWithScore]:
        """The top `top_n` candidates by fused score.

        Args:
            nodes: the candidates.
            query_bundle: the query (its `embedding`, when set, saves embedding it again).
            bm25: where BM25 scores may already be known (a `SharedSearch` during evaluation);
                the table's full-text index answers what it does not know.
        """
        if not nodes:
            return []
        query = query_bundle.query_str
        dense = self._passage_vectors(nodes) @ self._query_vector(query_bundle)
        known = bm25(query, [n.node.node_id for n in nodes]) if bm25 is not None else None
        lexical = known if known is not None else self._lexical_scores(query, nodes)
        lex = np.array([lexical.get(n.node.node_id, 0.0) for n in nodes])
        fused = dense + self.lexical_weight * lex / max(float(lex.max()), 1e-9)
        order = np.argsort(-fused, kind="stable")[: self.top_n]
        return [NodeWithScore(node=nodes[i].node, score=float(fused[i])) for i in order]


def node_reranker(
    spec: RerankerSpec | str | BaseNodePostprocessor | None, top_n: int, embed_model: BaseEmbedding | None, table: Any = None
) -> BaseNodePostprocessor:
    """A node postprocessor for the reranked query types.

    Args:
        spec: a postprocessor (returned as is), or a `RerankerSpec` / its string: `fusion`,
            `cohere[:MODEL]`, `cross-encoder:PATH`.
        top_n: nodes the reranker keeps.
        embed_model: the query encoder (`fusion` scores candidates with it).
        table: the LanceDB table (`fusion` reads BM25 from its full-text index).
    """
    if isinstance(spec, BaseNodePostprocessor):
        return spec
    parsed = RerankerSpec.parse(spec)
    if parsed.kind == "cohere":
        from .cohere_rerank import cohere_reranker

        return cohere_reranker(top_n, parsed.model) if parsed.model else cohere_reranker(top_n)
    if parsed.kind == "cross-encoder":
        from llama_index.core.postprocessor import SentenceTransformerRerank

        from ..encoding.model_ids import resolve_cross_encoder, transformers_bars_off

        model = resolve_cross_encoder(parsed.model)
        with transformers_bars_off():
            return SentenceTransformerRerank(model=model, top_n=top_n)
    if embed_model is None:
        raise TuningError("the fusion reranker needs the embedding model")
    return FusionRerank(embed_model, table, top_n=top_n)


def reranker_name(reranker: BaseNodePostprocessor) -> str:
    """The name a report shows for a reranker."""
    model = getattr(reranker, "model", None)
    return f"{reranker.class_name()}({model})" if isinstance(model, str) else reranker.class_name()
