"""The one error type for user mistakes: the CLI prints its message as one line."""

from __future__ import annotations


class TuningError(Exception):
    """A problem the user can fix; the message says what is wrong and how to fix it."""
