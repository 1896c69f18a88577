"""When to try a remote call again, and how long to wait: one policy on tenacity for every client.

Errors fall in three kinds: transient (HTTP 408/409/429/5xx, timeouts, dropped connections)
are retried with jittered, capped exponential backoff that honours a server's Retry-After;
fatal (401/403/404) mean every later call would fail the same way; anything else fails once.
LanceDB commit conflicts have their own small policy (`retry_commit_conflicts`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any, TypeVar

from tenacity import AsyncRetrying, RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential
from tenacity.wait import wait_base

from ..errors import TuningError

T = TypeVar("T")

RETRY_AFTER_CAP_S = 60.0
_TRANSIENT_STATUS = frozenset({408, 409, 429})
_FATAL_STATUS = frozenset({401, 403, 404})


def status_code(exc: BaseException) -> int | None:
    """The HTTP status an SDK error carries, on itself (cohere, openai) or on its response (httpx)."""
    code = getattr(exc, "status_code", None)
    if code is None:
        code = getattr(getattr(exc, "response", None), "status_code", None)
    return code if isinstance(code, int) else None


def is_fatal(exc: BaseException) -> bool:
    """Bad key, no access or unknown model: every later call would fail the same way."""
    return status_code(exc) in _FATAL_STATUS


def is_transient(exc: BaseException) -> bool:
    """Rate limits, server errors, timeouts and dropped connections: worth another try."""
    code = status_code(exc)
    if code is not None:
        return code in _TRANSIENT_STATUS or code >= 500
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    # Clients wrap transport failures in their own classes (openai.APITimeoutError,
    # httpx.ConnectError, ...); matching by name covers any LlamaIndex LLM or SDK.
    names = {cls.__name__ for cls in type(exc).__mro__}
    return any("Timeout" in n or "Connection" in n or "Transport" in n for n in names)


def is_timeout(exc: BaseException) -> bool:
    """A call that got no answer in time, as opposed to a refused or dropped one."""
    return isinstance(exc, TimeoutError) or any("Timeout" in cls.__name__ for cls in type(exc).__mro__)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header value; None when absent, negative, or an HTTP date."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return None  # an HTTP date: the backoff alone decides
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def retry_after(exc: BaseException) -> float | None:
    """The Retry-After seconds an SDK error's response asked for, if any."""
    headers = getattr(exc, "headers", None)
    if headers is None:
        headers = getattr(getattr(exc, "response", None), "headers", None)
    if not headers:
        return None
    # cohere hands over a plain dict (case kept as sent); httpx.Headers matches any case.
    value = headers.get("retry-after")
    if value is None:
        value = next((v for k, v in headers.items() if str(k).lower() == "retry-after"), None)
    return parse_retry_after(value)


class wait_backoff_or_retry_after(wait_base):
    """Full-jitter exponential backoff, `uniform(0, min(max_delay, base_delay * 2**n))`, stretched
    to a server's Retry-After up to `retry_after_cap`. Jitter keeps concurrent workers from
    retrying in lockstep; the cap keeps one hostile header from stalling a run."""

    def __init__(self, base_delay: float, max_delay: float, retry_after_cap: float = RETRY_AFTER_CAP_S) -> None:
        self.backoff = wait_random_exponential(multiplier=base_delay, max=max_delay)
        self.retry_after_cap = retry_after_cap

    def __call__(self, retry_state: RetryCallState) -> float:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        asked = retry_after(exc) if exc is not None else None
        return max(self.backoff(retry_state), min(asked or 0.0, self.retry_after_cap))


def _policy(
    attempts: int,
    base_delay: float,
    max_delay: float,
    retry_after_cap: float,
    retry: Callable[[BaseException], bool],
    before_sleep: Callable[[RetryCallState], Any] | None,
) -> dict[str, Any]:
    return {
        "stop": stop_after_attempt(attempts),
        "wait": wait_backoff_or_retry_after(base_delay, max_delay, retry_after_cap),
        "retry": retry_if_exception(retry),
        "before_sleep": before_sleep,
        "reraise": True,  # callers turn the last real error into their own message
    }


def transient_retries(
    attempts: int,
    base_delay: float,
    max_delay: float,
    retry_after_cap: float = RETRY_AFTER_CAP_S,
    retry: Callable[[BaseException], bool] = is_transient,
    before_sleep: Callable[[RetryCallState], Any] | None = None,
) -> Retrying:
    """A tenacity `Retrying` that calls up to `attempts` times while `retry(error)` holds.

    Args:
        attempts: Calls in all, the first included.
        base_delay: Seconds the backoff starts from; it doubles per retry.
        max_delay: Cap on the backoff between two calls.
        retry_after_cap: Cap on how long a server's Retry-After may stretch a wait.
        retry: Which errors are worth another call; transient ones by default.
        before_sleep: Called before each wait, e.g. to log the retry.
    """
    return Retrying(**_policy(attempts, base_delay, max_delay, retry_after_cap, retry, before_sleep))


def async_transient_retries(
    attempts: int,
    base_delay: float,
    max_delay: float,
    retry_after_cap: float = RETRY_AFTER_CAP_S,
    retry: Callable[[BaseException], bool] = is_transient,
    before_sleep: Callable[[RetryCallState], Any] | None = None,
) -> AsyncRetrying:
    """`transient_retries` for coroutines: waits with `asyncio.sleep`, so other calls go on meanwhile."""
    return AsyncRetrying(**_policy(attempts, base_delay, max_delay, retry_after_cap, retry, before_sleep))


def _is_commit_conflict(exc: BaseException) -> bool:
    return "conflict" in str(exc).lower()


def _commit_backoff(retry_state: RetryCallState) -> float:
    return random.uniform(0.05, 0.1) * 2 ** (retry_state.attempt_number - 1)


def retry_commit_conflicts(commit: Callable[[], T], refresh: Callable[[], object], table_name: str, attempts: int = 6) -> T:
    """Run one LanceDB commit, retrying (bounded, jittered) when a concurrent writer preempted it.

    Lance refuses a commit that conflicts with one made meanwhile, e.g. two processes
    rebuilding the full-text index; a refused commit changed nothing, so retrying on the
    latest version is safe. Any other error is raised as it is.

    Args:
        commit: The write, e.g. `partial(table.add, rows)`.
        refresh: Called before each retry; `table.checkout_latest`, since the handle still points
            at the version the other writer replaced.
        table_name: Named in the error after the last conflict.
        attempts: Commits tried in all.
    """

    def give_up(retry_state: RetryCallState) -> T:
        raise TuningError(
            f"table '{table_name}' kept changing under concurrent writers ({attempts} commit conflicts); rerun, "
            "or write from one process at a time"
        ) from None

    def refresh_before_retry(retry_state: RetryCallState) -> None:
        refresh()

    retrying = Retrying(
        stop=stop_after_attempt(attempts),
        wait=_commit_backoff,
        retry=retry_if_exception(_is_commit_conflict),
        before_sleep=refresh_before_retry,
        retry_error_callback=give_up,
    )
    return retrying(commit)
