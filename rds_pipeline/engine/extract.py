"""Extraction: ``COPY (SELECT … WHERE <range>) TO STDOUT`` from the source, streamed through a bounded pipe.

Rows never become Python objects: bytes flow from the source's COPY into the destination's COPY through at
most ``max_chunks`` x ``chunk_bytes`` of memory, so peak memory does not depend on table size.
"""

from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg2.extensions
from psycopg2 import sql

from rds_pipeline.engine.selection import SelectedTable

log = logging.getLogger(__name__)

# Canonical text output on both ends, so COPY text round-trips exactly between servers.
SESSION_SETTINGS = {
    "DateStyle": "ISO, MDY",
    "IntervalStyle": "postgres",
    "TimeZone": "UTC",
    "extra_float_digits": "3",
    "bytea_output": "hex",
    "lc_monetary": "C",
}
PROGRESS_SECONDS = 10.0


def apply_session_settings(conn: psycopg2.extensions.connection) -> None:
    with conn.cursor() as cur:
        for name, value in SESSION_SETTINGS.items():
            cur.execute("SELECT set_config(%s, %s, false)", (name, value))
    conn.commit()


@dataclass(frozen=True)
class KeyRange:
    """A window of one column: ``lower <= col < upper`` (bounds optional), plus NULLs when asked."""

    column: str | None = None
    lower: Any = None
    upper: Any = None
    upper_inclusive: bool = False
    include_nulls: bool = False

    @property
    def is_whole_table(self) -> bool:
        return self.column is None or (self.lower is None and self.upper is None)

    def predicate(self) -> sql.Composable | None:
        if self.column is None or (self.lower is None and self.upper is None and not self.include_nulls):
            return None
        column = sql.Identifier(self.column)
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

    def describe(self) -> str:
        if self.column is None:
            return "whole table"
        low = "-inf" if self.lower is None else repr(self.lower)
        high = "+inf" if self.upper is None else repr(self.upper)
        return f"{self.column} in [{low}, {high}{']' if self.upper_inclusive else ')'}" + (
            " or NULL" if self.include_nulls else ""
        )


@dataclass
class ExtractionLog:
    """What was read and how: for the loading report, the UI and audits."""

    table: str
    query: str
    parameters: dict[str, Any]
    started_at: dt.datetime
    ended_at: dt.datetime | None = None
    rows: int = 0
    bytes: int = 0
    bookmark_before: str | None = None
    bookmark_after: str | None = None
    source_in_recovery: bool = False
    null_key_rows: int = 0
    progress: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "query": self.query,
            "parameters": {k: str(v) for k, v in self.parameters.items()},
            "started_at": self.started_at.isoformat(),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "rows": self.rows,
            "bytes": self.bytes,
            "bookmark_before": self.bookmark_before,
            "bookmark_after": self.bookmark_after,
            "source_in_recovery": self.source_in_recovery,
            "null_key_rows": self.null_key_rows,
        }


def select_query(table: SelectedTable, key_range: KeyRange, csv: bool = False,
                 array_as_json: bool = False) -> sql.Composed:  # fmt: skip
    """``COPY (SELECT cols FROM schema.table [WHERE range]) TO STDOUT``, identifiers quoted by psycopg2.sql."""
    columns = []
    for column in table.columns:
        ident = sql.Identifier(column.name)
        if array_as_json and column.kind == "array":
            columns.append(sql.SQL("to_json({})").format(ident))
        else:
            columns.append(ident)
    relation = sql.Identifier(table.relation.schema, table.relation.name)
    select = sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(columns), relation)
    predicate = key_range.predicate()
    if predicate is not None:
        select = sql.SQL("{} WHERE {}").format(select, predicate)
    options = sql.SQL(" WITH (FORMAT csv)") if csv else sql.SQL("")
    return sql.SQL("COPY ({}) TO STDOUT{}").format(select, options)


class PipeClosed(Exception):
    """The reading side stopped (the load failed); the source COPY must stop too."""


