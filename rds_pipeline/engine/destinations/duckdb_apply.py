"""Apply a batch of log-based changes to the DuckDB destination, with the slot's LSN, in one transaction.

The same rules as ``postgres_apply`` (last operation per key, deletes before upserts, TRUNCATE in its place,
UNCHANGED TOASTed values kept, soft deletes, the LSN written last), with DuckDB's means: the batch's rows go
through a CSV stage that DuckDB reads as text and converts with the loader's own expressions (``convert``), so
a value lands exactly as the snapshot would have written it. Arrays are turned into JSON by the source's own
``to_json`` (one query per batch and column), as the snapshot's query does. An upsert replaces the row
(delete, then insert: DuckDB's reliable upsert inside one transaction).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import psycopg2.extensions
from psycopg2 import sql

from rds_pipeline.engine.core.changes import DELETE, ChangeBatch, RowChange
from rds_pipeline.engine.core.messages import UNCHANGED, Value, lsn_text, timestamp
from rds_pipeline.engine.core.rows import one
from rds_pipeline.engine.core.types import BUILTIN_TYPES, bare_type
from rds_pipeline.engine.destinations.base import (
    BATCH_ID,
    DELETED_AT,
    EXTRACTED_AT,
    SLOT_EVENTS_TABLE,
    SLOT_MARK,
    SLOTS_TABLE,
    SNAPSHOT_CHUNKS_TABLE,
    ApplyReport,
    SourceConnect,
)
from rds_pipeline.engine.destinations.duckdb_sql import convert, csv_source, dq, run
from rds_pipeline.engine.errors import LoadError, TableApplyError
from rds_pipeline.engine.selection import SelectedTable
from rds_pipeline.engine.source.catalog import Column

if TYPE_CHECKING:  # the destination imports its applier
    from rds_pipeline.engine.destinations.duckdb import DuckDBDestination


def _slots(destination: DuckDBDestination) -> str:
    return f"{dq(destination.catalog)}.{dq(destination.schema)}.{dq(SLOTS_TABLE)}"


def _ensure_slots(destination: DuckDBDestination) -> None:
    run(
        destination.conn,
        f"CREATE TABLE IF NOT EXISTS {_slots(destination)} (slot VARCHAR PRIMARY KEY, lsn VARCHAR "
        "NOT NULL, updated_at TIMESTAMPTZ NOT NULL DEFAULT now(), reading BOOLEAN NOT NULL DEFAULT false)",
    )


def _write_lsn(destination: DuckDBDestination, slot: str, lsn: str) -> None:
    """Move the slot's LSN forward (never back), in the caller's transaction."""
    _ensure_slots(destination)
    row = run(destination.conn, f"SELECT lsn FROM {_slots(destination)} WHERE slot = ?", [slot]).fetchone()
    if row is None or _lsn(row[0]) < _lsn(lsn):
        if row is None:
            run(destination.conn, f"INSERT INTO {_slots(destination)} (slot, lsn) VALUES (?, ?)", [slot, lsn])
        else:
            run(
                destination.conn,
                f"UPDATE {_slots(destination)} SET lsn = ?, updated_at = now() WHERE slot = ?",
                [lsn, slot],
            )


def _lsn(text: str) -> int:
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


class _ArrayJson:
    """PostgreSQL array text -> the JSON the snapshot stores, by the source's own ``to_json``."""

    def __init__(self, source: SourceConnect | None) -> None:
        self.source = source
        self.conn: psycopg2.extensions.connection | None = None

    def __call__(self, column: Column, values: list[str]) -> list[str]:
        if self.source is None:
            raise LoadError(f"column {column.name}: an array needs the source to convert it to JSON for DuckDB")
        if self.conn is None:
            self.conn = self.source()
        conn = self.conn
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL(
                    "SELECT to_json(v::{})::text FROM unnest(%s::text[]) WITH ORDINALITY AS u(v, i) ORDER BY i"
                ).format(sql.SQL(_array_type(column))),
                (values,),
            )
            converted = [row[0] for row in cur.fetchall()]
        conn.rollback()
        return converted

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def _array_type(column: Column) -> str:
    """The array's type as the source knows it (enum and domain arrays included: to_json reads their text)."""
    return column.type if bare_type(column.type) in BUILTIN_TYPES else "text[]"


