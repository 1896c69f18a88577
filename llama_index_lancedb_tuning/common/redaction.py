"""API keys never reach output: one helper for error messages and one logging filter for log lines."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable

SECRET_ENV = ("OPENAI_API_KEY", "COHERE_API_KEY", "CO_API_KEY")
# Shorter values are placeholders ("x", "test"); replacing them would mangle ordinary words.
_MIN_ENV_SECRET_CHARS = 8


def redact(text: str, extra_secrets: Iterable[str | None] = ()) -> str:
    """`text` with every API key replaced, even when a server quotes the key back in its error.

    Args:
        text: A message, log line or server reply.
        extra_secrets: Keys passed in code rather than through the environment; each becomes `***`.
            Keys in SECRET_ENV variables become `<NAME>`, which tells the user which one to check.
    """
    for name in SECRET_ENV:
        secret = os.environ.get(name, "")
        if len(secret) >= _MIN_ENV_SECRET_CHARS:
            text = text.replace(secret, f"<{name}>")
    for passed in extra_secrets:
        if passed:
            text = text.replace(passed, "***")
    return text


class RedactSecrets(logging.Filter):
    """A handler filter that rewrites any record whose message holds an API key from the environment."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True