class BoundedPipe:
    """Bytes from a COPY TO (``write``) to a COPY FROM (``read``), holding at most ``max_chunks`` chunks."""

    def __init__(self, chunk_bytes: int = 1 << 20, max_chunks: int = 8,
                 on_progress: Callable[[int], None] | None = None) -> None:  # fmt: skip
        self._queue: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=max_chunks)
        self._chunk_bytes = chunk_bytes
        self._buffer = bytearray()
        self._pending = b""
        self._closed = threading.Event()
        self._eof = False
        self.bytes = 0
        self._on_progress = on_progress

    # writer side (psycopg2 calls write() once per COPY data message)
    def write(self, data: bytes) -> int:
        self._buffer += data
        if len(self._buffer) >= self._chunk_bytes:
            self._put(bytes(self._buffer))
            self._buffer.clear()
        return len(data)

    def finish(self, error: BaseException | None = None) -> None:
        if self._buffer and error is None:
            self._put(bytes(self._buffer))
            self._buffer.clear()
        self._put(error)

    def _put(self, item: bytes | BaseException | None) -> None:
        while True:
            if self._closed.is_set():
                raise PipeClosed()
            try:
                self._queue.put(item, timeout=0.2)
            except queue.Full:
                continue
            if isinstance(item, bytes):
                self.bytes += len(item)
                if self._on_progress:
                    self._on_progress(self.bytes)
            return

    # reader side (psycopg2 calls read(size) until it returns b"")
    def read(self, size: int = -1) -> bytes:
        if self._pending:
            chunk, self._pending = self._pending, b""
            return chunk
        if self._eof:
            return b""
        item = self._queue.get()
        if item is None:
            self._eof = True
            return b""
        if isinstance(item, BaseException):
            self._eof = True
            raise item
        return item

    def readline(self, size: int = -1) -> bytes:  # psycopg2 never calls it; present for file-likeness
        return self.read(size)

    def close_reader(self) -> None:
        self._closed.set()
        while True:  # unblock a writer waiting on a full queue
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return


def source_in_recovery(conn: psycopg2.extensions.connection) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_is_in_recovery()")
        value = bool(cur.fetchone()[0])
    conn.commit()
    return value


class CopyOut:
    """Runs the source COPY TO in a thread, feeding a ``BoundedPipe``; logs progress every 10 s."""

    def __init__(self, conn: psycopg2.extensions.connection, query: sql.Composed, table: str,
                 extraction: ExtractionLog, chunk_bytes: int = 1 << 20, max_chunks: int = 8) -> None:  # fmt: skip
        self.conn = conn
        self.query_text = query.as_string(conn)
        self.table = table
        self.extraction = extraction
        self._last_progress = time.monotonic()
        self._started = time.monotonic()
        self.pipe = BoundedPipe(chunk_bytes, max_chunks, self._progress)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"rds-copy-out-{table}", daemon=True)

    def _progress(self, total_bytes: int) -> None:
        now = time.monotonic()
        if now - self._last_progress >= PROGRESS_SECONDS:
            self._last_progress = now
            rate = total_bytes / max(now - self._started, 1e-9) / 2**20
            message = (
                f"{self.table}: {total_bytes / 2**20:.1f} MiB copied in {now - self._started:.0f}s ({rate:.1f} MiB/s)"
            )
            self.extraction.progress.append(message)
            log.info(message)

    def start(self) -> CopyOut:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            with self.conn.cursor() as cur:
                cur.copy_expert(self.query_text, self.pipe, size=1 << 18)
                self.extraction.rows = cur.rowcount
            self.pipe.finish()
        except PipeClosed:
            self.error = PipeClosed()
        except BaseException as exc:  # noqa: BLE001 - handed to the reader, re-raised there
            self.error = exc
            try:
                self.pipe.finish(exc)
            except PipeClosed:
                pass

    def join(self) -> None:
        self._thread.join()
        self.extraction.bytes = self.pipe.bytes

    def abort(self) -> None:
        """Stop the source COPY after a load failure (cancel the statement, unblock the writer)."""
        self.pipe.close_reader()
        try:
            self.conn.cancel()
        except psycopg2.Error:
            pass
        self._thread.join(timeout=30)
