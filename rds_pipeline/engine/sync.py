"""Sync one table (or one key range of it): extract, load, move the bookmark; retry transient failures.

The unit of work is a table and a key range: a window of the replication key, a primary-key range for a
full-table chunk, or the whole table. The Dagster layer calls ``sync_table`` once per partition.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from dataclasses import dataclass
from typing import Protocol

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

from rds_pipeline.engine.config import IntegrationConfig, SourceConfig
from rds_pipeline.engine.connection import connect_source, open_tunnel
from rds_pipeline.engine.destination import LoadError, LoadingReport
from rds_pipeline.engine.errors import ConnectionProblem
from rds_pipeline.engine.extract import (
    CopyOut,
    ExtractionLog,
    KeyRange,
    apply_session_settings,
    select_query,
    source_in_recovery,
)
from rds_pipeline.engine.selection import SelectedTable
from rds_pipeline.engine.tunnel import SshTunnel
from rds_pipeline.engine.types_map import postgres_type

log = logging.getLogger(__name__)

DEFAULT_TIMESTAMP_LOOKBACK = "5 minutes"
# SQLSTATEs worth retrying: serialization failure (includes "conflict with recovery" on a hot standby),
# deadlock, admin shutdown, crash shutdown, cannot connect now.
TRANSIENT_SQLSTATES = {"40001", "40P01", "57P01", "57P02", "57P03", "08000", "08003", "08006"}
PERMANENT_SQLSTATES = {
    "42501": "permission denied",
    "42703": "a column is missing",
    "42P01": "the table is missing",
    "55000": "the materialized view has not been populated",
}


class Destination(Protocol):
    kind: str
    copy_csv: bool
    array_as_json: bool

    def prepare(self, config: IntegrationConfig) -> None: ...
    def read_bookmark(self, table: SelectedTable) -> str | None: ...
    def reset(self, table: SelectedTable) -> None: ...
    def reconnect(self) -> None: ...
    def load(self, table: SelectedTable, key_range: KeyRange, copy: CopyOut, batch_id: str,
             bookmark_before: str | None) -> tuple[LoadingReport, str | None, int]: ...  # fmt: skip
    def close(self) -> None: ...


@dataclass
class SyncResult:
    table: SelectedTable
    key_range: KeyRange
    extraction: ExtractionLog
    report: LoadingReport
    attempts: int

    @property
    def bookmark(self) -> str | None:
        return self.extraction.bookmark_after


class SourceSession:
    """One source connection (and tunnel) per run, reopened only after a transient failure."""

    def __init__(self, config: SourceConfig) -> None:
        self.config = config
        self._tunnel: SshTunnel | None = None
        self._conn: psycopg2.extensions.connection | None = None
        self._database: str | None = None

    def connection(self, database: str | None = None) -> psycopg2.extensions.connection:
        database = database or self.config.database
        if self._conn is not None and (self._conn.closed or self._database != database):
            self._close_conn()
        if self._conn is None:
            if self.config.ssh is not None and (self._tunnel is None or not self._tunnel.is_active):
                if self._tunnel is not None:
                    self._tunnel.close()
                self._tunnel = open_tunnel(self.config)
            self._conn = connect_source(self.config, self._tunnel, database=database)
            self._database = database
            apply_session_settings(self._conn)
        return self._conn

    def reset(self) -> None:
        self._close_conn()
        if self._tunnel is not None and not self._tunnel.is_active:
            self._tunnel.close()
            self._tunnel = None

    def _close_conn(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg2.Error:
                pass
        self._conn = None

    def close(self) -> None:
        self._close_conn()
        if self._tunnel is not None:
            self._tunnel.close()
            self._tunnel = None

    def __enter__(self) -> SourceSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionProblem):
        return exc.kind in ("refused", "timeout", "ssh_connect", "ssh_timeout", "ssh_target_unreachable", "connect")
    if isinstance(exc, psycopg2.Error):
        code = getattr(exc, "pgcode", None)
        if code in TRANSIENT_SQLSTATES:
            return True
        if code is None:
            return True  # every server-side error carries a SQLSTATE; none means the connection broke

    return isinstance(exc, (ConnectionError, TimeoutError, EOFError))


def _permanent_message(table: SelectedTable, exc: psycopg2.Error) -> str | None:
    reason = PERMANENT_SQLSTATES.get(getattr(exc, "pgcode", None) or "")
    if reason is None:
        return None
    detail = (exc.pgerror or str(exc)).strip().splitlines()[0]
    fix = {
        "permission denied": f"run `rds-pipeline check` and apply its GRANT for {table.relation.qualified_name}",
        "a column is missing": "run `rds-pipeline discover --check` and update the selection",
        "the table is missing": "run `rds-pipeline discover` and update the selection",
        "the materialized view has not been populated": "run REFRESH MATERIALIZED VIEW on it at the source, "
        "or deselect it",
    }[reason]
    return f"{table.id}: {reason} ({detail}). Fix: {fix}"


def incremental_range(session: SourceSession, table: SelectedTable, bookmark: str | None,
                      lookback: str | int | None) -> KeyRange:  # fmt: skip
    """key >= bookmark - lookback (inclusive, so rows sharing the boundary value are re-read, never missed).
    Rows whose key is NULL cannot be ordered against a bookmark, so every sync re-reads them (upserts make
    that idempotent) and counts them: they are never silently dropped."""
    key = table.replication_key
    assert key is not None
    if bookmark is None:
        return KeyRange(key, include_nulls=True)
    column = next(c for c in table.columns if c.name == key)
    if lookback is None:
        lookback = DEFAULT_TIMESTAMP_LOOKBACK if column.category == "D" else 0
    if not lookback:
        return KeyRange(key, lower=bookmark, include_nulls=True)
    kind = sql.SQL(postgres_type(column))
    conn = session.connection(table.relation.database)
    with conn.cursor() as cur:
        if column.category == "D":
            cur.execute(sql.SQL("SELECT (%s::{t} - %s::interval)::{t}::text").format(t=kind), (bookmark, str(lookback)))
        else:
            cur.execute(sql.SQL("SELECT (%s::{t} - %s::bigint)::text").format(t=kind), (bookmark, int(lookback)))
        lower = cur.fetchone()[0]
    conn.commit()
    return KeyRange(key, lower=lower, include_nulls=True)


def sync_table(
    session: SourceSession,
    destination: Destination,
    table: SelectedTable,
    key_range: KeyRange | None = None,
    *,
    lookback: str | int | None = None,
    max_attempts: int = 4,
    backoff_seconds: float = 1.0,
) -> SyncResult:
    """Replicate ``table`` (or ``key_range`` of it). Transient errors are retried with backoff; permanent
    ones fail at once naming the table. The bookmark moves only in the destination's commit."""
    attempt = 0
    while True:
        attempt += 1
        try:
            return _sync_once(session, destination, table, key_range, lookback, attempt)
        except psycopg2.Error as exc:
            message = _permanent_message(table, exc)
            if message:
                raise LoadError(message) from None
            if not is_transient(exc) or attempt >= max_attempts:
                raise LoadError(f"{table.id}: sync failed after {attempt} attempt(s): {exc}".strip()) from exc
            error: BaseException = exc
        except ConnectionProblem as exc:
            if not is_transient(exc) or attempt >= max_attempts:
                raise
            error = exc
        delay = backoff_seconds * 2 ** (attempt - 1)
        log.warning("%s: transient error (attempt %d/%d), retrying in %.1fs: %s", table.id, attempt, max_attempts,
                    delay, str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)  # fmt: skip
        session.reset()
        destination.reconnect()
        time.sleep(delay)


