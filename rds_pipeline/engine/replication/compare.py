"""Prove a replica: compare it with its source range by range, re-copy the ranges that differ, and find rows
deleted at the source.

- **Ranges** are ranges of the table's first key column, split where the source's planner statistics put its
  quantiles (``pg_stats.histogram_bounds``: read from the catalog, no scan), so each is a short index range scan
  on the source. A text key is split and compared bytewise (``COLLATE "C"``), as DuckDB compares. Without
  statistics, or with a key the destination orders differently (an enum stored as text), the table is one range.
- **Digest** of a range, on each side: ``count(*)`` and the sum of the first 60 bits of ``md5`` of each row's
  text (every selected column as text, NULL marked): independent of row order, so nothing is sorted. The two
  sides write the same text for a value (the sessions share DateStyle, TimeZone, float digits and bytea
  output; the DuckDB destination rebuilds PostgreSQL's text where its own differs).
- **Verify** reads one short query per range on the source (on a sample of ranges if asked), within the
  session's statement timeout and its connection cap, and names the ranges that differ.
- **Repair** re-copies only those ranges, each in one destination transaction, and touches no state: no
  bookmark or LSN moves, backwards or forwards.
- **Deletes** (``deletes: detect``): the same digests over the key columns only; a range that differs has its
  keys read from the source, and the replica's rows whose key is gone are deleted, or marked
  ``_rds_deleted_at`` with soft deletes (a row back at the source is unmarked).
"""

from __future__ import annotations

import datetime as dt
import logging
import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import psycopg2.extensions
from psycopg2 import sql

from rds_pipeline.engine.core.copy_out import CopyOut, ExtractionLog
from rds_pipeline.engine.core.digest import digest_columns, digested, row_text
from rds_pipeline.engine.core.ranges import KeyRange
from rds_pipeline.engine.core.rows import one
from rds_pipeline.engine.destinations.base import Destination
from rds_pipeline.engine.replication.extract import select_query
from rds_pipeline.engine.selection import SelectedTable
from rds_pipeline.engine.source.catalog import Column
from rds_pipeline.engine.source.session import SourceSession

log = logging.getLogger(__name__)

MAX_RANGES = 64  # of a table's ~100 planner quantiles: ranges of ~1.5% of the rows each


@dataclass(frozen=True)
class Digest:
    rows: int
    sum: int


@dataclass(frozen=True)
class RangeDifference:
    key_range: KeyRange
    source: Digest
    replica: Digest

    def describe(self) -> str:
        rows = (
            f"{self.replica.rows} rows in the replica, {self.source.rows} at the source"
            if self.replica.rows != self.source.rows
            else f"{self.source.rows} rows on both sides, different values"
        )
        return f"{self.key_range.describe()}: {rows}"


@dataclass
class Verification:
    """One table compared: how many ranges, which were checked, which differ."""

    table: str
    ranges: list[KeyRange]
    checked: int
    differences: list[RangeDifference] = field(default_factory=list)
    seconds: float = 0.0
    keys_only: bool = False

    @property
    def passed(self) -> bool:
        return not self.differences

    def describe(self) -> str:
        what = "its keys" if self.keys_only else "its rows"
        sampled = f" (a sample of {self.checked})" if self.checked < len(self.ranges) else ""
        if self.passed:
            return f"{self.table}: {what} match the source in {len(self.ranges)} range(s){sampled}"
        shown = "; ".join(d.describe() for d in self.differences[:5])
        more = f"; and {len(self.differences) - 5} more" if len(self.differences) > 5 else ""
        return (
            f"{self.table}: {len(self.differences)} of {len(self.ranges)} range(s){sampled} differ from the "
            f"source: {shown}{more}. Fix: `rds-pipeline repair {self.table}` re-copies only these"
        )


@dataclass
class Repair:
    table: str
    repaired: list[KeyRange]
    rows_deleted: int = 0
    rows_inserted: int = 0
    seconds: float = 0.0


def splittable(column: Column) -> bool:
    """Whether ranges of ``column`` can be compared at all: a plain (or domain) column, not an enum (stored as
    text, so ordered by label in a replica and by declaration at the source)."""
    return column.kind in ("base", "domain") and column.category != "E"


