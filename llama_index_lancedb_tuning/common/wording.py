"""Counts in messages, in correct English: "1 query", "2 queries"."""

from __future__ import annotations


def counted(n: int, noun: str) -> str:
    """`n` and the singular `noun`, made plural when `n` is not 1 (regular English plurals only)."""
    if n == 1:
        return f"1 {noun}"
    if noun.endswith("y") and noun[-2:-1] not in "aeiou":
        return f"{n} {noun[:-1]}ies"
    return f"{n} {noun}s"
