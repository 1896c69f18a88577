"""Rerankers: LanceDB's fusion rerankers for hybrid search, LlamaIndex node postprocessors for the rest.

`reranked_*` query types take any LlamaIndex node postprocessor: Cohere's hosted reranker
(as in the reference), a local cross-encoder, or `FusionRerank`, the offline default.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from lancedb.rerankers import LinearCombinationReranker, RRFReranker
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from .errors import TuningError
from .index import embed_queries, embed_texts

DEFAULT_RERANKER = "fusion"
COHERE_MODEL = "rerank-english-v3.0"


def hybrid_reranker(kind: str = "rrf", rrf_k: int = 60, vector_weight: float = 0.7) -> Any:
    """LanceDB's own fusion of the vector and full-text lists for hybrid search."""
    if kind == "rrf":
        return RRFReranker(K=rrf_k)
    if kind == "linear":
        return LinearCombinationReranker(weight=vector_weight)
    raise TuningError(f"unknown hybrid fusion '{kind}'; use rrf or linear")


class FusionRerank(BaseNodePostprocessor):
    """Rerank candidates by fusing dense similarity with BM25 evidence (weighted reciprocal rank fusion).

    Both signals are recomputed for every candidate, so the same reranker serves vector
    candidates (adds lexical evidence) and full-text candidates (adds the tuned model's
    judgement). BM25 comes from the LanceDB full-text index over the whole corpus,
    restricted to the candidates, so term weights are corpus-level, not candidate-level.
    No cross-encoder is used because none trained on this little data helped (see BENCHMARKS.md).
    """

    top_n: int = Field(default=5, description="Nodes to keep.")
    dense_weight: float = Field(default=0.7, description="Weight of the dense rank; the lexical rank gets the rest.")
    rrf_k: int = Field(default=60, description="Reciprocal-rank-fusion constant.")
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
        if self._table is None:
            return {}
        ids = ", ".join("'" + n.node.node_id.replace("'", "''") + "'" for n in nodes)
        try:
            rows = (
                self._table.search(query, query_type="fts", fts_columns="text")
                .where(f"id IN ({ids})", prefilter=True)
                .select(["id", "_score"])
                .limit(len(nodes))
                .to_list()
            )
        except Warning:
            return {}
        return {r["id"]: float(r["_score"]) for r in rows}

    def _postprocess_nodes(self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None) -> list[NodeWithScore]:
        if query_bundle is None:
            raise TuningError("FusionRerank needs the query")
        if not nodes:
            return []
        query = query_bundle.query_str
        dense = embed_texts(self._embed_model, [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]) @ embed_queries(self._embed_model, [query])[0]
        lexical = self._lexical_scores(query, nodes)
        lex = np.array([lexical.get(n.node.node_id, 0.0) for n in nodes])
        dense_rank = np.argsort(np.argsort(-dense, kind="stable"), kind="stable")
        lex_rank = np.argsort(np.argsort(-lex, kind="stable"), kind="stable")
        fused = self.dense_weight / (self.rrf_k + dense_rank + 1) + (1 - self.dense_weight) / (self.rrf_k + lex_rank + 1)
        order = np.argsort(-fused, kind="stable")[: self.top_n]
        return [NodeWithScore(node=nodes[i].node, score=float(fused[i])) for i in order]


def node_reranker(spec: str | BaseNodePostprocessor | None, top_n: int, embed_model: BaseEmbedding, table: Any = None) -> BaseNodePostprocessor:
    """A node postprocessor from a spec: `fusion`, `cohere[:MODEL]`, `cross-encoder:PATH`, or one given as is."""
    if isinstance(spec, BaseNodePostprocessor):
        return spec
    spec = spec or DEFAULT_RERANKER
    name, _, arg = spec.partition(":")
    if name == "fusion":
        return FusionRerank(embed_model, table, top_n=top_n)
    if name == "cohere":
        from llama_index.postprocessor.cohere_rerank import CohereRerank

        key = os.environ.get("COHERE_API_KEY") or os.environ.get("CO_API_KEY")
        if not key:
            raise TuningError("the cohere reranker needs an API key; set COHERE_API_KEY, or use --reranker fusion offline")
        return CohereRerank(top_n=top_n, model=arg or COHERE_MODEL, api_key=key, base_url=os.environ.get("CO_API_URL"), max_retries=3)
    if name == "cross-encoder":
        if not arg:
            raise TuningError("cross-encoder reranker needs a model: --reranker cross-encoder:PATH_OR_ID")
        from llama_index.core.postprocessor import SentenceTransformerRerank

        from .models import resolve_model

        return SentenceTransformerRerank(model=resolve_model(arg), top_n=top_n)
    raise TuningError(f"unknown reranker '{spec}'; use fusion, cohere[:MODEL] or cross-encoder:PATH")


def reranker_name(reranker: BaseNodePostprocessor) -> str:
    """The name a report shows for a reranker."""
    model = getattr(reranker, "model", None)
    return f"{reranker.class_name()}({model})" if isinstance(model, str) else reranker.class_name()
