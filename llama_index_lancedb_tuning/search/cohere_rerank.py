"""Cohere's hosted reranker as a LlamaIndex node postprocessor, with bounded time and clear errors.

CohereRerank builds `cohere.ClientV2(api_key, base_url)` with the SDK's defaults: a 300 s
read timeout, the SDK's own retries (which sleep as long as a Retry-After header asks, up to
60 s each) and, around them, tenacity retries with 4-10 s waits. One slow or rate-limited
call could stall a query for many minutes. We swap in a client whose every call carries a
timeout and a small retry budget with capped backoff (`retries`), and turn failures into
TuningError messages that never include the API key.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

from llama_index.core.postprocessor.types import BaseNodePostprocessor
from tenacity import RetryCallState

from ..common.llama_index_internals import replace_cohere_client
from ..common.redaction import redact
from ..common.retries import is_timeout, is_transient, status_code, transient_retries
from ..config import COHERE_MODEL
from ..errors import TuningError

logger = logging.getLogger(__name__)

COHERE_TIMEOUT_S = 30.0
COHERE_MAX_RETRIES = 2
COHERE_BACKOFF_S = 1.0
_COHERE_MAX_BACKOFF_S = 8.0


def _worth_retrying(exc: BaseException) -> bool:
    # A timed-out call already cost a whole timeout: a query waiting in a user's app fails fast instead.
    return is_transient(exc) and not is_timeout(exc)


def _log_retry(retry_state: RetryCallState) -> None:
    exc = retry_state.outcome.exception() if retry_state.outcome else None
    logger.debug("Cohere rerank failed (%s); retry %d", type(exc).__name__, retry_state.attempt_number)


class _BoundedCohereClient:
    """Stands in for `cohere.ClientV2` inside `CohereRerank`: bounded time, clear errors."""

    def __init__(self, client: Any, api_key: str, base_url: str | None, timeout: float, max_retries: int, backoff: float) -> None:
        self._client = client
        self._secret = api_key
        self.base_url = base_url
        self.timeout = timeout
        self.max_retries = max_retries
        self.backoff = backoff

    def rerank(self, **kwargs: Any) -> Any:
        import httpx
        from cohere.core.api_error import ApiError

        where = self.base_url or "api.cohere.com"
        options = {"timeout_in_seconds": self.timeout, "max_retries": 0}  # retries are ours, with capped waits
        retrying = transient_retries(
            self.max_retries + 1, self.backoff, _COHERE_MAX_BACKOFF_S, _COHERE_MAX_BACKOFF_S, _worth_retrying, _log_retry
        )
        try:
            return retrying(self._client.rerank, **kwargs, request_options=options)
        except ApiError as exc:
            attempts = retrying.statistics.get("attempt_number", 1)
            status = status_code(exc) or 0
            body = exc.body if isinstance(exc.body, str) else json.dumps(exc.body, default=str)
            detail = redact(body, [self._secret])[:200]
            hint = {
                401: "check COHERE_API_KEY",
                403: "check COHERE_API_KEY and the model's access",
                429: "rate limited; wait, lower the request rate, or use --reranker fusion",
            }.get(
                status,
                "try again later, or use --reranker fusion offline" if status >= 500 else "check the model name and request",
            )
            tries = f" after {attempts} attempts" if attempts > 1 else ""
            raise TuningError(f"Cohere rerank at {where} failed with HTTP {exc.status_code}{tries}: {detail}; {hint}") from None
        except httpx.TimeoutException:
            raise TuningError(
                f"Cohere rerank at {where} timed out after {self.timeout:g}s; retry later, raise the timeout, "
                "or use --reranker fusion"
            ) from None
        except httpx.TransportError as exc:
            raise TuningError(
                f"cannot reach Cohere at {where} ({type(exc).__name__}) after {retrying.statistics.get('attempt_number', 1)} "
                "attempts; check CO_API_URL and the network"
            ) from None
        except Exception as exc:  # a malformed reply or an SDK error type we did not foresee
            raise TuningError(
                f"Cohere rerank at {where} failed: {type(exc).__name__}: {redact(str(exc), [self._secret])[:200]}"
            ) from None


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

    Worst case a call takes about `(max_retries + 1) * timeout` plus at most 8 s of backoff per
    retry; a timed-out call is not retried.

    Args:
        top_n: Nodes to keep.
        model: Cohere rerank model name.
        api_key: The key; else COHERE_API_KEY, else CO_API_KEY.
        base_url: The endpoint; else CO_API_URL, else Cohere's.
        timeout: Seconds one call may take.
        max_retries: Retries after a rate limit, server error or dropped connection.
        backoff: Seconds the jittered backoff starts from.
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
    # max_retries=1: one tenacity attempt inside CohereRerank; the bounded client does the retrying.
    reranker = CohereRerank(top_n=top_n, model=model, api_key=key, base_url=url, max_retries=1)
    client = ClientV2(api_key=key, base_url=url, timeout=timeout)
    replace_cohere_client(reranker, _BoundedCohereClient(client, key, url, timeout, max_retries, backoff))
    return reranker
