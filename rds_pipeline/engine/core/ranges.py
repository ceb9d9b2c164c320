"""Key ranges and their arithmetic: the windows a table is copied in, how neighbouring windows merge, and which
keys a set of windows covers. Pure: no I/O, no Dagster."""

from __future__ import annotations

import bisect
import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg2 import sql

MAX_HISTORY_CHUNKS = 64  # a history over 29,000 daily windows is still at most this many queries


@dataclass(frozen=True)
class KeyRange:
    """A window of one column: ``lower <= col < upper`` (bounds optional), plus NULLs when asked."""

    column: str | None = None
    lower: Any = None
    upper: Any = None
    upper_inclusive: bool = False
    include_nulls: bool = False
    bytewise: bool = False  # compare as bytes (COLLATE "C"): a text key split the same way on every server

    def predicate(self) -> sql.Composable | None:
        if self.column is None or (self.lower is None and self.upper is None and not self.include_nulls):
            return None
        column: sql.Composable = sql.Identifier(self.column)
        if self.bytewise:
            column = sql.SQL('{} COLLATE "C"').format(column)
        parts: list[sql.Composable] = []
        if self.lower is not None:
            parts.append(sql.SQL("{} >= {}").format(column, sql.Literal(self.lower)))
        if self.upper is not None:
            op = "<=" if self.upper_inclusive else "<"
            parts.append(sql.SQL("{} " + op + " {}").format(column, sql.Literal(self.upper)))
        bounded = sql.SQL(" AND ").join(parts) if parts else sql.SQL("true")
        if self.include_nulls:
            return sql.SQL("(({}) OR {} IS NULL)").format(bounded, column)
        return bounded

    def contains(self, other: KeyRange) -> bool:
        """Whether every key of ``other`` is in this range (NULLs aside), comparing bounds as they are."""
        low = self.lower if self.lower is not None else float("-inf")
        high = self.upper if self.upper is not None else float("inf")
        other_low = other.lower if other.lower is not None else float("-inf")
        other_high = other.upper if other.upper is not None else float("inf")
        return bool(other_low >= low and other_high <= high)

    def describe(self) -> str:
        if self.column is None:
            return "whole table"
        low = "-inf" if self.lower is None else repr(self.lower)
        high = "+inf" if self.upper is None else repr(self.upper)
        return f"{self.column} in [{low}, {high}{']' if self.upper_inclusive else ')'}" + (
            " or NULL" if self.include_nulls else ""
        )


PAGE_COLUMN = "ctid"  # a chunk of pages is a range of the system column ctid (a TID range scan, PostgreSQL 14+)


@dataclass(frozen=True)
class PageSource:
    """What the source says of a table's pages at this sync (``source/pages.py``), for chunks by CTID."""

    pages: int  # pg_relation_size / block_size
    per_chunk: int  # pages holding about ``chunk_rows`` rows (from pg_class.reltuples)
    since: str  # the source snapshot's xmin (64-bit), where a new generation starts


XMIN_SAFE_AGE = 2**31 - 10_000_000  # a bookmark older than this (in transactions) is past what age() can compare


@dataclass(frozen=True)
class XidHorizon:
    """The source's transaction ids at this sync, 64-bit (``txid_current_snapshot()``): everything below
    ``snapshot_xmin`` had ended when it was read, so it is the bookmark an xmin sync leaves; ``next_xid`` is how
    far the counter has gone, to tell how old a bookmark is."""

    snapshot_xmin: str
    next_xid: str


def xmin_wrapped(bookmark: str, horizon: XidHorizon) -> bool:
    """Whether ``bookmark`` is too many transactions old for a 32-bit comparison of ``xmin`` (``age()``)."""
    return int(horizon.next_xid) - int(bookmark) >= XMIN_SAFE_AGE


def page_range(lower: int | None, upper: int | None) -> KeyRange:
    """Pages ``lower`` (inclusive) to ``upper`` (exclusive; None: to the end) as a range of ``ctid``."""
    return KeyRange(
        PAGE_COLUMN,
        lower=None if not lower else f"({lower},0)",
        upper=None if upper is None else f"({upper},0)",
    )


