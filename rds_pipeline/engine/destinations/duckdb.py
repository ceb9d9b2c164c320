"""DuckDB destination (a file; the embedded default): the same semantics as PostgreSQL, with a type mapping.

The source streams ``COPY … TO STDOUT (FORMAT csv)`` into a temporary file (memory stays bounded); DuckDB
reads it with ``read_csv`` (every field as text) and converts each column explicitly, so nothing is guessed.
Data, metadata and the bookmark commit in one DuckDB transaction.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb

from rds_pipeline.engine import interrupts
from rds_pipeline.engine.config import IntegrationConfig
from rds_pipeline.engine.core.copy_out import CopyOut
from rds_pipeline.engine.core.digest import digest_columns, float_digits
from rds_pipeline.engine.core.ranges import KeyRange
from rds_pipeline.engine.core.rows import one
from rds_pipeline.engine.core.state import Generation, GenerationStep, TableState
from rds_pipeline.engine.core.types import duckdb_type
from rds_pipeline.engine.destinations.base import (
    BATCH_ID,
    DELETED_AT,
    EXTRACTED_AT,
    GENERATIONS_TABLE,
    META_SCHEMA,
    REGISTRY,
    REPLACING,
    STATE_TABLE,
    Destination,
    LoadingReport,
    LoadOutcome,
    check_progress,
    next_table,
    overlap,
    rename_refusal,
    xmin_outcome,
)
from rds_pipeline.engine.destinations.duckdb_apply import DuckDBApplier
from rds_pipeline.engine.destinations.duckdb_sql import convert, csv_source, dq, run
from rds_pipeline.engine.errors import DestinationBusy
from rds_pipeline.engine.quoting import quote_literal
from rds_pipeline.engine.selection import SelectedTable
from rds_pipeline.engine.source.catalog import Column

log = logging.getLogger(__name__)
LOCK_WAIT_SECONDS = 120


# DuckDB spills past this; with no key index to hold, a 10M-row load stays near 200 MB of resident memory
MEMORY_LIMIT = "128MB"


_ALIASES = {
    "TIMESTAMPTZ": "TIMESTAMP WITH TIME ZONE",
    "TIMETZ": "TIME WITH TIME ZONE",
    "FLOAT": "FLOAT",
    "REAL": "FLOAT",
    "FLOAT4": "FLOAT",
    "FLOAT8": "DOUBLE",
    "INT": "INTEGER",
    "INT4": "INTEGER",
    "INT8": "BIGINT",
    "INT2": "SMALLINT",
    "BOOL": "BOOLEAN",
    "STRING": "VARCHAR",
    "TEXT": "VARCHAR",
}


def _converted(table: SelectedTable, as_text: set[str]) -> str:
    """The SELECT list turning the CSV's columns c0… into the table's columns (``as_text``: kept as text)."""
    return ", ".join(
        f"{f'c{i}' if c.name in as_text else convert(f'c{i}', c)} AS {dq(c.name)}" for i, c in enumerate(table.columns)
    )


def _float_text(col: str, digits: int) -> str:
    """A float as ``core/digest.row_text`` writes it for this destination: ``%.<digits>e`` (DuckDB's own text
    of a float is not always PostgreSQL's: other exponent thresholds, and now and then other digits)."""
    return (
        f"CASE WHEN isnan({col}) THEN 'NaN' WHEN isinf({col}) AND {col} > 0 THEN 'Infinity' "
        f"WHEN isinf({col}) THEN '-Infinity' ELSE printf('%.{digits}e', {col}) END"
    )


def _canonical(type_name: str) -> str:
    """DuckDB reports TIMESTAMPTZ as 'TIMESTAMP WITH TIME ZONE': compare types by one spelling."""
    upper = type_name.upper().strip()
    return _ALIASES.get(upper, upper)


class DuckDBDestination:
    """``Destination`` (``base.py``) in a DuckDB file: rows through a CSV spool, one writer at a time."""

    kind = "duckdb"
    copy_csv = True
    array_as_json = True
    accepts_binary_copy = False
    parallel_loads = False  # one writer per file: chunks load one after another

    def changes(self) -> DuckDBApplier:
        return DuckDBApplier(self)

    @contextmanager
    def fresh(self) -> Iterator[DuckDBDestination]:
        """This same connection: a DuckDB file takes one writer (``parallel_loads`` is False)."""
        yield self

    def __init__(self, path: Path, schema: str, lock_wait_seconds: float = LOCK_WAIT_SECONDS) -> None:
        self.path = path
        self.schema = schema
        self.lock_wait_seconds = lock_wait_seconds
        self.conn = self._connect()
        self._stop_handle = interrupts.register(
            "duckdb", lambda: self.conn.interrupt()
        )  # a stop request ends a statement
        # qualify every name with the file's catalog: a schema named like the file would be ambiguous
        self.catalog: str = one(self.conn.execute("SELECT current_database()").fetchone())[0]

    def _connect(self) -> duckdb.DuckDBPyConnection:
        """Open the file, waiting while another process holds DuckDB's single-writer lock."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.lock_wait_seconds
        while True:
            try:
                conn = duckdb.connect(str(self.path))
                conn.execute("SET TimeZone = 'UTC'")
                # bounded memory: DuckDB spills to disk past this instead of growing with the table
                conn.execute("SET memory_limit = " + quote_literal(MEMORY_LIMIT))
                conn.execute("SET preserve_insertion_order = false")
                return conn
            except duckdb.IOException as exc:
                if "lock" not in str(exc).lower():
                    raise
                if time.monotonic() > deadline:
                    raise DestinationBusy(
                        f"the DuckDB file {self.path} is held by another process (DuckDB allows one writer), "
                        f"still after {self.lock_wait_seconds:.0f} s. Fix: let the run writing it finish (Dagster's "
                        "runs into one file wait in its pool), or close the program that has it open, then retry"
                    ) from exc
                time.sleep(0.5)

    def reconnect(self) -> None:
        self.conn.close()
        self.conn = self._connect()

    def close(self) -> None:
        interrupts.unregister(self._stop_handle)
        self.conn.close()

    def target(self, table: SelectedTable) -> str:
        return f"{dq(self.catalog)}.{dq(self.schema)}.{dq(table.destination_table)}"

    def state_table(self) -> str:
        return f"{dq(self.catalog)}.{dq(self.schema)}.{dq(STATE_TABLE)}"

    def generations_table(self) -> str:
        return f"{dq(self.catalog)}.{dq(self.schema)}.{dq(GENERATIONS_TABLE)}"

    # -- integration and state -----------------------------------------------------------------------------
    def prepare(self, config: IntegrationConfig) -> None:
        """As for PostgreSQL: the registry is keyed by integration; a rename (same tables) is refused."""
        c = self.conn
        meta = f"{dq(self.catalog)}.{dq(META_SCHEMA)}"
        c.execute("BEGIN TRANSACTION")
        try:
            run(c, f"CREATE SCHEMA IF NOT EXISTS {meta}")
            run(
                c,
                f"CREATE TABLE IF NOT EXISTS {meta}.{dq(REGISTRY)} (schema_name VARCHAR PRIMARY KEY, "
                "integration_name VARCHAR NOT NULL, source_key VARCHAR NOT NULL)",
            )
            if self._table_exists(META_SCHEMA, "integrations"):  # the registry of earlier versions
                run(
                    c,
                    f"INSERT OR IGNORE INTO {meta}.{dq(REGISTRY)} SELECT schema_name, integration_name, source_key "
                    f"FROM {meta}.integrations",
                )
            others = run(
                c,
                f"SELECT schema_name, integration_name FROM {meta}.{dq(REGISTRY)} WHERE source_key = ? "
                "AND schema_name <> ?",
                [config.source_key, self.schema],
            ).fetchall()
            for other_schema, other_name in others:
                shared = overlap(config.selected_ids(), self._loaded_tables(other_schema))
                if shared and not config.allow_integration_rename:
                    raise rename_refusal(other_name, other_schema, config.integration_name, self.schema, shared)
            run(
                c,
                f"INSERT OR REPLACE INTO {meta}.{dq(REGISTRY)} VALUES (?, ?, ?)",
                [self.schema, config.integration_name, config.source_key],
            )
            run(c, f"CREATE SCHEMA IF NOT EXISTS {dq(self.catalog)}.{dq(self.schema)}")
            run(
                c,
                f"CREATE TABLE IF NOT EXISTS {self.state_table()} (table_id VARCHAR PRIMARY KEY, destination_table "
                "VARCHAR NOT NULL, replication_key VARCHAR, bookmark VARCHAR, updated_at TIMESTAMPTZ)",
            )
            run(c, f"ALTER TABLE {self.state_table()} ADD COLUMN IF NOT EXISTS covered_to VARCHAR")
            run(
                c,
                f"CREATE TABLE IF NOT EXISTS {self.generations_table()} (table_id VARCHAR PRIMARY KEY, next_table "
                "VARCHAR NOT NULL, since VARCHAR NOT NULL, pages BIGINT NOT NULL, copied BIGINT NOT NULL, copy_done "
                "BOOLEAN NOT NULL, swept BIGINT NOT NULL, rows BIGINT NOT NULL, started_at TIMESTAMPTZ, "
                "updated_at TIMESTAMPTZ)",
            )
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def _table_exists(self, schema: str, name: str) -> bool:
        return bool(
            one(
                self.conn.execute(
                    "SELECT count(*) FROM duckdb_tables() WHERE database_name = ? AND schema_name = ? AND table_name = ?",
                    [self.catalog, schema, name],
                ).fetchone()
            )[0]
        )

    def _loaded_tables(self, schema: str) -> list[str]:
        if not self._table_exists(schema, STATE_TABLE):
            return []
        return [
            r[0]
            for r in run(
                self.conn, f"SELECT table_id FROM {dq(self.catalog)}.{dq(schema)}.{dq(STATE_TABLE)}"
            ).fetchall()
        ]

    def _exists(self, table: SelectedTable) -> bool:
        return self._table_exists(self.schema, table.destination_table)

    def table_state(self, table: SelectedTable) -> TableState:
        generation = None
        if self._table_exists(self.schema, next_table(table.destination_table)):
            found = run(
                self.conn,
                f"SELECT since, pages, copied, copy_done, swept, rows FROM {self.generations_table()} "
                "WHERE table_id = ?",
                [table.id],
            ).fetchone()
            generation = Generation(*found) if found else None
        if not self._exists(table):
            return TableState(False, generation=generation)
        row = run(
            self.conn, f"SELECT bookmark, covered_to FROM {self.state_table()} WHERE table_id = ?", [table.id]
        ).fetchone()
        bookmark, covered_to = row or (None, None)
        return TableState(True, bookmark, covered_to, generation)

    def read_bookmark(self, table: SelectedTable) -> str | None:
        return self.table_state(table).bookmark

    def read_bookmarks(self) -> dict[str, str | None]:
        """Every table's bookmark; none for a table whose destination table is gone (its state is void)."""
        rows = run(self.conn, f"SELECT table_id, destination_table, bookmark FROM {self.state_table()}").fetchall()
        return {
            table_id: bookmark if self._table_exists(self.schema, name) else None for table_id, name, bookmark in rows
        }

    def read_sync_times(self) -> dict[str, dt.datetime]:
        """When each table's state last moved: its last committed load."""
        return dict(run(self.conn, f"SELECT table_id, updated_at FROM {self.state_table()}").fetchall())

    def read_generations(self) -> dict[str, Generation]:
        rows = run(
            self.conn,
            f"SELECT table_id, next_table, since, pages, copied, copy_done, swept, rows FROM {self.generations_table()}",
        ).fetchall()
        return {r[0]: Generation(*r[2:]) for r in rows if self._table_exists(self.schema, r[1])}

    def reset(self, table: SelectedTable) -> None:
        self.conn.execute("BEGIN TRANSACTION")
        run(self.conn, f"DELETE FROM {self.state_table()} WHERE table_id = ?", [table.id])
        run(self.conn, f"DELETE FROM {self.generations_table()} WHERE table_id = ?", [table.id])
        run(self.conn, f"DROP TABLE IF EXISTS {self.target(table)}")
        nxt = dataclasses.replace(table, destination_table=next_table(table.destination_table))
        run(self.conn, f"DROP TABLE IF EXISTS {self.target(nxt)}")
        self.conn.execute("COMMIT")

    def row_count(self, table: SelectedTable) -> int:
        return int(one(run(self.conn, f"SELECT count(*) FROM {self.target(table)}").fetchone())[0])

    # -- table shape ---------------------------------------------------------------------------------------
    def _existing_types(self, table: SelectedTable) -> dict[str, str]:
        return dict(
            self.conn.execute(
                "SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = ? "
                "AND schema_name = ? AND table_name = ?",
                [self.catalog, self.schema, table.destination_table],
            ).fetchall()
        )

    def decimals_as_text(self, table: SelectedTable, source: str, csv_path: str) -> set[str]:
        """numeric(p,s) columns that must be VARCHAR: DECIMAL cannot hold NaN (PostgreSQL's numeric can). Decided
        from the data: a column already widened to VARCHAR stays so, and one whose rows hold NaN is widened."""
        decimals = [(i, c.name) for i, c in enumerate(table.columns) if duckdb_type(c).startswith("DECIMAL")]
        if not decimals:
            return set()
        existing = self._existing_types(table)
        text = {name for _, name in decimals if _canonical(existing.get(name, "")) == "VARCHAR"}
        unknown = [(i, name) for i, name in decimals if name not in text]
        if unknown:
            flags = one(
                run(
                    self.conn,
                    f"SELECT {', '.join(f'coalesce(bool_or(c{i} = {chr(39)}NaN{chr(39)}), false)' for i, _ in unknown)} "
                    f"FROM {source}",
                    [csv_path],
                ).fetchone()
            )
            text |= {name for (_, name), nan in zip(unknown, flags, strict=True) if nan}
        return text

    def ensure_table(
        self, table: SelectedTable, as_text: set[str] | frozenset[str] = frozenset()
    ) -> tuple[list[str], bool]:
        existing = {
            name: kind
            for name, kind in self.conn.execute(
                "SELECT column_name, data_type FROM duckdb_columns() WHERE database_name = ? AND schema_name = ? "
                "AND table_name = ?",
                [self.catalog, self.schema, table.destination_table],
            ).fetchall()
        }
        target = self.target(table)
        warnings: list[str] = []

        def wanted_type(column: Column) -> str:
            return "VARCHAR" if column.name in as_text else duckdb_type(column)

        if not existing:
            columns = [f"{dq(c.name)} {wanted_type(c)}" for c in table.columns]
            columns += [f"{dq(EXTRACTED_AT)} TIMESTAMPTZ", f"{dq(BATCH_ID)} VARCHAR"]
            # no PRIMARY KEY: DuckDB keeps a key's ART index whole in memory (about 250 MB at 10M rows, past any
            # memory_limit), and the upsert does not need it; the key part of the table's check scans instead
            run(self.conn, f"CREATE TABLE {target} ({', '.join(columns)})")
            return warnings, True
        for column in table.columns:
            wanted = wanted_type(column)
            if column.name not in existing:
                run(self.conn, f"ALTER TABLE {target} ADD COLUMN {dq(column.name)} {wanted}")
                warnings.append(f"column {column.name} ({wanted}) added to {self.schema}.{table.destination_table}")
            elif _canonical(existing[column.name]) != _canonical(wanted):
                old = existing[column.name]
                run(self.conn, f"ALTER TABLE {target} ALTER COLUMN {dq(column.name)} TYPE {wanted}")
                if column.name in as_text:
                    warnings.append(
                        f"column {column.name} holds NaN, which DECIMAL cannot: stored as VARCHAR "
                        f"(PostgreSQL's text form) from now on, was {old}"
                    )
                else:
                    warnings.append(f"column {column.name} changed type {old} -> {wanted} (existing values cast)")
        selected = {c.name for c in table.columns}
        for name in existing:
            if name not in selected and name not in (EXTRACTED_AT, BATCH_ID):
                warnings.append(f"column {name} is no longer replicated; kept in the destination, NULL in new rows")
        for warning in warnings:
            log.warning("%s: %s", table.id, warning)
        return warnings, False

    # -- loading -------------------------------------------------------------------------------------------
    def _predicate(self, table: SelectedTable, key_range: KeyRange) -> tuple[str, list[Any]]:
        if key_range.column is None or (key_range.lower is None and key_range.upper is None):
            return "", []
        column = next(c for c in table.columns if c.name == key_range.column)
        kind, col = duckdb_type(column), dq(key_range.column)
        parts, params = [], []
        if key_range.lower is not None:
            parts.append(f"{col} >= CAST(? AS {kind})")
            params.append(str(key_range.lower))
        if key_range.upper is not None:
            parts.append(f"{col} {'<=' if key_range.upper_inclusive else '<'} CAST(? AS {kind})")
            params.append(str(key_range.upper))
        where = " AND ".join(parts)
        if key_range.include_nulls:
            where = f"({where}) OR {col} IS NULL"
        return f" WHERE {where}", params

    def load(
        self,
        table: SelectedTable,
        key_range: KeyRange,
        copy: CopyOut,
        batch_id: str,
        source_max: str | None = None,
        turn: Callable[[], None] | None = None,
        generation: GenerationStep | None = None,
        set_bookmark: str | None = None,
    ) -> tuple[LoadingReport, LoadOutcome]:
        started = time.monotonic()
        report = LoadingReport(table.id, f"{self.schema}.{table.destination_table}", table.method, batch_id=batch_id)
        name = ""
        try:
            name = self._spool(copy)
            source = csv_source(len(table.columns))
            as_text = self.decimals_as_text(table, source, name)
            converted = _converted(table, as_text)
            col_list = ", ".join(dq(c.name) for c in table.columns)
            target = self.target(table)
            c = self.conn
            if generation is not None:
                c.execute("BEGIN TRANSACTION")
                try:
                    self._load_generation(table, report, generation, source, name, converted, as_text)
                    c.execute("DROP TABLE IF EXISTS _rds_stage")
                    c.execute("COMMIT")  # the chunk's rows and the generation's progress (or the swap) together
                except BaseException:
                    c.execute("ROLLBACK")
                    raise
                report.seconds = time.monotonic() - started
                report.committed_at = dt.datetime.now(dt.UTC)
                return report, LoadOutcome(None, None)
            c.execute("BEGIN TRANSACTION")
            try:
                warnings, created = self.ensure_table(table, as_text)
                report.warnings = tuple(warnings)
                if turn is not None:
                    turn()
                if created:  # a new table voids any old state row: the data it described is gone
                    run(c, f"DELETE FROM {self.state_table()} WHERE table_id = ?", [table.id])
                state = (
                    None
                    if created
                    else run(
                        c, f"SELECT bookmark, covered_to FROM {self.state_table()} WHERE table_id = ?", [table.id]
                    ).fetchone()
                )
                before, covered = state or (None, None)
                outcome = LoadOutcome(before, before)
                key = table.replication_key
                if table.method in REPLACING:
                    # straight from the file into the table: no stage (it would hold the whole copy once more)
                    where, params = self._predicate(table, key_range)
                    report.rows_deleted = int(one(run(c, f"DELETE FROM {target}{where}", params).fetchone())[0])
                    report.rows_inserted = int(
                        one(
                            run(
                                c,
                                f"INSERT INTO {target} ({col_list}, {dq(EXTRACTED_AT)}, {dq(BATCH_ID)}) "
                                f"SELECT {converted}, now(), ? FROM {source}",
                                [batch_id, name],
                            ).fetchone()
                        )[0]
                    )
                    report.rows_at_commit = report.rows_inserted  # the range was emptied in this transaction
                else:
                    raw_key = f", c{[col.name for col in table.columns].index(key)} AS _raw_key" if key else ""
                    run(c, f"CREATE TEMP TABLE _rds_stage AS SELECT {converted}{raw_key} FROM {source}", [name])
                    report.rows_inserted, report.rows_updated = self._merge(table, col_list, batch_id)
                    outcome = (
                        xmin_outcome(before, set_bookmark)
                        if table.method == "xmin"
                        else self._bookmark(table, key_range, before, covered, source_max)
                    )
                if table.method != "log_based":  # a log-based table's state is its applier's (the snapshot's LSN)
                    run(
                        c,
                        f"INSERT OR REPLACE INTO {self.state_table()} (table_id, destination_table, replication_key, "
                        "bookmark, updated_at, covered_to) VALUES (?, ?, ?, ?, now(), ?)",
                        [table.id, table.destination_table, key, outcome.bookmark_after, outcome.covered_to],
                    )
                c.execute("DROP TABLE IF EXISTS _rds_stage")
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        except BaseException:
            copy.abort()
            raise
        finally:
            if name:
                Path(name).unlink(missing_ok=True)
        report.seconds = time.monotonic() - started
        report.committed_at = dt.datetime.now(dt.UTC)
        return report, outcome

    def _load_generation(
        self,
        table: SelectedTable,
        report: LoadingReport,
        step: GenerationStep,
        source: str,
        csv_path: str,
        converted: str,
        as_text: set[str],
    ) -> None:
        """As for PostgreSQL (``postgres.py``): one chunk into the next generation with its progress; the first
        pass ends by keeping each key once; the swap's chunk replaces the table. The caller commits."""
        c = self.conn
        nxt = dataclasses.replace(table, destination_table=next_table(table.destination_table))
        col_list = ", ".join(dq(col.name) for col in table.columns)
        if step.first:
            run(c, f"DROP TABLE IF EXISTS {self.target(nxt)}")
        self.ensure_table(nxt, as_text)
        if step.sweep:
            run(c, f"CREATE TEMP TABLE _rds_stage AS SELECT {converted} FROM {source}", [csv_path])
            report.rows_inserted, report.rows_updated = self._merge(nxt, col_list, report.batch_id)
        else:
            report.rows_inserted = int(
                one(
                    run(
                        c,
                        f"INSERT INTO {self.target(nxt)} ({col_list}, {dq(EXTRACTED_AT)}, {dq(BATCH_ID)}) "
                        f"SELECT {converted}, now(), ? FROM {source}",
                        [report.batch_id, csv_path],
                    ).fetchone()
                )[0]
            )
        before = run(
            c, f"SELECT rows, copied, copy_done, swept FROM {self.generations_table()} WHERE table_id = ?", [table.id]
        ).fetchone()
        if not step.first:
            check_progress(table, step, before)
        rows = (0 if step.first or before is None else int(before[0])) + report.rows_inserted
        if step.copy_done and not step.sweep and table.primary_key:
            # a row updated during the first pass may have been read twice: keep the later read (the sweep then
            # brings every row changed since the generation began up to date)
            key = ", ".join(dq(k) for k in table.primary_key)
            dropped = one(
                run(
                    c,
                    f"DELETE FROM {self.target(nxt)} WHERE rowid IN (SELECT rowid FROM (SELECT rowid, row_number() "
                    f"OVER (PARTITION BY {key} ORDER BY rowid DESC) AS n FROM {self.target(nxt)}) WHERE n > 1)",
                ).fetchone()
            )[0]
            rows -= int(dropped)
        if step.swap:
            report.rows_at_commit = int(one(run(c, f"SELECT count(*) FROM {self.target(nxt)}").fetchone())[0])
            report.source_rows = rows
            report.rows_deleted = self._swap(table, nxt, as_text)
            run(c, f"DELETE FROM {self.generations_table()} WHERE table_id = ?", [table.id])
            run(
                c,
                f"INSERT OR REPLACE INTO {self.state_table()} (table_id, destination_table, replication_key, "
                "bookmark, updated_at, covered_to) VALUES (?, ?, ?, NULL, now(), NULL)",
                [table.id, table.destination_table, table.replication_key],
            )
            return
        run(
            c,
            f"INSERT OR REPLACE INTO {self.generations_table()} (table_id, next_table, since, pages, copied, "
            "copy_done, swept, rows, started_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, "
            f"{'now()' if step.first else f'(SELECT started_at FROM {self.generations_table()} WHERE table_id = ?)'}"
            ", now())",
            [table.id, nxt.destination_table, *step.progress(rows), *([] if step.first else [table.id])],
        )

    def _swap(self, table: SelectedTable, nxt: SelectedTable, as_text: set[str]) -> int:
        """The next generation becomes the table; returns the old rows replaced. Dropped and renamed, unless the
        table keeps columns the source no longer has: then its rows are replaced and those columns stay."""
        c, target = self.conn, self.target(table)
        if not self._exists(table):
            run(c, f"ALTER TABLE {self.target(nxt)} RENAME TO {dq(table.destination_table)}")
            return 0
        replaced = int(one(run(c, f"SELECT count(*) FROM {target}").fetchone())[0])
        kept = [col.name for col in table.columns] + [EXTRACTED_AT, BATCH_ID]
        own = set(self._existing_types(table)) - set(kept)
        if own:
            self.ensure_table(table, as_text)
            columns = ", ".join(dq(name) for name in kept)
            run(c, f"DELETE FROM {target}")
            run(c, f"INSERT INTO {target} ({columns}) SELECT {columns} FROM {self.target(nxt)}")
            run(c, f"DROP TABLE {self.target(nxt)}")
        else:
            run(c, f"DROP TABLE {target}")
            run(c, f"ALTER TABLE {self.target(nxt)} RENAME TO {dq(table.destination_table)}")
        return replaced

    # -- verify and repair (replication/compare.py) ------------------------------------------------------------
    floats_rounded = True  # a float's text is compared in %.14e (real: %.5e): see _float_text

    def splits_on(self, column: Column) -> bool:
        """DuckDB orders integers, uuids, dates and timestamps as PostgreSQL does, and text bytewise (the ranges
        of a text key are bytewise on both sides); a value it stores as text (numeric without precision, …)
        would sort as text."""
        kind = duckdb_type(column)
        if kind == "VARCHAR":
            return column.category == "S"
        return kind in ("SMALLINT", "INTEGER", "BIGINT", "UUID", "DATE", "TIMESTAMP", "TIMESTAMPTZ")

    def _text(self, column: Column) -> str:
        """PostgreSQL's ``::text`` of the value (``to_json`` for arrays), as ``core/digest.row_text`` writes it."""
        col, kind = dq(column.name), duckdb_type(column)
        if kind == "BLOB":
            return f"'\\x' || lower(hex({col}))"
        digits = float_digits(column)
        if digits is not None and kind in ("DOUBLE", "FLOAT"):
            return _float_text(col, digits)
        if kind in ("DATE", "TIMESTAMP", "TIMESTAMPTZ"):
            return f"replace(CAST({col} AS VARCHAR), ' (BC)', ' BC')"
        return f"CAST({col} AS VARCHAR)"

    def _row_text(self, columns: list[Column]) -> str:
        return "concat_ws(chr(31), " + ", ".join(f"coalesce({self._text(c)}, chr(30))" for c in columns) + ")"

    def _live(self, table: SelectedTable) -> str:
        return f"{dq(DELETED_AT)} IS NULL" if DELETED_AT in self._existing_types(table) else "true"

    def digest(self, table: SelectedTable, key_range: KeyRange, keys_only: bool) -> tuple[int, int]:
        scope, params = self._scope(table, key_range)
        text = self._row_text(digest_columns(table, keys_only))
        rows, total = one(
            run(
                self.conn,
                f"SELECT count(*), coalesce(sum(CAST('0x' || left(md5({text}), 15) AS BIGINT)), 0) "
                f"FROM {self.target(table)}{scope} AND {self._live(table)}",
                params,
            ).fetchone()
        )
        return int(rows), int(total)

    def _spool(self, copy: CopyOut) -> str:
        """What ``copy`` streams, in a temporary CSV file (its path; the caller removes it, unless this raises)."""
        fd, name = tempfile.mkstemp(prefix="rds_pipeline_", suffix=".csv")
        try:
            copy.start()
            with os.fdopen(fd, "wb") as spool:
                while chunk := copy.pipe.read():
                    spool.write(chunk)
            copy.join()
            if copy.error is not None:
                raise copy.error
        except BaseException:
            Path(name).unlink(missing_ok=True)
            raise
        return name

    @contextmanager
    def _spooled_transaction(self, copy: CopyOut) -> Iterator[str]:
        """What ``copy`` streams, in a temporary CSV file (its path), and a transaction that commits when the
        block ends; on any error it rolls back and ``copy`` is aborted. The file goes either way."""
        name = ""
        try:
            name = self._spool(copy)
            self.conn.execute("BEGIN TRANSACTION")
            try:
                yield name
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
        except BaseException:
            copy.abort()
            raise
        finally:
            if name:
                Path(name).unlink(missing_ok=True)

    def repair_range(self, table: SelectedTable, key_range: KeyRange, copy: CopyOut, batch_id: str) -> LoadingReport:
        started = time.monotonic()
        report = LoadingReport(table.id, f"{self.schema}.{table.destination_table}", "repair", batch_id=batch_id)
        c, target = self.conn, self.target(table)
        with self._spooled_transaction(copy) as name:
            source = csv_source(len(table.columns))
            as_text = self.decimals_as_text(table, source, name)
            converted = _converted(table, as_text)
            col_list = ", ".join(dq(col.name) for col in table.columns)
            self.ensure_table(table, as_text)
            run(c, f"CREATE TEMP TABLE _rds_stage AS SELECT {converted} FROM {source}", [name])
            keep = ""
            if table.primary_key:  # soft-deleted rows stay, unless the source has their key again
                join = " AND ".join(f"t.{dq(k)} = s.{dq(k)}" for k in table.primary_key)
                keep = f" AND ({self._live(table)} OR EXISTS (SELECT 1 FROM _rds_stage s WHERE {join}))"
            scope, params = self._scope(table, key_range)
            report.rows_deleted = int(one(run(c, f"DELETE FROM {target} t{scope}{keep}", params).fetchone())[0])
            inserted = run(
                c,
                f"INSERT INTO {target} ({col_list}, {dq(EXTRACTED_AT)}, {dq(BATCH_ID)}) "
                f"SELECT {col_list}, now(), ? FROM _rds_stage",
                [batch_id],
            )
            report.rows_inserted = int(one(inserted.fetchone())[0])
            c.execute("DROP TABLE _rds_stage")
        report.seconds = time.monotonic() - started
        report.committed_at = dt.datetime.now(dt.UTC)
        return report

    def delete_missing(self, table: SelectedTable, key_range: KeyRange, keys: CopyOut, soft: bool) -> int:
        c, target = self.conn, self.target(table)
        found = f"EXISTS (SELECT 1 FROM _rds_keys k WHERE k.k = {self._row_text(digest_columns(table, True))})"
        with self._spooled_transaction(keys) as name:
            scope, params = self._scope(table, key_range)
            run(c, f"CREATE TEMP TABLE _rds_keys AS SELECT c0 AS k FROM {csv_source(1)}", [name])
            if soft:
                mark = dq(DELETED_AT)
                run(c, f"ALTER TABLE {target} ADD COLUMN IF NOT EXISTS {mark} TIMESTAMPTZ")
                marked = run(c, f"UPDATE {target} SET {mark} = now(){scope} AND {mark} IS NULL AND NOT {found}", params)
                gone = int(one(marked.fetchone())[0])
                # a key that came back at the source is unmarked
                run(c, f"UPDATE {target} SET {mark} = NULL{scope} AND {mark} IS NOT NULL AND {found}", params)
            else:
                gone = int(one(run(c, f"DELETE FROM {target}{scope} AND NOT {found}", params).fetchone())[0])
            c.execute("DROP TABLE _rds_keys")
        return gone

    def _scope(self, table: SelectedTable, key_range: KeyRange) -> tuple[str, list[Any]]:
        """`` WHERE (<the range>)``, to which more conditions are added with AND, and its parameters."""
        where, params = self._predicate(table, key_range)
        return (where or " WHERE true").replace(" WHERE ", " WHERE (", 1) + ")", params

    def _merge(self, table: SelectedTable, col_list: str, batch_id: str) -> tuple[int, int]:
        c, target = self.conn, self.target(table)
        total = int(one(c.execute("SELECT count(*) FROM _rds_stage").fetchone())[0])
        if not table.primary_key:
            run(
                c,
                f"INSERT INTO {target} ({col_list}, {dq(EXTRACTED_AT)}, {dq(BATCH_ID)}) "
                f"SELECT {col_list}, now(), ? FROM _rds_stage",
                [batch_id],
            )
            return total, 0
        pk = ", ".join(dq(k) for k in table.primary_key)
        join = " AND ".join(f"t.{dq(k)} IS NOT DISTINCT FROM s.{dq(k)}" for k in table.primary_key)
        existing = int(
            one(
                run(
                    c, f"SELECT count(*) FROM _rds_stage s WHERE EXISTS (SELECT 1 FROM {target} t WHERE {join})"
                ).fetchone()
            )[0]
        )
        # delete-then-insert is DuckDB's reliable upsert inside one transaction (ON CONFLICT DO UPDATE cannot
        # touch the same key twice in a transaction)
        run(c, f"DELETE FROM {target} t WHERE EXISTS (SELECT 1 FROM _rds_stage s WHERE {join})")
        run(
            c,
            f"INSERT INTO {target} ({col_list}, {dq(EXTRACTED_AT)}, {dq(BATCH_ID)}) "
            f"SELECT DISTINCT ON ({pk}) {col_list}, now(), ? FROM _rds_stage",
            [batch_id],
        )
        return total - existing, existing

    def _le(self, kind: str, low: str, high: str) -> bool:
        """``low <= high`` as values of the key's type (both are PostgreSQL text forms)."""
        return bool(one(run(self.conn, f"SELECT CAST(? AS {kind}) <= CAST(? AS {kind})", [low, high]).fetchone())[0])

    def _greatest(self, kind: str, *values: str | None) -> str | None:
        best = None
        for value in values:
            if value is not None and (best is None or self._le(kind, best, value)):
                best = value
        return best

    def _bookmark(
        self, table: SelectedTable, key_range: KeyRange, before: str | None, covered: str | None, source_max: str | None
    ) -> LoadOutcome:
        """The bookmark rule (``base.py``): move only when contiguous with what was copied, never backwards."""
        key = table.replication_key
        assert key is not None
        column = next(col for col in table.columns if col.name == key)
        kind = duckdb_type(column)
        c = self.conn
        nulls = int(one(run(c, f"SELECT count(*) FROM _rds_stage WHERE {dq(key)} IS NULL").fetchone())[0])
        row = run(
            c, f"SELECT _raw_key FROM _rds_stage WHERE {dq(key)} IS NOT NULL ORDER BY {dq(key)} DESC LIMIT 1"
        ).fetchone()
        seen = row[0] if row else None
        reached = self._greatest(kind, before, covered)
        contiguous = key_range.lower is None or (reached is not None and self._le(kind, str(key_range.lower), reached))
        if not contiguous:
            return LoadOutcome(before, before, nulls, False, covered)
        bookmark = self._greatest(kind, before, seen)
        limit = source_max if source_max is not None else seen
        if key_range.upper is not None and limit is not None:  # an empty source claims nothing
            bound = str(key_range.upper) if self._le(kind, str(key_range.upper), limit) else limit
            covered = self._greatest(kind, covered, bound)
        return LoadOutcome(before, bookmark, nulls, bookmark != before, covered)

    def count_rows(self, table: SelectedTable, key_range: KeyRange) -> int:
        where, params = self._predicate(table, key_range)
        return int(one(run(self.conn, f"SELECT count(*) FROM {self.target(table)}{where}", params).fetchone())[0])

    def primary_key_enforced(self, table: SelectedTable) -> bool:
        """Whether the replica has a PRIMARY KEY constraint on exactly the table's key columns."""
        rows = run(
            self.conn,
            "SELECT constraint_column_names FROM duckdb_constraints() WHERE database_name = ? "
            "AND schema_name = ? AND table_name = ? AND constraint_type = 'PRIMARY KEY'",
            [self.catalog, self.schema, table.destination_table],
        ).fetchall()
        return bool(table.primary_key) and any(sorted(r[0]) == sorted(table.primary_key) for r in rows)

    def duplicate_keys(self, table: SelectedTable) -> int:
        keys = ", ".join(dq(k) for k in table.primary_key)
        query = f"SELECT count(*) FROM (SELECT 1 FROM {self.target(table)} GROUP BY {keys} HAVING count(*) > 1)"
        return int(one(run(self.conn, query).fetchone())[0])

    def column_names(self, table: SelectedTable) -> list[str]:
        rows = run(
            self.conn,
            "SELECT column_name FROM duckdb_columns() WHERE database_name = ? AND schema_name = ? "
            "AND table_name = ? ORDER BY column_index",
            [self.catalog, self.schema, table.destination_table],
        ).fetchall()
        return [r[0] for r in rows]

    def fetch_rows(self, table: SelectedTable) -> list[tuple[Any, ...]]:
        order = ", ".join(dq(c) for c in (table.primary_key or table.column_names))
        cols = ", ".join(dq(c) for c in table.column_names)
        return run(self.conn, f"SELECT {cols} FROM {self.target(table)} ORDER BY {order}").fetchall()


_conforms: type[Destination] = DuckDBDestination  # mypy checks the class against the contract