def key_ranges(
    conn: psycopg2.extensions.connection, table: SelectedTable, destination: Destination, limit: int = MAX_RANGES
) -> list[KeyRange]:
    """The table's ranges from the source's planner statistics of its first key column (one catalog query)."""
    key = table.primary_key[0] if table.primary_key else None
    column = next((c for c in table.columns if c.name == key), None)
    if column is None or not splittable(column) or not destination.splits_on(column):
        return [KeyRange()]
    relation = table.relation
    with conn.cursor() as cur:
        cur.execute(
            "SELECT histogram_bounds::text::text[] FROM pg_catalog.pg_stats WHERE schemaname = %s "
            "AND tablename = %s AND attname = %s ORDER BY inherited DESC LIMIT 1",
            (relation.schema, relation.name, column.name),
        )
        row = cur.fetchone()
    conn.commit()
    bounds: list[str] = list(row[0] or []) if row else []
    bytewise = column.category == "S"
    if bytewise:
        bounds = sorted(set(bounds), key=lambda b: b.encode())
    if not bounds:
        return [KeyRange()]
    step = max(1, -(-len(bounds) // (limit - 1)))
    edges = bounds[step - 1 :: step] if len(bounds) >= limit else bounds
    edges = list(dict.fromkeys(edges))
    lows: list[str | None] = [None, *edges]
    highs: list[str | None] = [*edges, None]
    return [KeyRange(column.name, lower=lo, upper=hi, bytewise=bytewise) for lo, hi in zip(lows, highs, strict=True)]


def source_digest(
    conn: psycopg2.extensions.connection,
    table: SelectedTable,
    key_range: KeyRange,
    keys_only: bool,
    destination: Destination,
) -> Digest:
    relation = sql.Identifier(table.relation.schema, table.relation.name)
    columns = digest_columns(table, keys_only)
    query = sql.SQL("SELECT {} FROM {}").format(
        digested(columns, destination.array_as_json, destination.floats_rounded), relation
    )
    predicate = key_range.predicate()
    if predicate is not None:
        query = sql.SQL("{} WHERE {}").format(query, predicate)
    with conn.cursor() as cur:
        cur.execute(query)
        rows, total = one(cur.fetchone())
    conn.commit()  # each range its own short transaction
    return Digest(int(rows), int(total))


def verify_table(
    session: SourceSession,
    destination: Destination,
    table: SelectedTable,
    sample: float | None = None,
    keys_only: bool = False,
    seed: int | None = None,
) -> Verification:
    """Compare each range (or a random ``sample`` fraction of them) of ``table``, source against replica."""
    started = time.monotonic()
    conn = session.connection(table.relation.database)
    ranges = key_ranges(conn, table, destination)
    chosen = list(ranges)
    if sample is not None and sample < 1:
        count = max(1, round(len(ranges) * sample))
        chosen = sorted(random.Random(seed).sample(ranges, count), key=ranges.index)
    result = Verification(table.id, ranges, len(chosen), keys_only=keys_only)
    # each range's two digests at once: the replica's on a second thread, while the source computes its own
    # (each is one query; the drivers release the GIL while they wait)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="rds-digest") as replica_side:
        for key_range in chosen:
            pending = replica_side.submit(destination.digest, table, key_range, keys_only)
            try:
                source = source_digest(conn, table, key_range, keys_only, destination)
            finally:
                replica = Digest(*pending.result())
            if source != replica:
                result.differences.append(RangeDifference(key_range, source, replica))
    result.seconds = time.monotonic() - started
    log.info("%s", result.describe())
    return result


def repair_table(
    session: SourceSession, destination: Destination, table: SelectedTable, verification: Verification | None = None
) -> Repair:
    """Re-copy the ranges a verification found different (running one first if none is given), each in one
    destination transaction; no bookmark moves."""
    verification = verification or verify_table(session, destination, table)
    started = time.monotonic()
    done = Repair(table.id, [])
    conn = session.connection(table.relation.database)
    for difference in verification.differences:
        key_range = difference.key_range
        query = select_query(table, key_range, csv=destination.copy_csv, array_as_json=destination.array_as_json)
        extraction = ExtractionLog(
            table.id, query.as_string(conn), {"range": key_range.describe()}, dt.datetime.now(dt.UTC)
        )
        copy = CopyOut(conn, query, table.id, extraction, stall_seconds=session.config.stall_seconds)
        try:
            report = destination.repair_range(table, key_range, copy, uuid.uuid4().hex)
        except BaseException:
            session.abandon(stuck=copy.stuck)
            raise
        session.end_transaction()
        done.repaired.append(key_range)
        done.rows_deleted += report.rows_deleted
        done.rows_inserted += report.rows_inserted
        log.info("%s: repaired %s (%d rows re-copied)", table.id, key_range.describe(), report.rows_inserted)
    done.seconds = time.monotonic() - started
    return done


def detect_deletes(session: SourceSession, destination: Destination, table: SelectedTable, soft: bool) -> int:
    """Rows of the replica whose key is gone at the source, deleted (or marked, ``soft``): compared by key
    digests per range; only a range that differs has its keys read. Returns the rows deleted or marked."""
    verification = verify_table(session, destination, table, keys_only=True)
    conn = session.connection(table.relation.database)
    gone = 0
    keys = digest_columns(table, keys_only=True)
    for difference in verification.differences:
        key_range = difference.key_range
        relation = sql.Identifier(table.relation.schema, table.relation.name)
        select = sql.SQL("SELECT {} FROM {}").format(
            row_text(keys, destination.array_as_json, destination.floats_rounded), relation
        )
        predicate = key_range.predicate()
        if predicate is not None:
            select = sql.SQL("{} WHERE {}").format(select, predicate)
        options = sql.SQL(" WITH (FORMAT csv)") if destination.copy_csv else sql.SQL("")
        query = sql.SQL("COPY ({}) TO STDOUT{}").format(select, options)
        extraction = ExtractionLog(
            table.id, query.as_string(conn), {"range": key_range.describe()}, dt.datetime.now(dt.UTC)
        )
        copy = CopyOut(conn, query, table.id, extraction, stall_seconds=session.config.stall_seconds)
        try:
            gone += destination.delete_missing(table, key_range, copy, soft)
        except BaseException:
            session.abandon(stuck=copy.stuck)
            raise
        session.end_transaction()
    if gone:
        log.info("%s: %d row(s) gone at the source %s", table.id, gone, "marked deleted" if soft else "deleted")
    return gone
