"""Wording helpers for log and error messages."""

from __future__ import annotations


def count_noun(count: int, singular: str, plural: str | None = None) -> str:
    """Write a count with its noun in the right number: "1 shard", "3 shards", "2 classes"."""
    if count == 1:
        return f"{count} {singular}"
    return f"{count} {plural or singular + 's'}"
