"""The destination contract (``destinations/base.py``), the same tests over PostgreSQL and DuckDB: each writes the
rules its own way (SQL in one, Python and DuckDB SQL in the other), so each rule is checked on both.

- the bookmark rule, as a timeline of windows (in order, past a gap, older, late rows);
- every change-apply case from a real slot: inserts, an update leaving a TOASTed value unchanged, a key change
  carrying one, delete and re-insert, TRUNCATE in its place, a batch applied twice, hard and soft deletes (and
  their counts), the LSN committed with the rows and never moved back;
- state: snapshots recorded, read and forgotten per table and per slot (in one transaction), the reading mark;
- a range copied again for a log-based table (a partition backfill) leaves the table's snapshot state as it was.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from rds_pipeline.engine.core.copy_out import CopyOut, ExtractionLog
from rds_pipeline.engine.core.ranges import KeyRange
from rds_pipeline.engine.core.state import TableState
from rds_pipeline.engine.destinations.base import DELETED_AT, Destination
from rds_pipeline.engine.destinations.duckdb import DuckDBDestination
from rds_pipeline.engine.destinations.postgres import PostgresDestination
from rds_pipeline.engine.replication.extract import binary_copy, select_query
from rds_pipeline.engine.replication.sync import sync_table
from rds_pipeline.engine.selection import SelectedTable
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.engine.sync_helpers import Scratch, make_scratch
from rds_pipeline_tests.engine.test_cdc_apply import BIG, changes

KINDS = ["postgres", "duckdb"]


@pytest.fixture(params=KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def open_destination(kind: str, scratch: Scratch, tmp_path: Path) -> Destination:
    dest: Destination
    if kind == "postgres":
        dest = PostgresDestination(scratch.config.destination, scratch.config.destination_schema)
    else:
        dest = DuckDBDestination(tmp_path / "contract.duckdb", scratch.config.destination_schema)
    dest.prepare(scratch.config)
    return dest


@pytest.fixture
def setup(kind: str, logical18: LocalPostgres, tmp_path: Path) -> Iterator[tuple[Scratch, Destination]]:
    scratch = make_scratch(logical18)
    dest = open_destination(kind, scratch, tmp_path)
    yield scratch, dest
    dest.close()


def replica_rows(dest: Destination, table: SelectedTable) -> list[tuple[str | None, ...]]:
    """The replica's rows as text, in key order (DuckDB returns Python values: compare their text)."""
    rows: list[tuple[Any, ...]] = dest.fetch_rows(table)  # type: ignore[attr-defined]
    return by_key([tuple(None if v is None else str(v) for v in row) for row in rows])


def source_rows(scratch: Scratch, table: SelectedTable) -> list[tuple[str | None, ...]]:
    return by_key(scratch.source_rows(table))