def page_spans(start: int, pages: int, per_chunk: int) -> list[tuple[int, int | None]]:
    """Pages ``start``.. in chunks of ``per_chunk``; the last is open-ended (pages added since they were counted
    are read too), so there is always at least one."""
    per_chunk = max(1, per_chunk)
    spans: list[tuple[int, int | None]] = []
    lower = start
    while lower + per_chunk < pages:
        spans.append((lower, lower + per_chunk))
        lower += per_chunk
    spans.append((lower, None))
    return spans


def coalesced_spans(count: int, limit: int = MAX_HISTORY_CHUNKS) -> list[tuple[int, int]]:
    """``count`` neighbouring windows grouped into at most ``limit`` spans ``(first, last)`` (inclusive indexes),
    equal in size but for the last: a history over 29,000 windows is still at most ``limit`` queries."""
    per = max(1, -(-count // limit))
    return [(start, min(start + per, count) - 1) for start in range(0, count, per)]


def coalesce_chunks(chunks: list[KeyRange], limit: int = MAX_HISTORY_CHUNKS) -> list[KeyRange]:
    """Merge neighbouring chunks so there are at most ``limit``; boundaries stay on partition edges."""
    if len(chunks) <= limit:
        return list(chunks)
    return [
        KeyRange(chunks[a].column, lower=chunks[a].lower, upper=chunks[b].upper, include_nulls=chunks[a].include_nulls)
        for a, b in coalesced_spans(len(chunks), limit)
    ]


def covered_span(starts: Sequence[Any], key_range: KeyRange) -> tuple[int, int]:
    """Which of a table's windows (each starting at ``starts[i]``, in order; None: open below) a copied range
    reached, as ``(first, end)`` indexes: from the window holding the range's start to the one holding its
    end. After a committed copy from the bookmark onwards, each of them holds all its rows. Integer windows
    compare with integer bounds; time windows (aware datetimes) with bounds in PostgreSQL's text."""
    count = len(starts)
    if not count or (key_range.lower is None and key_range.upper is None):
        return 0, count
    timed = any(isinstance(s, dt.datetime) for s in starts)
    low = _bound(key_range.lower, timed)
    high = _bound(key_range.upper, timed)
    known = [s for s in starts if s is not None]
    offset = count - len(known)  # an open first window holds everything below the second one's start
    first, end = 0, count
    if low is not None:
        first = max(0, offset + bisect.bisect_right(known, low) - 1)
    if high is not None:
        end = max(first + 1, offset + bisect.bisect_left(known, high))
    return first, min(end, count)


def _bound(value: Any, timed: bool) -> Any:
    if value is None:
        return None
    return parse_key_time(str(value)) if timed else int(value)


_TEXT_TIME = re.compile(r"^(\d{4,})-(\d\d)-(\d\d)(?:[ T](\d\d):(\d\d)(?::(\d\d(?:\.\d+)?))?)?([+-]\d\d(?::?\d\d)?)?$")


def parse_key_time(text: str) -> dt.datetime | None:
    """PostgreSQL's ISO text of a date or timestamp (the sessions use UTC) as an aware datetime; None for
    values outside Python's range (BC, ±infinity, year > 9999)."""
    match = _TEXT_TIME.match(text.strip())
    if not match or len(match.group(1)) > 4:
        return None
    year, month, day, hour, minute, second, offset = match.groups()
    seconds = float(second or 0)
    value = dt.datetime(
        int(year),
        int(month),
        int(day),
        int(hour or 0),
        int(minute or 0),
        int(seconds),
        int(round((seconds % 1) * 1_000_000)) % 1_000_000,
        tzinfo=dt.UTC,
    )
    if offset:
        sign = -1 if offset[0] == "-" else 1
        digits = offset[1:].replace(":", "")
        delta = dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:4] or 0))
        value -= sign * delta
    return value
