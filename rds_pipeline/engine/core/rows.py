"""Rows a query always returns (an aggregate, a setting, ``RETURNING`` of one row), typed as such."""

from __future__ import annotations

from typing import Any


def one(row: tuple[Any, ...] | None) -> tuple[Any, ...]:
    """``row``, which the query always returns: ``cursor.fetchone()`` is typed as maybe ``None``."""
    if row is None:
        raise LookupError("the query returned no row where it always returns one")
    return row
