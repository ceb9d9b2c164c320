"""PostgreSQL destination: one schema per integration; each load, its bookmark and its metadata commit together.

- Full table (whole, or a primary-key range): ``DELETE`` the range, then ``COPY`` the source's rows, in one
  transaction. Readers keep seeing the old rows (MVCC) until the commit, then the new ones.
- Key-based: ``COPY`` into a temporary stage, upsert by primary key (append without one), and move the bookmark
  in the same transaction.
- Full table in chunks of pages: each chunk commits into the next generation (``next_table``) with its progress;
  the last swaps it in (``_swap``), so readers see the previous copy until the new one is whole.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

from rds_pipeline.engine import interrupts
from rds_pipeline.engine.config import DestinationConfig, IntegrationConfig
from rds_pipeline.engine.core.copy_out import CopyOut
from rds_pipeline.engine.core.digest import digest_columns, digested, row_text
from rds_pipeline.engine.core.ranges import KeyRange
from rds_pipeline.engine.core.rows import one
from rds_pipeline.engine.core.session_settings import apply_session_settings
from rds_pipeline.engine.core.state import Generation, GenerationStep, TableState
from rds_pipeline.engine.core.types import postgres_type
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
from rds_pipeline.engine.destinations.postgres_apply import PostgresApplier
from rds_pipeline.engine.quoting import quote_ident
from rds_pipeline.engine.selection import SelectedTable
from rds_pipeline.engine.source.catalog import Column
from rds_pipeline.engine.source.connection import libpq_params

log = logging.getLogger(__name__)


def _format(copy: CopyOut, freeze: bool = False) -> sql.Composable:
    """The COPY format the source wrote: binary where it is exact (``types.binary_refusal``), else text;
    FREEZE into a table created in the same transaction."""
    options = (["FORMAT binary"] if getattr(copy, "binary", False) else []) + (["FREEZE"] if freeze else [])
    return sql.SQL(f" WITH ({', '.join(options)})") if options else sql.SQL("")


def _copy_in(
    cur: psycopg2.extensions.cursor, into: sql.Composable, table: SelectedTable, copy: CopyOut, freeze: bool = False
) -> int:
    """COPY what ``copy`` streams into ``into``; returns the rows stored (after any trigger). ``freeze``: the
    table was created in this transaction, so the rows are written frozen (no hint-bit rewrite on first read)."""
    columns = sql.SQL(", ").join(sql.Identifier(c.name) for c in table.columns)
    statement = sql.SQL("COPY {} ({}) FROM STDIN{}").format(into, columns, _format(copy, freeze=freeze))
    cur.copy_expert(statement.as_string(cur), copy.pipe, size=1 << 20)
    return int(cur.rowcount)


class PostgresDestination:
    """``Destination`` (``base.py``) on a PostgreSQL database: rows by COPY into the integration's schema."""

    kind = "postgres"
    copy_csv = False
    array_as_json = False
    accepts_binary_copy = True
    parallel_loads = True

    def __init__(self, config: DestinationConfig, schema: str) -> None:
        self.config = config
        self.schema = schema
        self.conn = self._connect()
        # a stop request cancels our statement (its transaction rolls back); libpq's wait is out of Python's reach
        self._stop_handle = interrupts.register("destination", lambda: self.conn.cancel())

    def _connect(self) -> psycopg2.extensions.connection:
        config = self.config
        conn: psycopg2.extensions.connection = psycopg2.connect(
            **libpq_params(
                host=config.host or "",
                port=config.port,
                user=config.user or "",
                password=config.password,
                database=config.database or "",
                ssl=config.ssl,
                connect_timeout=config.connect_timeout,
                options={"lock_timeout": f"{config.lock_timeout_seconds}s"},
            )
        )
        apply_session_settings(conn)
        return conn

    def reconnect(self) -> None:
        """After a transient failure: a fresh connection (the failed transaction was rolled back)."""
        try:
            self.conn.close()
        except psycopg2.Error:
            pass
        self.conn = self._connect()

    def close(self) -> None:
        interrupts.unregister(self._stop_handle)
        self.conn.close()

    def changes(self) -> PostgresApplier:
        return PostgresApplier(self)

    @contextmanager
    def fresh(self) -> Iterator[PostgresDestination]:
        """Another connection to the same replica, for a chunk copied in parallel (the schema is prepared)."""
        other = PostgresDestination(self.config, self.schema)
        try:
            yield other
        finally:
            other.close()

    # -- integration and state -----------------------------------------------------------------------------
    def prepare(self, config: IntegrationConfig) -> None:
        """Create the schema and state table, and register the integration. The registry is keyed by
        integration (its schema): several integrations of one source load side by side, while a rename (the
        same tables under a new name) is refused once data was loaded."""
        meta = sql.Identifier(META_SCHEMA)
        with self.conn, self.conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext('rds_pipeline_meta'))")  # one registration at a time
            cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(meta))
            cur.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {}.{} (schema_name text PRIMARY KEY, integration_name text NOT NULL, "
                    "source_key text NOT NULL, registered_at timestamptz NOT NULL DEFAULT now())"
                ).format(meta, sql.Identifier(REGISTRY))
            )
            cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{quote_ident(META_SCHEMA)}.integrations",))
            if one(cur.fetchone())[0]:  # the registry of earlier versions, keyed by source: carried over
                cur.execute(
                    sql.SQL(
                        "INSERT INTO {m}.{r} (schema_name, integration_name, source_key) SELECT schema_name, "
                        "integration_name, source_key FROM {m}.integrations ON CONFLICT DO NOTHING"
                    ).format(m=meta, r=sql.Identifier(REGISTRY))
                )
            cur.execute(
                sql.SQL(
                    "SELECT schema_name, integration_name FROM {}.{} WHERE source_key = %s AND schema_name <> %s"
                ).format(meta, sql.Identifier(REGISTRY)),
                (config.source_key, self.schema),
            )
            for other_schema, other_name in cur.fetchall():
                shared = overlap(config.selected_ids(), self._loaded_tables(cur, other_schema))
                if shared and not config.allow_integration_rename:
                    raise rename_refusal(other_name, other_schema, config.integration_name, self.schema, shared)
            cur.execute(
                sql.SQL(
                    "INSERT INTO {}.{} (schema_name, integration_name, source_key) VALUES (%s, %s, %s) "
                    "ON CONFLICT (schema_name) DO UPDATE SET integration_name = EXCLUDED.integration_name, "
                    "source_key = EXCLUDED.source_key"
                ).format(meta, sql.Identifier(REGISTRY)),
                (self.schema, config.integration_name, config.source_key),
            )
            cur.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(self.schema)))
            cur.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (table_id text PRIMARY KEY, destination_table text NOT NULL, "
                    "replication_key text, bookmark text, updated_at timestamptz NOT NULL DEFAULT now())"
                ).format(self.state_table())
            )
            cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS covered_to text").format(self.state_table()))
            cur.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (table_id text PRIMARY KEY, next_table text NOT NULL, "
                    "since text NOT NULL, pages bigint NOT NULL, copied bigint NOT NULL, copy_done boolean NOT NULL, "
                    "swept bigint NOT NULL, rows bigint NOT NULL, started_at timestamptz NOT NULL DEFAULT now(), "
                    "updated_at timestamptz NOT NULL DEFAULT now())"
                ).format(self.generations_table())
            )

    def _loaded_tables(self, cur: psycopg2.extensions.cursor, schema: str) -> list[str]:
        """The source tables another integration's schema holds data of (its state rows)."""
        cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{quote_ident(schema)}.{quote_ident(STATE_TABLE)}",))
        if not one(cur.fetchone())[0]:
            return []
        cur.execute(sql.SQL("SELECT table_id FROM {}").format(sql.Identifier(schema, STATE_TABLE)))
        return [r[0] for r in cur.fetchall()]

    def state_table(self) -> sql.Identifier:
        return sql.Identifier(self.schema, STATE_TABLE)

    def generations_table(self) -> sql.Identifier:
        return sql.Identifier(self.schema, GENERATIONS_TABLE)

    def target(self, table: SelectedTable) -> sql.Identifier:
        return sql.Identifier(self.schema, table.destination_table)

    def table_state(self, table: SelectedTable) -> TableState:
        with self.conn, self.conn.cursor() as cur:
            cur.execute(
                sql.SQL(
                    "SELECT to_regclass(%s) IS NOT NULL, (SELECT bookmark FROM {s} WHERE table_id = %s), "
                    "(SELECT covered_to FROM {s} WHERE table_id = %s), (SELECT json_build_array(since, pages, "
                    "copied, copy_done, swept, rows) FROM {g} WHERE table_id = %s AND to_regclass(%s) IS NOT NULL)"
                ).format(s=self.state_table(), g=self.generations_table()),
                (
                    f"{quote_ident(self.schema)}.{quote_ident(table.destination_table)}",
                    table.id,
                    table.id,
                    table.id,
                    f"{quote_ident(self.schema)}.{quote_ident(next_table(table.destination_table))}",
                ),
            )
            exists, bookmark, covered_to, generation = one(cur.fetchone())
        return TableState(
            bool(exists),
            bookmark if exists else None,
            covered_to if exists else None,
            Generation(*generation) if generation else None,
        )

    def read_bookmark(self, table: SelectedTable) -> str | None:
        return self.table_state(table).bookmark

    def read_bookmarks(self) -> dict[str, str | None]:
        """Every table's bookmark; none for a table whose destination table is gone (its state is void)."""
        with self.conn, self.conn.cursor() as cur:
            cur.execute(
                sql.SQL(
                    "SELECT table_id, CASE WHEN to_regclass(quote_ident(%s) || '.' || "
                    "quote_ident(destination_table)) IS NOT NULL THEN bookmark END FROM {}"
                ).format(self.state_table()),
                (self.schema,),
            )
            return dict(cur.fetchall())

    def read_sync_times(self) -> dict[str, dt.datetime]:
        """When each table's state last moved: its last committed load (data and state commit together)."""
        with self.conn, self.conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT table_id, updated_at FROM {}").format(self.state_table()))
            return dict(cur.fetchall())

    def read_generations(self) -> dict[str, Generation]:
        with self.conn, self.conn.cursor() as cur:
            cur.execute(
                sql.SQL(
                    "SELECT table_id, since, pages, copied, copy_done, swept, rows FROM {} "
                    "WHERE to_regclass(quote_ident(%s) || '.' || quote_ident(next_table)) IS NOT NULL"
                ).format(self.generations_table()),
                (self.schema,),
            )
            return {row[0]: Generation(*row[1:]) for row in cur.fetchall()}

    def reset(self, table: SelectedTable) -> None:
        """Forget the bookmark and drop the data, so the next sync is a full historical sync."""
        with self.conn, self.conn.cursor() as cur:
            cur.execute(sql.SQL("DELETE FROM {} WHERE table_id = %s").format(self.state_table()), (table.id,))
            cur.execute(sql.SQL("DELETE FROM {} WHERE table_id = %s").format(self.generations_table()), (table.id,))
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(self.target(table)))
            cur.execute(
                sql.SQL("DROP TABLE IF EXISTS {}").format(
                    sql.Identifier(self.schema, next_table(table.destination_table))
                )
            )

    def row_count(self, table: SelectedTable) -> int:
        with self.conn, self.conn.cursor() as cur:
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(self.target(table)))
            return int(one(cur.fetchone())[0])

    # -- table shape ---------------------------------------------------------------------------------------
    def ensure_table(
        self, cur: psycopg2.extensions.cursor, table: SelectedTable, key_later: bool = False
    ) -> tuple[list[str], bool]:
        """Create the table, or evolve it: add new columns; keep dropped ones (nullable); apply type changes
        with a checked cast (a failing cast aborts the load, so data is never silently corrupted).
        ``key_later``: a new table gets its primary key from ``add_primary_key`` after the first COPY (one
        sorted index build instead of an insertion per row)."""
        cur.execute(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull FROM pg_attribute a "
            "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            (f"{quote_ident(self.schema)}.{quote_ident(table.destination_table)}",),
        )
        existing = {name: (kind, notnull) for name, kind, notnull in cur.fetchall()}
        target = self.target(table)
        warnings: list[str] = []
        if not existing:
            columns = [
                sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(postgres_type(c))) for c in table.columns
            ]
            columns.append(sql.SQL("{} timestamptz NOT NULL DEFAULT now()").format(sql.Identifier(EXTRACTED_AT)))
            columns.append(
                sql.SQL("{} text DEFAULT current_setting('rds_pipeline.batch_id', true)").format(
                    sql.Identifier(BATCH_ID)
                )
            )
            if table.primary_key and not key_later:
                columns.append(
                    sql.SQL("PRIMARY KEY ({})").format(sql.SQL(", ").join(map(sql.Identifier, table.primary_key)))
                )
            cur.execute(sql.SQL("CREATE TABLE {} ({})").format(target, sql.SQL(", ").join(columns)))
            return warnings, True
        selected = {c.name for c in table.columns}
        for column in table.columns:
            wanted = postgres_type(column)
            if column.name not in existing:
                cur.execute(
                    sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(
                        target, sql.Identifier(column.name), sql.SQL(wanted)
                    )
                )
                warnings.append(f"column {column.name} ({wanted}) added to {self.schema}.{table.destination_table}")
            elif existing[column.name][0] != wanted:
                old = existing[column.name][0]
                cur.execute(
                    sql.SQL("ALTER TABLE {} ALTER COLUMN {} TYPE {} USING {}::{}").format(
                        target,
                        sql.Identifier(column.name),
                        sql.SQL(wanted),
                        sql.Identifier(column.name),
                        sql.SQL(wanted),
                    )
                )
                warnings.append(f"column {column.name} changed type {old} -> {wanted} (existing values cast)")
        for name, (_, notnull) in existing.items():
            if name in selected or name in (EXTRACTED_AT, BATCH_ID):
                continue
            if notnull and name not in table.primary_key:
                cur.execute(
                    sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL").format(target, sql.Identifier(name))
                )
            warnings.append(f"column {name} is no longer replicated; kept in the destination, NULL in new rows")
        for warning in warnings:
            log.warning("%s: %s", table.id, warning)
        return warnings, False

    # -- loading -------------------------------------------------------------------------------------------
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
        """Load what ``copy`` streams; data and state commit together (the bookmark rule in ``base.py``).
        ``turn``: called once the rows are in and before the state row is locked (chunks copied in parallel
        wait there for the chunk before them, so each commit finds its bookmark contiguous)."""

        def locked_state() -> tuple[str | None, str | None]:
            if turn is not None:
                turn()
            return self._lock_state(cur, table)

        started = time.monotonic()
        report = LoadingReport(table.id, f"{self.schema}.{table.destination_table}", table.method, batch_id=batch_id)
        target = self.target(table)
        # data, metadata and bookmark (or a generation's chunk and its progress, or its swap) commit together
        with self._transaction(copy) as cur:
            if generation is not None:
                self._load_generation(cur, table, copy, report, generation, turn)
                outcome = LoadOutcome(None, None)
            else:
                created = self._claim_creation(cur, table)
                warnings, _ = self.ensure_table(cur, table, key_later=created)
                if created:  # a new table voids any old state row: the data it described is gone
                    cur.execute(sql.SQL("DELETE FROM {} WHERE table_id = %s").format(self.state_table()), (table.id,))
                report.warnings = tuple(warnings)
                cur.execute("SELECT set_config('rds_pipeline.batch_id', %s, true)", (batch_id,))
                copy.start()
                if table.method in REPLACING:
                    self._replace_range(cur, table, key_range, copy, report, created)
                    before, _ = locked_state()  # no bookmark; the state row is locked (and written below)
                    outcome = LoadOutcome(before, before)
                elif created:
                    # historical sync into a table created in this transaction: nothing to merge with, so
                    # COPY straight in (the stage and upsert would double the work), then index once
                    report.rows_inserted = _copy_in(cur, target, table, copy, freeze=True)
                    self.add_primary_key(cur, table)
                    outcome = (
                        xmin_outcome(locked_state()[0], set_bookmark)
                        if table.method == "xmin"
                        else self._bookmark(cur, table, target, key_range, *locked_state(), source_max)
                    )
                else:
                    stage = self._stage(cur, table, copy)
                    column_list = sql.SQL(", ").join(sql.Identifier(c.name) for c in table.columns)
                    report.rows_inserted, report.rows_updated = self._merge(cur, table, stage, column_list)
                    outcome = (
                        xmin_outcome(locked_state()[0], set_bookmark)
                        if table.method == "xmin"
                        else self._bookmark(cur, table, stage, key_range, *locked_state(), source_max)
                    )
                copy.join()
                if copy.error is not None:
                    raise copy.error
                if table.method != "log_based":  # a log-based table's state is its applier's (the snapshot's LSN)
                    self._write_state(cur, table, outcome)
        report.seconds = time.monotonic() - started
        report.committed_at = dt.datetime.now(dt.UTC)
        return report, outcome

    def _replace_range(
        self,
        cur: psycopg2.extensions.cursor,
        table: SelectedTable,
        key_range: KeyRange,
        copy: CopyOut,
        report: LoadingReport,
        created: bool,
    ) -> None:
        """Empty the range and COPY its rows in (full table, and a log-based table's snapshot)."""
        target = self.target(table)
        predicate = key_range.predicate()
        delete = sql.SQL("DELETE FROM {}").format(target)
        if predicate is not None:
            delete = sql.SQL("{} WHERE {}").format(delete, predicate)
        cur.execute(delete)
        report.rows_deleted = cur.rowcount
        report.rows_inserted = _copy_in(cur, target, table, copy, freeze=created)
        # the range was emptied in this transaction: it holds what this COPY stored (its count is after any
        # trigger), so the row-count check needs no scan of the replica
        report.rows_at_commit = report.rows_inserted
        if created:
            self.add_primary_key(cur, table)

    # -- a generation: chunks of pages into the next table, then the swap --------------------------------------
    def _load_generation(
        self,
        cur: psycopg2.extensions.cursor,
        table: SelectedTable,
        copy: CopyOut,
        report: LoadingReport,
        step: GenerationStep,
        turn: Callable[[], None] | None,
    ) -> None:
        """One chunk into the next generation, with its progress; the first pass's last chunk drops the rows read
        twice and builds the key; the swap's chunk replaces the table. The caller commits."""
        nxt = dataclasses.replace(table, destination_table=next_table(table.destination_table))
        cur.execute("SELECT set_config('rds_pipeline.batch_id', %s, true)", (report.batch_id,))
        if step.first:  # a new generation: whatever an abandoned one left goes
            cur.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(self.target(nxt)))
            self.ensure_table(cur, nxt, key_later=True)
        copy.start()
        if step.sweep:
            stage = self._stage(cur, table, copy)
            if turn is not None:
                turn()
            column_list = sql.SQL(", ").join(sql.Identifier(c.name) for c in table.columns)
            report.rows_inserted, report.rows_updated = self._merge(cur, nxt, stage, column_list)
        else:
            report.rows_inserted = _copy_in(cur, self.target(nxt), table, copy, freeze=step.first)
            if turn is not None:
                turn()
        copy.join()
        if copy.error is not None:
            raise copy.error
        cur.execute(
            sql.SQL("SELECT rows, copied, copy_done, swept FROM {} WHERE table_id = %s FOR UPDATE").format(
                self.generations_table()
            ),
            (table.id,),
        )
        before = cur.fetchone()
        if not step.first:
            check_progress(table, step, before)
        rows = (0 if step.first or before is None else int(before[0])) + report.rows_inserted
        if step.copy_done and not step.sweep and table.primary_key:
            rows -= self._drop_doubles_and_key(cur, nxt)
        if step.swap:
            cur.execute(sql.SQL("SELECT count(*) FROM {}").format(self.target(nxt)))
            report.rows_at_commit = int(one(cur.fetchone())[0])
            report.source_rows = rows
            report.rows_deleted = self._swap(cur, table, nxt)
            cur.execute(sql.SQL("DELETE FROM {} WHERE table_id = %s").format(self.generations_table()), (table.id,))
            self._lock_state(cur, table)
            self._write_state(cur, table, LoadOutcome(None, None))
            return
        cur.execute(
            sql.SQL(
                "INSERT INTO {} (table_id, next_table, since, pages, copied, copy_done, swept, rows) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s) ON CONFLICT (table_id) DO UPDATE SET "
                "next_table = EXCLUDED.next_table, since = EXCLUDED.since, pages = EXCLUDED.pages, "
                "copied = EXCLUDED.copied, copy_done = EXCLUDED.copy_done, swept = EXCLUDED.swept, "
                "rows = EXCLUDED.rows, updated_at = now()" + (", started_at = now()" if step.first else "")
            ).format(self.generations_table()),
            (table.id, nxt.destination_table, *step.progress(rows)),
        )

    def _drop_doubles_and_key(self, cur: psycopg2.extensions.cursor, nxt: SelectedTable) -> int:
        """Build the next table's key; a row updated during the first pass may have been read twice (its old
        version in one chunk, the new in a later one): keep the later read, then build it. Returns the rows
        dropped. (The sweep then brings every row changed since the generation began up to date.)"""
        cur.execute("SAVEPOINT rds_key")
        try:
            self.add_primary_key(cur, nxt)
            cur.execute("RELEASE SAVEPOINT rds_key")
            return 0
        except psycopg2.errors.UniqueViolation:
            cur.execute("ROLLBACK TO SAVEPOINT rds_key")
        key = sql.SQL(", ").join(map(sql.Identifier, nxt.primary_key))
        cur.execute(
            sql.SQL(
                "DELETE FROM {t} WHERE ctid IN (SELECT ctid FROM (SELECT ctid, row_number() OVER "
                "(PARTITION BY {k} ORDER BY ctid DESC) AS n FROM {t}) d WHERE n > 1)"
            ).format(t=self.target(nxt), k=key)
        )
        dropped = int(cur.rowcount)
        self.add_primary_key(cur, nxt)
        log.info("%s: %d row(s) read twice during the copy (updated while it ran) kept once", nxt.id, dropped)
        return dropped

    def _swap(self, cur: psycopg2.extensions.cursor, table: SelectedTable, nxt: SelectedTable) -> int:
        """The next generation becomes the table, in the caller's transaction; returns the old rows replaced.
        A table nobody attached anything to is dropped and the next one renamed; one with grants, views,
        indexes, triggers, policies, publications or columns of its own keeps its identity and has its rows
        replaced (slower: the rows are written once more)."""
        target = self.target(table)
        name = f"{quote_ident(self.schema)}.{quote_ident(table.destination_table)}"
        kept = [c.name for c in table.columns] + [EXTRACTED_AT, BATCH_ID]
        cur.execute(
            "SELECT c.relacl IS NOT NULL OR c.relhastriggers OR c.relrowsecurity "
            "OR EXISTS (SELECT 1 FROM pg_depend d WHERE d.refobjid = c.oid AND d.classid = 'pg_rewrite'::regclass) "
            "OR EXISTS (SELECT 1 FROM pg_constraint k WHERE k.confrelid = c.oid OR (k.conrelid = c.oid AND "
            "k.contype <> 'p')) OR EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND NOT i.indisprimary) "
            "OR EXISTS (SELECT 1 FROM pg_publication_rel p WHERE p.prrelid = c.oid) "
            "OR EXISTS (SELECT 1 FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0 "
            "AND NOT a.attisdropped AND a.attname <> ALL (%s)) "
            "FROM pg_catalog.pg_class c WHERE c.oid = to_regclass(%s)",
            (kept, name),
        )
        found = cur.fetchone()
        if found is None:  # the table's first generation
            cur.execute(
                sql.SQL("ALTER TABLE {} RENAME TO {}").format(self.target(nxt), sql.Identifier(table.destination_table))
            )
            return 0
        if found[0]:
            self.ensure_table(cur, table)
            cur.execute(sql.SQL("DELETE FROM {}").format(target))
            replaced = int(cur.rowcount)
            columns = sql.SQL(", ").join(sql.Identifier(c) for c in kept)
            cur.execute(
                sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(target, columns, columns, self.target(nxt))
            )
            cur.execute(sql.SQL("DROP TABLE {}").format(self.target(nxt)))
            return replaced
        cur.execute(sql.SQL("SELECT count(*) FROM {}").format(target))
        replaced = int(one(cur.fetchone())[0])
        cur.execute(sql.SQL("DROP TABLE {}").format(target))
        cur.execute(
            sql.SQL("ALTER TABLE {} RENAME TO {}").format(self.target(nxt), sql.Identifier(table.destination_table))
        )
        return replaced

    def _stage(self, cur: psycopg2.extensions.cursor, table: SelectedTable, copy: CopyOut) -> sql.Identifier:
        """The copy in a temporary table of the source's types, to merge from (dropped at commit)."""
        stage = sql.Identifier("_rds_stage")
        typed = sql.SQL(", ").join(
            sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(postgres_type(c))) for c in table.columns
        )
        cur.execute(sql.SQL("CREATE TEMP TABLE {} ({}) ON COMMIT DROP").format(stage, typed))
        _copy_in(cur, stage, table, copy)
        return stage

    def _write_state(self, cur: psycopg2.extensions.cursor, table: SelectedTable, outcome: LoadOutcome) -> None:
        """The table's state row, in the load's transaction."""
        cur.execute(
            sql.SQL(
                "INSERT INTO {} (table_id, destination_table, replication_key, bookmark, covered_to, "
                "updated_at) VALUES (%s, %s, %s, %s, %s, now()) ON CONFLICT (table_id) DO UPDATE SET "
                "destination_table = EXCLUDED.destination_table, replication_key = EXCLUDED.replication_key, "
                "bookmark = EXCLUDED.bookmark, covered_to = EXCLUDED.covered_to, updated_at = now()"
            ).format(self.state_table()),
            (
                table.id,
                table.destination_table,
                table.replication_key,
                outcome.bookmark_after,
                outcome.covered_to if table.method == "key_based" else None,
            ),
        )

    def _claim_creation(self, cur: psycopg2.extensions.cursor, table: SelectedTable) -> bool:
        """True when this load creates the table, inside its own transaction (so the first COPY can FREEZE
        and the primary key is built once, after it). One creator at a time: a concurrent first load of the
        same table waits for the creator's commit (its copy is bounded by the stall guard), then merges."""
        lock = f"rds_pipeline create {quote_ident(self.schema)}.{quote_ident(table.destination_table)}"
        while True:
            if self._exists(cur, table):
                return False
            cur.execute("SELECT pg_try_advisory_xact_lock(hashtextextended(%s, 0))", (lock,))
            if one(cur.fetchone())[0]:
                if not self._exists(cur, table):  # and no one can create it before this transaction ends
                    return True
            else:
                # shared: the waiters do not queue behind one another; no lock_timeout (it would cut a long
                # first copy short)
                cur.execute("SET LOCAL lock_timeout = 0")
                cur.execute("SELECT pg_advisory_xact_lock_shared(hashtextextended(%s, 0))", (lock,))
            # the table appeared, or its creator finished: start afresh, so every catalog cache sees it (an
            # advisory lock does not refresh them); nothing was written yet
            self.conn.rollback()

    def _exists(self, cur: psycopg2.extensions.cursor, table: SelectedTable) -> bool:
        """Whether the replica table exists, read under the statement's snapshot (not the catalog cache)."""
        cur.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
            "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s)",
            (self.schema, table.destination_table),
        )
        return bool(one(cur.fetchone())[0])

    def add_primary_key(self, cur: psycopg2.extensions.cursor, table: SelectedTable) -> None:
        """The primary key of a table created with ``key_later``, built once over the loaded rows."""
        if table.primary_key:
            cur.execute(
                sql.SQL("ALTER TABLE {} ADD PRIMARY KEY ({})").format(
                    self.target(table), sql.SQL(", ").join(map(sql.Identifier, table.primary_key))
                )
            )

    def create_if_missing(self, table: SelectedTable) -> bool:
        """Create a missing table in its own short transaction, one creator at a time (concurrent first loads
        would otherwise race in the catalog). A new table voids any old state row: the data it described is
        gone. True when this call created it."""
        with self.conn, self.conn.cursor() as cur:
            name = f"{quote_ident(self.schema)}.{quote_ident(table.destination_table)}"
            cur.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0)), to_regclass(%s) IS NULL",
                (f"rds_pipeline create {name}", name),
            )
            if not one(cur.fetchone())[1]:
                return False
            self.ensure_table(cur, table)
            cur.execute(sql.SQL("DELETE FROM {} WHERE table_id = %s").format(self.state_table()), (table.id,))
            return True

    def _lock_state(self, cur: psycopg2.extensions.cursor, table: SelectedTable) -> tuple[str | None, str | None]:
        """Lock the table's state row and read it, after the copy (so concurrent runs of one table serialize
        only for the bookmark, not for their copies)."""
        cur.execute(
            sql.SQL("INSERT INTO {} (table_id, destination_table) VALUES (%s, %s) ON CONFLICT DO NOTHING").format(
                self.state_table()
            ),
            (table.id, table.destination_table),
        )
        cur.execute(
            sql.SQL("SELECT bookmark, covered_to FROM {} WHERE table_id = %s FOR UPDATE").format(self.state_table()),
            (table.id,),
        )
        bookmark, covered = one(cur.fetchone())
        return bookmark, covered

    def _merge(
        self, cur: psycopg2.extensions.cursor, table: SelectedTable, stage: sql.Identifier, column_list: sql.Composable
    ) -> tuple[int, int]:
        target = self.target(table)
        if not table.primary_key:
            cur.execute(
                sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(target, column_list, column_list, stage)
            )
            return cur.rowcount, 0
        non_key = [c.name for c in table.columns if c.name not in table.primary_key]
        updates = [sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(n), sql.Identifier(n)) for n in non_key]
        updates += [
            sql.SQL("{} = now()").format(sql.Identifier(EXTRACTED_AT)),
            sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(BATCH_ID), sql.Identifier(BATCH_ID)),
        ]
        cur.execute(
            sql.SQL(
                "WITH merged AS (INSERT INTO {target} ({cols}) SELECT DISTINCT ON ({pk}) {cols} FROM {stage} "
                "ORDER BY {pk} ON CONFLICT ({pk}) DO UPDATE SET {updates} RETURNING (xmax = 0) AS inserted) "
                "SELECT count(*) FILTER (WHERE inserted), count(*) FILTER (WHERE NOT inserted) FROM merged"
            ).format(
                target=target,
                cols=column_list,
                stage=stage,
                pk=sql.SQL(", ").join(map(sql.Identifier, table.primary_key)),
                updates=sql.SQL(", ").join(updates),
            )
        )
        inserted, updated = one(cur.fetchone())
        return int(inserted), int(updated)

    def _bookmark(
        self,
        cur: psycopg2.extensions.cursor,
        table: SelectedTable,
        stage: sql.Composable,
        key_range: KeyRange,
        before: str | None,
        covered: str | None,
        source_max: str | None,
    ) -> LoadOutcome:
        """The bookmark rule (``base.py``), in SQL with the key's type: move only when contiguous, never back."""
        key = table.replication_key
        assert key is not None
        column = next(c for c in table.columns if c.name == key)
        kind = sql.SQL(postgres_type(column))
        cur.execute(
            sql.SQL(
                "WITH s AS (SELECT max({k}) AS hi, count(*) FILTER (WHERE {k} IS NULL) AS nulls FROM {s}), "
                "c AS (SELECT %(lower)s::{t} IS NULL OR %(lower)s::{t} <= greatest(%(b)s::{t}, %(c)s::{t}) AS ok) "
                "SELECT c.ok, CASE WHEN c.ok THEN greatest(s.hi, %(b)s::{t}) ELSE %(b)s::{t} END::text, "
                "CASE WHEN c.ok AND %(upper)s::{t} IS NOT NULL AND coalesce(%(m)s::{t}, s.hi) IS NOT NULL "
                "THEN greatest(%(c)s::{t}, least(%(upper)s::{t}, coalesce(%(m)s::{t}, s.hi)))"
                " ELSE %(c)s::{t} END::text, s.nulls FROM s, c"
            ).format(k=sql.Identifier(key), t=kind, s=stage),
            {"lower": key_range.lower, "upper": key_range.upper, "b": before, "c": covered, "m": source_max},
        )
        contiguous, bookmark, covered_to, nulls = one(cur.fetchone())
        return LoadOutcome(before, bookmark, int(nulls), bool(contiguous) and bookmark != before, covered_to)

    # -- verify and repair (replication/compare.py) ------------------------------------------------------------
    floats_rounded = False  # the replica's text of a float is PostgreSQL's own

    def splits_on(self, column: Column) -> bool:
        """Where the replica keeps the source's type (an extension type such as citext becomes text, which
        sorts otherwise)."""
        base = column.base_type if column.kind == "domain" and column.base_type else column.type
        return postgres_type(column) == base

    def _live(self, cur: psycopg2.extensions.cursor, table: SelectedTable) -> sql.Composable:
        """``_rds_deleted_at IS NULL`` where the table has soft deletes, else ``true``."""
        cur.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = %s "
            "AND NOT attisdropped)",
            (f"{quote_ident(self.schema)}.{quote_ident(table.destination_table)}", DELETED_AT),
        )
        return sql.SQL("{} IS NULL").format(sql.Identifier(DELETED_AT)) if one(cur.fetchone())[0] else sql.SQL("true")

    def digest(self, table: SelectedTable, key_range: KeyRange, keys_only: bool) -> tuple[int, int]:
        predicate = key_range.predicate() or sql.SQL("true")
        with self.conn, self.conn.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT {} FROM {} WHERE {} AND {}").format(
                    digested(digest_columns(table, keys_only), False),
                    self.target(table),
                    predicate,
                    self._live(cur, table),
                )
            )
            rows, total = one(cur.fetchone())
        return int(rows), int(total)

    @contextmanager
    def _transaction(self, copy: CopyOut) -> Iterator[psycopg2.extensions.cursor]:
        """A cursor whose transaction commits when the block ends; on any error ``copy`` is aborted and the
        transaction rolled back."""
        try:
            with self.conn.cursor() as cur:
                yield cur
            self.conn.commit()
        except BaseException:
            copy.abort()
            if not self.conn.closed:
                try:
                    self.conn.rollback()
                except psycopg2.Error:
                    pass  # the connection broke: the server rolls back
            raise

    def repair_range(self, table: SelectedTable, key_range: KeyRange, copy: CopyOut, batch_id: str) -> LoadingReport:
        started = time.monotonic()
        report = LoadingReport(table.id, f"{self.schema}.{table.destination_table}", "repair", batch_id=batch_id)
        target, predicate = self.target(table), key_range.predicate() or sql.SQL("true")
        with self._transaction(copy) as cur:
            cur.execute("SELECT set_config('rds_pipeline.batch_id', %s, true)", (batch_id,))
            copy.start()
            stage = self._stage(cur, table, copy)
            copy.join()
            if copy.error is not None:
                raise copy.error
            keep: sql.Composable = sql.SQL("true")
            if table.primary_key:  # soft-deleted rows stay, unless the source has their key again
                keys = sql.SQL(", ").join(map(sql.Identifier, table.primary_key))
                keep = sql.SQL("({} OR ({}) IN (SELECT {} FROM {}))").format(self._live(cur, table), keys, keys, stage)
            cur.execute(sql.SQL("DELETE FROM {} WHERE {} AND {}").format(target, predicate, keep))
            report.rows_deleted = cur.rowcount
            columns = sql.SQL(", ").join(sql.Identifier(c.name) for c in table.columns)
            cur.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {}").format(target, columns, columns, stage))
            report.rows_inserted = cur.rowcount
        report.seconds = time.monotonic() - started
        report.committed_at = dt.datetime.now(dt.UTC)
        return report

    def delete_missing(self, table: SelectedTable, key_range: KeyRange, keys: CopyOut, soft: bool) -> int:
        target, predicate = self.target(table), key_range.predicate() or sql.SQL("true")
        key_text = row_text(digest_columns(table, keys_only=True), False)
        found = sql.SQL("EXISTS (SELECT 1 FROM _rds_keys k WHERE k.k = {})").format(key_text)
        with self._transaction(keys) as cur:
            cur.execute("CREATE TEMP TABLE _rds_keys (k text) ON COMMIT DROP")
            keys.start()
            cur.copy_expert("COPY _rds_keys (k) FROM STDIN", keys.pipe, size=1 << 20)
            keys.join()
            if keys.error is not None:
                raise keys.error
            cur.execute("ANALYZE _rds_keys")
            if not soft:
                cur.execute(sql.SQL("DELETE FROM {} WHERE {} AND NOT {}").format(target, predicate, found))
                return int(cur.rowcount)
            mark = sql.Identifier(DELETED_AT)
            cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} timestamptz").format(target, mark))
            update = sql.SQL("UPDATE {} SET {} = {} WHERE {} AND {} {} AND {}")
            cur.execute(
                update.format(
                    target, mark, sql.SQL("now()"), predicate, mark, sql.SQL("IS NULL"), sql.SQL("NOT {}").format(found)
                )
            )
            gone = int(cur.rowcount)
            # a key that came back at the source is unmarked
            cur.execute(update.format(target, mark, sql.SQL("NULL"), predicate, mark, sql.SQL("IS NOT NULL"), found))
            return gone

    def count_rows(self, table: SelectedTable, key_range: KeyRange) -> int:
        query = sql.SQL("SELECT count(*) FROM {}").format(self.target(table))
        predicate = key_range.predicate()
        if predicate is not None:
            query = sql.SQL("{} WHERE {}").format(query, predicate)
        with self.conn, self.conn.cursor() as cur:
            cur.execute(query)
            return int(one(cur.fetchone())[0])

    def primary_key_enforced(self, table: SelectedTable) -> bool:
        """Whether the replica has a PRIMARY KEY constraint on exactly the table's key columns."""
        with self.conn, self.conn.cursor() as cur:
            cur.execute(
                "SELECT array_agg(a.attname::text ORDER BY a.attname) FROM pg_constraint c "
                "JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey) "
                "WHERE c.conrelid = to_regclass(%s) AND c.contype = 'p'",
                (f"{quote_ident(self.schema)}.{quote_ident(table.destination_table)}",),
            )
            columns = one(cur.fetchone())[0]
        return bool(table.primary_key) and sorted(columns or []) == sorted(table.primary_key)

    def duplicate_keys(self, table: SelectedTable) -> int:
        keys = sql.SQL(", ").join(map(sql.Identifier, table.primary_key))
        with self.conn, self.conn.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} GROUP BY {} HAVING count(*) > 1) d").format(
                    self.target(table), keys
                )
            )
            return int(one(cur.fetchone())[0])

    def column_names(self, table: SelectedTable) -> list[str]:
        with self.conn, self.conn.cursor() as cur:
            cur.execute(
                "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 "
                "AND NOT attisdropped ORDER BY attnum",
                (f"{quote_ident(self.schema)}.{quote_ident(table.destination_table)}",),
            )
            return [r[0] for r in cur.fetchall()]

    def fetch_rows(self, table: SelectedTable, order_by: tuple[str, ...] | None = None) -> list[tuple[Any, ...]]:
        """All replicated rows as text (for tests and checks), ordered by the primary key or all columns."""
        order = order_by or table.primary_key or table.column_names
        with self.conn, self.conn.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT {} FROM {} ORDER BY {}").format(
                    sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in table.column_names),
                    self.target(table),
                    sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in order),
                )
            )
            return cur.fetchall()


_conforms: type[Destination] = PostgresDestination  # mypy checks the class against the contract