def by_key(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return sorted(rows, key=lambda row: int(row[0]))


def deleted_marks(dest: Destination, scratch: Scratch, table: SelectedTable) -> list[str]:
    """Keys of the replica's rows marked deleted (soft deletes)."""
    if isinstance(dest, DuckDBDestination):
        found = dest.conn.execute(f'SELECT id FROM {dest.target(table)} WHERE "{DELETED_AT}" IS NOT NULL ORDER BY id')
        return [str(r[0]) for r in found.fetchall()]
    text = scratch.sql(
        f"SELECT string_agg(id::text, ',' ORDER BY id) FROM test_replica.{table.destination_table} "
        f"WHERE {DELETED_AT} IS NOT NULL",
        scratch.dest_db,
    )
    return text.strip().split(",") if text.strip() else []


def copy_range(scratch: Scratch, dest: Destination, table: SelectedTable, key_range: KeyRange) -> int:
    """Load ``key_range`` of ``table`` through the destination's loader, as a snapshot copies it."""
    conn = psycopg2.connect(**scratch.server.dsn(scratch.source_db))
    try:
        binary, _ = binary_copy(dest, table)
        query = select_query(table, key_range, csv=dest.copy_csv, array_as_json=dest.array_as_json, binary=binary)
        log = ExtractionLog(table.id, query.as_string(conn), {}, dt.datetime.now(dt.UTC))
        report, _ = dest.load(table, key_range, CopyOut(conn, query, table.id, log, binary=binary), uuid.uuid4().hex)
        return report.rows_inserted
    finally:
        conn.close()


def test_the_bookmark_rule(setup: tuple[Scratch, Destination]) -> None:
    """Windows in order move it; a window past a gap does not; an older window never moves it back; a window
    claims completeness only up to what the source held, so a later window cannot skip rows that arrive after."""
    scratch, dest = setup
    scratch.sql(
        "CREATE TABLE k (id int PRIMARY KEY, v text); INSERT INTO k SELECT g, 'v' FROM generate_series(1, 15) g"
    )
    table = scratch.one({"name": "public.k", "method": "key_based", "replication_key": "id"})
    first, second, last = KeyRange("id", upper=10, include_nulls=True), KeyRange("id", 10, 100), KeyRange("id", 100)
    with scratch.session() as session:
        # past a gap: copied, bookmark unmoved (a closed window: the latest one, without a bookmark, is a history)
        assert sync_table(session, dest, table, KeyRange("id", 100, 200)).bookmark is None
        assert sync_table(session, dest, table, second).bookmark is None
        assert sync_table(session, dest, table, first).bookmark == "9"  # from the start: contiguous
        assert dest.table_state(table).covered_to == "10"
        assert sync_table(session, dest, table, second).bookmark == "15"  # now contiguous
        assert dest.table_state(table).covered_to == "15"  # not 100: the source held keys up to 15 only
        assert sync_table(session, dest, table, first).bookmark == "15"  # an older window: never backwards
        scratch.sql("INSERT INTO k VALUES (50, 'late in the window'), (150, 'next window')")
        later = sync_table(session, dest, table, KeyRange("id", 100, 200))
        assert later.bookmark == "15"  # 16..99 may hold rows not copied yet (50 does): no jump past them
        caught = sync_table(session, dest, table)  # the catch-up from 15 brings 50 (and 150 again)
        assert caught.bookmark == "150" and caught.plan.reason.startswith("catch-up")
        scratch.sql("INSERT INTO k VALUES (120, 'behind the bookmark'), (160, 'after it')")
        latest = sync_table(session, dest, table, last)  # the latest window reaches back to the bookmark
        assert latest.key_range.lower == "100" and latest.bookmark == "160"  # least(window start, bookmark)
    assert replica_rows(dest, table) == source_rows(scratch, table)
    assert dest.read_bookmarks()[table.id] == "160"
    dest.reset(table)  # the table and its state go together
    assert dest.table_state(table) == TableState(False)
    assert table.id not in dest.read_bookmarks()


def test_every_change_apply_case(setup: tuple[Scratch, Destination]) -> None:
    scratch, dest = setup
    scratch.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v text, big text); ALTER TABLE t ALTER COLUMN big SET STORAGE "
        "EXTERNAL; CREATE PUBLICATION apply_pub FOR TABLE t"
    )
    slot = f"contract_{scratch.source_db}"
    scratch.sql(f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")
    try:
        table = scratch.one({"name": "public.t", "method": "log_based"})
        tables = {("public", "t"): table}
        applier = dest.changes()

        def apply(soft: bool = False) -> Any:
            return applier.apply_batch(tables, changes(scratch.server, scratch.source_db, slot), slot, soft)

        # inserts of TOASTed values, an update leaving them (sent UNCHANGED), a key change leaving them, a delete
        # and a re-insert of one key
        scratch.sql(
            f"INSERT INTO t SELECT id, 'v' || id, {BIG} FROM generate_series(1, 5) id;"
            "UPDATE t SET v = 'changed' WHERE id = 2; UPDATE t SET id = 30 WHERE id = 3;"
            "DELETE FROM t WHERE id = 4; INSERT INTO t VALUES (4, 'again', 'small')"
        )
        report = apply()
        assert replica_rows(dest, table) == source_rows(scratch, table)
        assert applier.applied_lsn(slot) == report.lsn and report.lsn is not None
        assert report.upserted == {table.id: 5}  # 1, 2, 30, 4 and 5: the last operation per key

        # updates whose TOASTed values only the replica holds, one of them moving its key
        scratch.sql("UPDATE t SET v = 'later' WHERE id = 1; UPDATE t SET id = 31 WHERE id = 30")
        apply()
        assert replica_rows(dest, table) == source_rows(scratch, table)

        # a TRUNCATE between other changes, in its place; the same batch twice converges
        scratch.sql(
            f"INSERT INTO t VALUES (9, 'gone', 'x'); TRUNCATE t; INSERT INTO t SELECT id, 'new', {BIG} "
            "FROM generate_series(7, 8) id; UPDATE t SET v = 'newer' WHERE id = 8"
        )
        batch = changes(scratch.server, scratch.source_db, slot)
        truncated = applier.apply_batch(tables, batch, slot)
        assert truncated.truncated == [table.id]
        applier.apply_batch(tables, batch, slot)
        assert replica_rows(dest, table) == source_rows(scratch, table)

        # a hard delete, counted
        scratch.sql("DELETE FROM t WHERE id = 7")
        assert apply().deleted == {table.id: 1}
        assert replica_rows(dest, table) == source_rows(scratch, table)

        # soft deletes: the row stays, marked, and is counted; an upsert of the key clears the mark
        scratch.sql("INSERT INTO t VALUES (10, 'ten', 'x'), (11, 'eleven', 'x')")
        apply(soft=True)
        scratch.sql("DELETE FROM t WHERE id = 10")
        assert apply(soft=True).deleted == {table.id: 1}
        assert deleted_marks(dest, scratch, table) == ["10"]
        assert [r[0] for r in replica_rows(dest, table)] == ["8", "10", "11"]
        scratch.sql("INSERT INTO t VALUES (10, 'back', 'x')")
        apply(soft=True)
        assert deleted_marks(dest, scratch, table) == []
        scratch.sql("TRUNCATE t")  # a soft TRUNCATE marks every row
        assert apply(soft=True).truncated == [table.id]
        assert deleted_marks(dest, scratch, table) == ["8", "10", "11"]

        # the LSN never moves back
        reached = applier.applied_lsn(slot)
        applier.record_lsn(slot, "0/1")
        assert applier.applied_lsn(slot) == reached
        age = applier.slot_age_seconds(slot)
        assert age is not None and 0 <= age < 600
    finally:
        scratch.sql(f"SELECT pg_drop_replication_slot('{slot}')")


def test_state_recorded_read_and_forgotten(setup: tuple[Scratch, Destination]) -> None:
    scratch, dest = setup
    scratch.sql(
        "CREATE TABLE s (id int PRIMARY KEY, v text); INSERT INTO s SELECT g, 'v' FROM generate_series(1, 20) g;"
        "CREATE TABLE other (id int PRIMARY KEY)"
    )
    table = scratch.one({"name": "public.s", "method": "log_based"})
    other = scratch.one({"name": "public.other", "method": "log_based"})
    applier = dest.changes()
    slot = "contract_state"
    assert applier.applied_lsn(slot) is None and applier.slot_age_seconds(slot) is None
    assert copy_range(scratch, dest, table, KeyRange()) == 20  # a snapshot's copy
    assert copy_range(scratch, dest, other, KeyRange()) == 0
    assert applier.snapshot_lsns(slot) == {}  # a load records no log-based state: its applier does
    applier.record_snapshot(table, slot, "0/100")
    applier.record_snapshot(other, slot, "0/100")
    applier.record_lsn(slot, "0/100")
    assert applier.snapshot_lsns(slot) == {table.id: "0/100", other.id: "0/100"}

    # a partition backfill: a range copied again leaves the snapshot state as it was
    scratch.sql("UPDATE s SET v = 'again' WHERE id <= 5")
    assert copy_range(scratch, dest, table, KeyRange("id", upper=6, include_nulls=True)) == 5
    assert applier.snapshot_lsns(slot) == {table.id: "0/100", other.id: "0/100"}
    assert replica_rows(dest, table) == source_rows(scratch, table)

    applier.record_snapshot(table, slot, "0/200")  # a newer snapshot replaces the row
    assert applier.snapshot_lsns(slot)[table.id] == "0/200"
    applier.forget_table(slot, other.id)
    applier.forget_table(slot, other.id)  # idempotent
    assert applier.snapshot_lsns(slot) == {table.id: "0/200"}

    applier.mark_reading(slot, True)
    assert applier.was_reading(slot)
    applier.mark_reading(slot, False)
    assert not applier.was_reading(slot)

    assert applier.slot_lost(slot) is None
    applier.record_snapshot(other, slot, "0/200")
    assert applier.forget_slot(slot) == 2  # the position and every snapshot under it, together
    assert applier.applied_lsn(slot) is None and applier.snapshot_lsns(slot) == {}
    assert applier.slot_lost(slot) is None  # a deliberate drop (`cdc drop`) is not a loss
    applier.record_lsn(slot, "0/300")
    applier.record_snapshot(table, slot, "0/300")
    assert applier.forget_slot(slot, lost="slot 's' lost the WAL it needed (wal_removed)") == 1
    when, why = applier.slot_lost(slot) or (None, None)
    assert why == "slot 's' lost the WAL it needed (wal_removed)" and when is not None
    assert applier.applied_lsn(slot) is None and applier.snapshot_lsns(slot) == {}
    assert applier.forget_slot(slot) == 0
    applier.lock_slot(slot)  # one reader per slot; released (and releasable twice)
    applier.unlock_slot(slot)
    applier.unlock_slot(slot)
