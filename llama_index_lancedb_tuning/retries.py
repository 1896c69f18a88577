"""Placeholder until the shared retry module lands (same signature)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

from .errors import TuningError

T = TypeVar("T")


def retry_commit_conflicts(commit: Callable[[], T], refresh: Callable[[], object], table_name: str, attempts: int = 6) -> T:
    for attempt in range(attempts):
        try:
            return commit()
        except Exception as exc:
            if "conflict" not in str(exc).lower():
                raise
            if attempt == attempts - 1:
                raise TuningError(
                    f"table '{table_name}' kept changing under concurrent writers ({attempts} commit conflicts); rerun, "
                    "or write from one process at a time"
                ) from None
            time.sleep(random.uniform(0.05, 0.1) * 2**attempt)
            refresh()
    raise AssertionError("unreachable")