def _sync_once(session: SourceSession, destination: Destination, table: SelectedTable,
               key_range: KeyRange | None, lookback: str | int | None, attempt: int) -> SyncResult:  # fmt: skip
    bookmark = destination.read_bookmark(table) if table.method == "key_based" else None
    if key_range is None:
        key_range = incremental_range(session, table, bookmark, lookback) if table.method == "key_based" else KeyRange()
    conn = session.connection(table.relation.database)
    in_recovery = source_in_recovery(conn)
    query = select_query(table, key_range, csv=destination.copy_csv, array_as_json=destination.array_as_json)
    extraction = ExtractionLog(
        table=table.id,
        query=query.as_string(conn),
        parameters={"range": key_range.describe(), "lower": key_range.lower, "upper": key_range.upper},
        started_at=dt.datetime.now(dt.UTC),
        bookmark_before=bookmark,
        source_in_recovery=in_recovery,
    )
    copy = CopyOut(conn, query, table.id, extraction)
    batch_id = uuid.uuid4().hex
    try:
        report, new_bookmark, null_keys = destination.load(table, key_range, copy, batch_id, bookmark)
    except Exception as exc:
        if isinstance(copy.error, psycopg2.Error):
            raise copy.error from exc  # the source's error is the cause; the destination's is its echo
        raise
    finally:
        if not conn.closed:
            try:
                conn.rollback()
            except psycopg2.Error:
                pass
    extraction.ended_at = dt.datetime.now(dt.UTC)
    extraction.bookmark_after = new_bookmark
    extraction.null_key_rows = null_keys
    if null_keys:
        log.warning("%s: %d row(s) have a NULL %s; they were loaded and are counted here", table.id, null_keys,
                    table.replication_key)  # fmt: skip
    return SyncResult(table, key_range, extraction, report, attempt)
