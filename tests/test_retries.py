"""The one retry policy (retries.py), the commit-conflict policy on a real LanceDB table, and redaction."""

from __future__ import annotations

import io
import logging

import cohere
import httpx
import lance
import lancedb
import openai
import pyarrow as pa
import pytest
from cohere.core.api_error import ApiError
from lancedb.index import FTS

from llama_index_lancedb_tuning.common.redaction import RedactSecrets, redact
from llama_index_lancedb_tuning.common.retries import (
    is_fatal,
    is_timeout,
    is_transient,
    parse_retry_after,
    retry_after,
    retry_commit_conflicts,
    status_code,
    transient_retries,
)
from llama_index_lancedb_tuning.errors import TuningError

REQUEST = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
SECRET = "sk-test-NEVER-PRINT-7f3a9c"


def openai_status_error(cls: type[openai.APIStatusError], status: int, headers: dict[str, str] | None = None) -> Exception:
    return cls("refused", response=httpx.Response(status, request=REQUEST, headers=headers), body=None)


TRANSIENT = {
    "openai 429": openai_status_error(openai.RateLimitError, 429),
    "openai 500": openai_status_error(openai.InternalServerError, 500),
    "openai 409": openai_status_error(openai.ConflictError, 409),
    "openai timeout": openai.APITimeoutError(request=REQUEST),
    "openai connection": openai.APIConnectionError(request=REQUEST),
    "httpx connect": httpx.ConnectError("connection refused", request=REQUEST),
    "httpx read timeout": httpx.ReadTimeout("slow", request=REQUEST),
    "httpx dropped": httpx.RemoteProtocolError("server disconnected", request=REQUEST),
    "httpx 503 status": httpx.HTTPStatusError("busy", request=REQUEST, response=httpx.Response(503, request=REQUEST)),
    "cohere 429": cohere.TooManyRequestsError(body={"message": "slow down"}),
    "cohere 503": cohere.ServiceUnavailableError(body=None),
    "cohere 408": ApiError(status_code=408, body="timeout"),
    "builtin timeout": TimeoutError(),
    "builtin reset": ConnectionResetError(),
}
FATAL = {
    "openai 401": openai_status_error(openai.AuthenticationError, 401),
    "openai 403": openai_status_error(openai.PermissionDeniedError, 403),
    "openai 404": openai_status_error(openai.NotFoundError, 404),
    "cohere 401": cohere.UnauthorizedError(body=None),
    "cohere 404": cohere.NotFoundError(body=None),
}
NEITHER = {
    "openai 400": openai_status_error(openai.BadRequestError, 400),
    "cohere 422": cohere.UnprocessableEntityError(body=None),
    "value error": ValueError("bad reply"),
}


@pytest.mark.parametrize("name", TRANSIENT)
def test_transient_errors_from_real_sdks(name):
    exc = TRANSIENT[name]
    assert is_transient(exc) and not is_fatal(exc)


@pytest.mark.parametrize("name", FATAL)
def test_fatal_errors_from_real_sdks(name):
    exc = FATAL[name]
    assert is_fatal(exc) and not is_transient(exc)


@pytest.mark.parametrize("name", NEITHER)
def test_other_errors_are_neither_retried_nor_fatal(name):
    exc = NEITHER[name]
    assert not is_transient(exc) and not is_fatal(exc)


def test_status_codes_and_timeouts_are_read_from_each_sdk():
    assert status_code(TRANSIENT["openai 429"]) == 429
    assert status_code(TRANSIENT["cohere 503"]) == 503
    assert status_code(TRANSIENT["httpx 503 status"]) == 503
    assert status_code(TRANSIENT["httpx connect"]) is None
    assert is_timeout(TRANSIENT["openai timeout"]) and is_timeout(TRANSIENT["httpx read timeout"]) and is_timeout(TimeoutError())
    assert not is_timeout(TRANSIENT["httpx connect"]) and not is_timeout(TRANSIENT["cohere 429"])


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("3", 3.0),
        ("0.5", 0.5),
        ("0", 0.0),
        (None, None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
        ("-1", None),
        ("nan", None),
        ("inf", None),
    ],
)
def test_retry_after_parsing(value, seconds):
    assert parse_retry_after(value) == seconds


