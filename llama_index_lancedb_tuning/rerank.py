"""Rerankers: LanceDB's fusion rerankers for hybrid search, LlamaIndex node postprocessors for the rest.

`reranked_*` query types take any LlamaIndex node postprocessor: Cohere's hosted reranker
(as in the reference), a local cross-encoder, or `FusionRerank`, the offline default.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from lancedb.rerankers import LinearCombinationReranker, RRFReranker
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle

from .errors import TuningError
from .encoding import embed_queries, embed_texts
from .store import fts_ids, sql_id_list

logger = logging.getLogger(__name__)

DEFAULT_RERANKER = "fusion"
COHERE_MODEL = "rerank-english-v3.0"
# RRF's constant: LanceDB's default is 60. Over the deeper legs a hybrid search fuses here
# (index.HYBRID_OVERFETCH), a small constant lets the top ranks of each leg count for more;
# 5 beat 10 and 60 on validation queries for the base and the tuned model (BENCHMARKS.md).
DEFAULT_RRF_K = 5

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

    def rerank(self, nodes: list[NodeWithScore], query_bundle: QueryBundle, bm25: BM25Lookup | None = None) -> list[NodeWithScore]:
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


# --- Cohere -----------------------------------------------------------------------------
# CohereRerank builds `cohere.ClientV2(api_key, base_url)` with the SDK's defaults: a 300 s
# read timeout, the SDK's own retries (which sleep as long as a Retry-After header asks, up to
# 60 s each) and, around them, tenacity retries with 4-10 s waits. One slow or rate-limited
# call could stall a query for many minutes. We swap in a client whose every call carries a
# timeout and a small retry budget with capped backoff, and turn failures into TuningError
# messages that never include the API key.

COHERE_TIMEOUT_S = 30.0
COHERE_MAX_RETRIES = 2
COHERE_BACKOFF_S = 1.0
_COHERE_MAX_BACKOFF_S = 8.0
_RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class _BoundedCohereClient:
    """Stands in for `cohere.ClientV2` inside `CohereRerank`: bounded time, clear errors."""

    def __init__(self, client: Any, api_key: str, base_url: str | None, timeout: float, max_retries: int, backoff: float) -> None:
        self._client = client
        self._secret = api_key
        self.base_url = base_url
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff

    def _redact(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    def _wait(self, attempt: int, headers: Any) -> None:
        delay = self.backoff * 2**attempt
        retry_after = headers.get("retry-after") if headers else None
        if retry_after is not None:
            try:
                delay = max(delay, float(retry_after))
            except ValueError:
                pass  # an HTTP date: keep our own backoff
        time.sleep(min(delay, _COHERE_MAX_BACKOFF_S))

    def rerank(self, **kwargs: Any) -> Any:
        import httpx
        from cohere.core.api_error import ApiError

        where = self.base_url or "api.cohere.com"
        options = {"timeout_in_seconds": self.timeout, "max_retries": 0}  # retries are ours, with capped waits
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                return self._client.rerank(**kwargs, request_options=options)
            except ApiError as exc:
                status = exc.status_code
                if status in _RETRYABLE_STATUS and not last:
                    logger.warning("Cohere rerank answered HTTP %s; retry %d of %d", status, attempt + 1, self.max_retries)
                    self._wait(attempt, exc.headers)
                    continue
                detail = self._redact(json.dumps(exc.body, default=str) if not isinstance(exc.body, str) else exc.body)[:200]
                hint = {
                    401: "check COHERE_API_KEY",
                    403: "check COHERE_API_KEY and the model's access",
                    429: "rate limited; wait, lower the request rate, or use --reranker fusion",
                }.get(status or 0, "try again later, or use --reranker fusion offline" if (status or 0) >= 500 else "check the model name and request")
                tries = f" after {attempt + 1} attempts" if attempt else ""
                raise TuningError(f"Cohere rerank at {where} failed with HTTP {status}{tries}: {detail}; {hint}") from None
            except httpx.TimeoutException:
                raise TuningError(
                    f"Cohere rerank at {where} timed out after {self.timeout:g}s; retry later, raise the timeout, or use --reranker fusion"
                ) from None
            except httpx.TransportError as exc:
                if not last:
                    self._wait(attempt, None)
                    continue
                raise TuningError(
                    f"cannot reach Cohere at {where} ({type(exc).__name__}) after {attempt + 1} attempts; check CO_API_URL and the network"
                ) from None
            except Exception as exc:  # a malformed reply or an SDK error type we did not foresee
                raise TuningError(f"Cohere rerank at {where} failed: {type(exc).__name__}: {self._redact(str(exc))[:200]}") from None
        raise AssertionError("unreachable")


def cohere_reranker(
    top_n: int = 5,
    model: str = COHERE_MODEL,
    api_key: str | None = None,
    base_url: str | None = None,
    timeout: float = COHERE_TIMEOUT_S,
    max_retries: int = COHERE_MAX_RETRIES,
    backoff: float = COHERE_BACKOFF_S,
) -> BaseNodePostprocessor:
    """LlamaIndex's `CohereRerank` on the real `cohere` SDK, with a bounded timeout and retry budget.

    The key comes from `api_key`, else COHERE_API_KEY (or CO_API_KEY); the endpoint from
    `base_url`, else CO_API_URL, else Cohere's. Worst case a call takes about
    `(max_retries + 1) * timeout` plus at most 8 s of backoff per retry.
    """
    try:
        from cohere import ClientV2
        from llama_index.postprocessor.cohere_rerank import CohereRerank
    except ImportError:
        raise TuningError("the cohere reranker needs `pip install llama-index-postprocessor-cohere-rerank`") from None

    key = api_key or os.environ.get("COHERE_API_KEY") or os.environ.get("CO_API_KEY")
    if not key:
        raise TuningError("the cohere reranker needs an API key; set COHERE_API_KEY, or use --reranker fusion offline")
    if timeout <= 0 or max_retries < 0:
        raise TuningError(f"cohere reranker needs timeout > 0 and max_retries >= 0, got {timeout} and {max_retries}")
    url = base_url or os.environ.get("CO_API_URL") or None
    # max_retries=1: one tenacity attempt; the bounded client does the retrying.
    reranker = CohereRerank(top_n=top_n, model=model, api_key=key, base_url=url, max_retries=1)
    client = ClientV2(api_key=key, base_url=url, timeout=timeout)
    reranker._client = _BoundedCohereClient(client, key, url, timeout, max_retries, backoff)
    return reranker


def node_reranker(spec: str | BaseNodePostprocessor | None, top_n: int, embed_model: BaseEmbedding, table: Any = None) -> BaseNodePostprocessor:
    """A node postprocessor from a spec: `fusion`, `cohere[:MODEL]`, `cross-encoder:PATH`, or one given as is."""
    if isinstance(spec, BaseNodePostprocessor):
        return spec
    spec = spec or DEFAULT_RERANKER
    name, _, arg = spec.partition(":")
    if name == "fusion":
        return FusionRerank(embed_model, table, top_n=top_n)
    if name == "cohere":
        return cohere_reranker(top_n, arg or COHERE_MODEL)
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