def _soft_column(destination: DuckDBDestination, table: SelectedTable) -> None:
    run(
        destination.conn,
        f"ALTER TABLE {destination.target(table)} ADD COLUMN IF NOT EXISTS {dq(DELETED_AT)} TIMESTAMPTZ",
    )


def _csv_field(value: Value) -> str:
    if value is None or value is UNCHANGED:
        return ""
    if isinstance(value, bytes):
        raise LoadError("log-based apply reads text values; the stream sent a binary one")
    return '"' + value.replace('"', '""') + '"'  # type: ignore[union-attr]


def _write_csv(rows: list[list[Value]], path: str) -> None:
    with open(path, "w", encoding="utf-8", newline="") as spool:
        for row in rows:
            spool.write(",".join(map(_csv_field, row)) + "\n")


def _stage(destination: DuckDBDestination, name: str, rows: list[list[Value]], exprs: list[str], path: str) -> None:
    """Rows of text (None: NULL) as a temp table, each column converted by its SQL expression (on c0, c1, …)."""
    _write_csv(rows, path)
    source = csv_source(len(rows[0]) if rows else len(exprs))
    run(destination.conn, f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT {', '.join(exprs)} FROM {source}", [path])


def _apply_table(
    destination: DuckDBDestination,
    table: SelectedTable,
    changes: list[RowChange],
    report: ApplyReport,
    soft_deletes: bool,
    arrays: _ArrayJson,
    batch_id: str,
) -> None:
    if not table.primary_key:
        raise LoadError("log-based apply needs a primary key in the destination. Fix: `primary_key:` in the selection")
    c, target = destination.conn, destination.target(table)
    columns = list(table.columns)
    names = [col.name for col in columns]
    key_at = [names.index(k) for k in table.primary_key]
    fd, path = tempfile.mkstemp(prefix="rds_pipeline_cdc_", suffix=".csv")
    os.close(fd)
    try:
        upserts = [ch for ch in changes if ch.op != DELETE]
        deletes = [ch for ch in changes if ch.op == DELETE]
        rows = [list(ch.values) for ch in upserts]
        for i, column in enumerate(columns):  # arrays: the source's to_json, as the snapshot query does
            if column.kind == "array":
                present = [r for r in rows if isinstance(r[i], str)]
                texts = [str(r[i]) for r in present]
                for row, value in zip(present, arrays(column, texts), strict=True):
                    row[i] = value
        as_text: set[str] = set()
        if rows:  # numeric columns holding NaN become VARCHAR, decided as the loader decides
            _write_csv(rows, path)
            as_text = destination.decimals_as_text(table, csv_source(len(columns)), path)
        if soft_deletes:
            _soft_column(destination, table)
        destination.ensure_table(table, as_text)
        report.upserted.setdefault(table.id, 0)

        def converted(i: int, column: Column) -> str:
            return f"c{i}" if column.name in as_text else convert(f"c{i}", column)

        keys = " AND ".join(f"t.{dq(k)} = s.{dq(k)}" for k in table.primary_key)
        # the upserts staged first: a key change's UNCHANGED values are read from its old row before the deletes
        if upserts:
            staged = [
                [
                    *row,
                    "".join("1" if v is UNCHANGED else "0" for v in ch.values),
                    *(ch.moved_from or [None] * len(key_at)),
                ]
                for row, ch in zip(rows, upserts, strict=True)
            ]
            exprs = [f"{converted(i, col)} AS {dq(col.name)}" for i, col in enumerate(columns)]
            exprs.append(f"c{len(columns)} AS _rds_u")
            exprs += [f"{converted(len(columns) + 1 + j, columns[i])} AS _rds_old{j}" for j, i in enumerate(key_at)]
            _stage(destination, "_rds_changed", staged, exprs, path)
            # a key change that left TOASTed values: they are under the old key, whose row is still there unless a
            # re-snapshot already holds the new key (then the new key's current values are kept, as in PostgreSQL)
            old_keys = " AND ".join(f"t.{dq(k)} = s._rds_old{j}" for j, k in enumerate(table.primary_key))
            moved = any(ch.moved_from is not None for ch in upserts)
            for i, name in enumerate(names if moved else []):
                run(
                    c,
                    f"UPDATE _rds_changed s SET {dq(name)} = t.{dq(name)}, _rds_u = overlay(s._rds_u PLACING '0' FROM {i + 1}) "
                    f"FROM {target} t WHERE {old_keys} AND substr(s._rds_u, {i + 1}, 1) = '1' AND s._rds_old0 IS NOT NULL",
                )
        if deletes:
            key_rows: list[list[Value]] = [[*ch.values, _time(ch.at)] for ch in deletes]
            exprs = [f"{converted(j, columns[i])} AS {dq(names[i])}" for j, i in enumerate(key_at)]
            exprs.append(f"CAST(c{len(key_at)} AS TIMESTAMPTZ) AS _rds_at")
            _stage(destination, "_rds_deleted", key_rows, exprs, path)
            if soft_deletes:
                deleted = run(
                    c,
                    f"UPDATE {target} t SET {dq(DELETED_AT)} = coalesce(s._rds_at, now()) FROM _rds_deleted s WHERE {keys} "
                    f"AND t.{dq(DELETED_AT)} IS NULL",
                )
            else:
                deleted = run(c, f"DELETE FROM {target} t WHERE EXISTS (SELECT 1 FROM _rds_deleted s WHERE {keys})")
            report.deleted[table.id] = report.deleted.get(table.id, 0) + int(one(deleted.fetchone())[0])
            c.execute("DROP TABLE _rds_deleted")
        if not upserts:
            return
        missing = one(
            run(
                c,
                f"SELECT count(*) FROM _rds_changed s WHERE s._rds_u LIKE '%1%' AND NOT EXISTS "
                f"(SELECT 1 FROM {target} t WHERE {keys})",
            ).fetchone()
        )[0]
        if missing:
            raise LoadError(
                "the stream updated rows the destination does not hold, leaving TOASTed values unchanged: "
                "the replica is missing rows. Fix: re-snapshot the table (rds-pipeline reset)"
            )
        partial = [
            f"{dq(n)} = CASE WHEN substr(s._rds_u, {i + 1}, 1) = '1' THEN t.{dq(n)} ELSE s.{dq(n)} END"
            for i, n in enumerate(names)
            if n not in table.primary_key
        ]
        refresh = [f"{dq(EXTRACTED_AT)} = now()", f"{dq(BATCH_ID)} = ?"] + (
            [f"{dq(DELETED_AT)} = NULL"] if soft_deletes else []
        )
        if partial:
            run(
                c,
                f"UPDATE {target} t SET {', '.join(partial + refresh)} FROM _rds_changed s WHERE {keys} "
                "AND s._rds_u LIKE '%1%'",
                [f"lsn:{batch_id}"],
            )
        run(
            c,
            f"DELETE FROM {target} t WHERE EXISTS (SELECT 1 FROM _rds_changed s WHERE {keys} AND s._rds_u NOT LIKE '%1%')",
        )
        col_list = ", ".join(dq(n) for n in names)
        run(
            c,
            f"INSERT INTO {target} ({col_list}, {dq(EXTRACTED_AT)}, {dq(BATCH_ID)}) SELECT {col_list}, now(), ? "
            "FROM _rds_changed WHERE _rds_u NOT LIKE '%1%'",
            [f"lsn:{batch_id}"],
        )
        report.upserted[table.id] += len(upserts)
        c.execute("DROP TABLE _rds_changed")
    finally:
        Path(path).unlink(missing_ok=True)


def _time(microseconds: int | None) -> str | None:
    return None if microseconds is None else timestamp(microseconds).isoformat()


class DuckDBApplier:
    """``ChangeApplier`` (``base.py``) for DuckDB, on the destination's connection."""

    takes_copy_rows = False  # it reads values (its own raw reader and per-key collapse)

    def __init__(self, destination: DuckDBDestination) -> None:
        self.destination = destination

    def lock_slot(self, slot: str) -> None:
        """A DuckDB file has one writing process at a time: opening it already waited for any other run."""

    def unlock_slot(self, slot: str) -> None:
        """Nothing to release: the file's lock goes with the connection."""

    def mark_reading(self, slot: str, reading: bool) -> None:
        _ensure_slots(self.destination)
        run(self.destination.conn, f"UPDATE {_slots(self.destination)} SET reading = ? WHERE slot = ?", [reading, slot])

    def was_reading(self, slot: str) -> bool:
        _ensure_slots(self.destination)
        row = run(
            self.destination.conn, f"SELECT reading FROM {_slots(self.destination)} WHERE slot = ?", [slot]
        ).fetchone()
        return bool(row and row[0])

    def applied_lsn(self, slot: str) -> str | None:
        _ensure_slots(self.destination)
        row = run(
            self.destination.conn, f"SELECT lsn FROM {_slots(self.destination)} WHERE slot = ?", [slot]
        ).fetchone()
        return row[0] if row else None

    def slot_age_seconds(self, slot: str) -> int | None:
        _ensure_slots(self.destination)
        row = run(
            self.destination.conn,
            f"SELECT CAST(epoch(now() - updated_at) AS BIGINT) FROM {_slots(self.destination)} WHERE slot = ?",
            [slot],
        ).fetchone()
        return row[0] if row else None

    def record_lsn(self, slot: str, lsn: str) -> None:
        with self._transaction():
            _write_lsn(self.destination, slot, lsn)

    def snapshot_lsns(self, slot: str) -> dict[str, str]:
        rows = run(
            self.destination.conn,
            f"SELECT s.table_id, s.bookmark, s.destination_table FROM {self.destination.state_table()} s "
            "WHERE s.replication_key = ? AND s.bookmark IS NOT NULL",
            [SLOT_MARK + slot],
        ).fetchall()
        existing = {
            r[0]
            for r in run(
                self.destination.conn,
                "SELECT table_name FROM duckdb_tables() WHERE database_name = ? AND schema_name = ?",
                [self.destination.catalog, self.destination.schema],
            ).fetchall()
        }
        return {table_id: lsn for table_id, lsn, name in rows if name in existing}

    def record_snapshot(self, table: SelectedTable, slot: str, lsn: str) -> None:
        with self._transaction():
            run(
                self.destination.conn,
                f"INSERT OR REPLACE INTO {self.destination.state_table()} (table_id, destination_table, "
                "replication_key, bookmark, updated_at, covered_to) VALUES (?, ?, ?, ?, now(), NULL)",
                [table.id, table.destination_table, SLOT_MARK + slot, lsn],
            )
            self._drop_chunks(slot, table.id)

    def record_chunk(self, table: SelectedTable, slot: str, upper: int | None, lsn: str) -> None:
        run(
            self.destination.conn,
            f"CREATE TABLE IF NOT EXISTS {self._chunks()} (slot VARCHAR NOT NULL, table_id VARCHAR NOT NULL, "
            "upper_key BIGINT, lsn VARCHAR NOT NULL, recorded_at TIMESTAMPTZ NOT NULL DEFAULT now())",
        )
        run(
            self.destination.conn,
            f"INSERT INTO {self._chunks()} (slot, table_id, upper_key, lsn) VALUES (?, ?, ?, ?)",
            [slot, table.id, upper, lsn],
        )

    def snapshot_progress(self, slot: str) -> dict[str, list[tuple[int | None, str]]]:
        if not self._has(SNAPSHOT_CHUNKS_TABLE):
            return {}
        found: dict[str, list[tuple[int | None, str]]] = {}
        for table_id, upper, lsn in run(
            self.destination.conn,
            f"SELECT table_id, upper_key, lsn FROM {self._chunks()} WHERE slot = ? "
            "ORDER BY table_id, upper_key NULLS LAST",
            [slot],
        ).fetchall():
            found.setdefault(table_id, []).append((upper, lsn))
        return found

    def _chunks(self) -> str:
        return f"{dq(self.destination.catalog)}.{dq(self.destination.schema)}.{dq(SNAPSHOT_CHUNKS_TABLE)}"

    def _has(self, table: str) -> bool:
        found = run(
            self.destination.conn,
            "SELECT count(*) FROM duckdb_tables() WHERE database_name = ? AND schema_name = ? AND table_name = ?",
            [self.destination.catalog, self.destination.schema, table],
        ).fetchone()
        return bool(found and found[0])

    def _drop_chunks(self, slot: str, table_id: str | None = None) -> None:
        """Forget chunk progress under ``slot`` (one table's, or all), in the caller's transaction."""
        if self._has(SNAPSHOT_CHUNKS_TABLE):
            run(
                self.destination.conn,
                f"DELETE FROM {self._chunks()} WHERE slot = ? AND (CAST(? AS VARCHAR) IS NULL OR table_id = ?)",
                [slot, table_id, table_id],
            )

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self.destination.conn.execute("BEGIN TRANSACTION")
        try:
            yield
            self.destination.conn.execute("COMMIT")
        except BaseException:
            self.destination.conn.execute("ROLLBACK")
            raise

    def forget_table(self, slot: str, table_id: str) -> None:
        with self._transaction():
            run(
                self.destination.conn,
                f"DELETE FROM {self.destination.state_table()} WHERE table_id = ? AND replication_key = ?",
                [table_id, SLOT_MARK + slot],
            )
            self._drop_chunks(slot, table_id)

    def forget_slot(self, slot: str, lost: str | None = None) -> int:
        _ensure_slots(self.destination)
        events = f"{dq(self.destination.catalog)}.{dq(self.destination.schema)}.{dq(SLOT_EVENTS_TABLE)}"
        if lost is not None:
            run(
                self.destination.conn,
                f"CREATE TABLE IF NOT EXISTS {events} (slot VARCHAR NOT NULL, lost_at TIMESTAMPTZ NOT NULL DEFAULT "
                "now(), lost VARCHAR NOT NULL, tables INTEGER NOT NULL)",
            )
        with self._transaction():
            run(self.destination.conn, f"DELETE FROM {_slots(self.destination)} WHERE slot = ?", [slot])
            count = one(
                run(
                    self.destination.conn,
                    f"DELETE FROM {self.destination.state_table()} WHERE replication_key = ?",
                    [SLOT_MARK + slot],
                ).fetchone()
            )[0]
            self._drop_chunks(slot)
            if lost is not None:
                run(
                    self.destination.conn,
                    f"INSERT INTO {events} (slot, lost, tables) VALUES (?, ?, ?)",
                    [slot, lost, int(count)],
                )
        return int(count)

    def slot_lost(self, slot: str) -> tuple[dt.datetime, str] | None:
        if not self._has(SLOT_EVENTS_TABLE):
            return None
        events = f"{dq(self.destination.catalog)}.{dq(self.destination.schema)}.{dq(SLOT_EVENTS_TABLE)}"
        row = run(
            self.destination.conn,
            f"SELECT lost_at, lost FROM {events} WHERE slot = ? ORDER BY lost_at DESC LIMIT 1",
            [slot],
        ).fetchone()
        return (row[0], row[1]) if row else None

    def apply_batch(
        self,
        tables: dict[tuple[str, str], SelectedTable],
        batch: ChangeBatch,
        slot: str,
        soft_deletes: bool = False,
        source: SourceConnect | None = None,
    ) -> ApplyReport:
        """Apply ``batch`` and move the slot's LSN to ``batch.end_lsn``, in one DuckDB transaction."""
        report = ApplyReport(lsn=lsn_text(batch.end_lsn) if batch.end_lsn is not None else None)
        c = self.destination.conn
        arrays = _ArrayJson(source)
        c.execute("BEGIN TRANSACTION")
        try:
            for table, changes in batch.in_order(tables):
                if changes is None:  # a TRUNCATE, in its place
                    target = self.destination.target(table)
                    if soft_deletes:
                        _soft_column(self.destination, table)
                        run(c, f"UPDATE {target} SET {dq(DELETED_AT)} = now() WHERE {dq(DELETED_AT)} IS NULL")
                    else:
                        run(c, f"DELETE FROM {target}")
                    report.truncated.append(table.id)
                    continue
                try:
                    _apply_table(self.destination, table, changes, report, soft_deletes, arrays, report.lsn or "")
                except LoadError as exc:
                    raise TableApplyError(table.id, str(exc)) from exc
                except Exception as exc:  # noqa: BLE001 - DuckDB's errors name no table: name it
                    raise TableApplyError(
                        table.id, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0]}"
                    ) from exc
            if report.lsn is not None:
                _write_lsn(self.destination, slot, report.lsn)
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        finally:
            arrays.close()
        return report