def test_retry_after_is_read_from_openai_and_cohere_errors():
    assert retry_after(openai_status_error(openai.RateLimitError, 429, {"Retry-After": "7"})) == 7.0
    assert retry_after(ApiError(status_code=429, headers={"Retry-After": "2"}, body=None)) == 2.0  # a plain dict, case as sent
    assert retry_after(ApiError(status_code=429, headers={"retry-after": "4"}, body=None)) == 4.0
    assert retry_after(openai_status_error(openai.RateLimitError, 429, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"})) is None
    assert retry_after(TRANSIENT["httpx connect"]) is None


def run_with_sleeps(retrying, errors):
    """Call through `retrying`, raising `errors` in turn; returns (result, the waits it asked for, calls)."""
    sleeps: list[float] = []
    retrying.sleep = sleeps.append
    calls = []

    def call():
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return "ok"

    return retrying(call), sleeps, len(calls)


def test_retry_after_is_honoured_up_to_its_cap():
    asks = [openai_status_error(openai.RateLimitError, 429, {"Retry-After": s}) for s in ("3", "600")]
    result, sleeps, calls = run_with_sleeps(transient_retries(3, base_delay=0.001, max_delay=0.01, retry_after_cap=5.0), asks)
    assert (result, calls) == ("ok", 3)
    assert sleeps[0] == pytest.approx(3.0) and sleeps[1] == pytest.approx(5.0)  # a hostile header cannot stall a run


def test_backoff_is_jittered_exponential_and_capped():
    errors = [openai.APIConnectionError(request=REQUEST)] * 7
    result, sleeps, calls = run_with_sleeps(transient_retries(8, base_delay=1.0, max_delay=4.0), errors)
    assert (result, calls) == ("ok", 8)
    assert all(0 <= s <= min(4.0, 2**i) for i, s in enumerate(sleeps))
    assert len(set(sleeps)) > 1  # jitter: concurrent workers do not retry in lockstep


def test_the_last_error_is_reraised_and_fatal_ones_are_not_retried():
    with pytest.raises(openai.InternalServerError):
        run_with_sleeps(transient_retries(3, 0.001, 0.001), [openai_status_error(openai.InternalServerError, 500)] * 3)
    calls = []

    def refused():
        calls.append(1)
        raise FATAL["openai 401"]

    with pytest.raises(openai.AuthenticationError):
        transient_retries(5, 0.001, 0.001)(refused)
    assert len(calls) == 1


# --- LanceDB commit conflicts ------------------------------------------------------------


@pytest.fixture
def table(tmp_path):
    db = lancedb.connect(tmp_path)
    tbl = db.create_table("docs", pa.table({"id": list(range(20)), "text": [f"note {i} about glaciers" for i in range(20)]}))
    tbl.create_index("text", config=FTS(), replace=True)
    return tbl


class StaleWriter:
    """A second writer whose handle lags behind: its index rebuild conflicts with any made meanwhile.

    `commit` rebuilds the full-text index through Lance on the handle it holds; `refresh` reopens
    the latest version, as `table.checkout_latest` does for a LanceDB table.
    """

    def __init__(self, table, conflicts: int) -> None:
        self.table = table
        self.dataset = lance.dataset(table.uri)
        self.conflicts_left = conflicts
        self.commits = 0
        self.refreshes = 0

    def commit(self):
        self.commits += 1
        if self.conflicts_left:
            self.conflicts_left -= 1
            self.table.create_index("text", config=FTS(), replace=True)  # the other writer commits first
        self.dataset.create_scalar_index("text", "INVERTED", replace=True)
        return self.dataset.version

    def refresh(self):
        self.refreshes += 1
        self.dataset = lance.dataset(self.table.uri)


def test_a_real_commit_conflict_is_what_the_policy_retries(table):
    writer = StaleWriter(table, conflicts=1)
    with pytest.raises(Exception, match="(?i)commit conflict"):
        writer.commit()


def test_commit_conflicts_are_retried_on_the_latest_version_then_succeed(table):
    writer = StaleWriter(table, conflicts=2)
    version = retry_commit_conflicts(writer.commit, writer.refresh, "docs")
    assert (writer.commits, writer.refreshes) == (3, 2)
    assert version == lance.dataset(table.uri).version  # the retry committed on top of the other writer's versions
    table.checkout_latest()
    assert len(table.search("glaciers", query_type="fts").limit(5).to_list()) == 5


def test_endless_conflicts_end_in_one_clear_line(table):
    writer = StaleWriter(table, conflicts=99)
    with pytest.raises(TuningError) as err:
        retry_commit_conflicts(writer.commit, writer.refresh, "docs", attempts=3)
    assert str(err.value) == (
        "table 'docs' kept changing under concurrent writers (3 commit conflicts); rerun, or write from one process at a time"
    )
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert (writer.commits, writer.refreshes) == (3, 2)


def test_other_commit_errors_are_raised_at_once(table):
    refreshes = []

    def bad_commit():
        return lance.dataset(table.uri).create_scalar_index("no_such_column", "INVERTED")

    with pytest.raises(Exception) as err:
        retry_commit_conflicts(bad_commit, lambda: refreshes.append(1), "docs")
    assert "conflict" not in str(err.value).lower() and not isinstance(err.value, TuningError)
    assert refreshes == []


# --- redaction ---------------------------------------------------------------------------


def test_redact_replaces_environment_keys_and_passed_ones(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("COHERE_API_KEY", "short")  # placeholders this short are left alone
    monkeypatch.delenv("CO_API_KEY", raising=False)
    text = f"401: Incorrect API key provided: {SECRET}; also co-key-123456789 and a short word"
    assert redact(text) == "401: Incorrect API key provided: <OPENAI_API_KEY>; also co-key-123456789 and a short word"
    assert redact(text, ["co-key-123456789", None, ""]) == (
        "401: Incorrect API key provided: <OPENAI_API_KEY>; also *** and a short word"
    )


def test_the_log_filter_redacts_formatted_records(monkeypatch):
    monkeypatch.setenv("CO_API_KEY", SECRET)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactSecrets())
    log = logging.getLogger("test_retries.redaction")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("server said %s for %s", f"bad key {SECRET}", "rerank")
        log.warning("nothing secret here: %d", 3)
    finally:
        log.removeHandler(handler)
    assert stream.getvalue().splitlines() == ["server said bad key <CO_API_KEY> for rerank", "nothing secret here: 3"]


def test_a_passed_key_that_is_also_in_the_environment_is_named(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    assert redact(f"bad key {SECRET}", [SECRET]) == "bad key <OPENAI_API_KEY>"
