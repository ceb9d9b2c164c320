"""Apply a batch of log-based changes to the PostgreSQL destination, with the slot's LSN, in one transaction.

Per segment of the batch (a TRUNCATE ends one), per table: the values an upsert left ``UNCHANGED`` under a key
that changed are read from the old row first; then the deleted keys go (COPY into a stage, one DELETE); then
the upserts (COPY into a stage; one UPDATE that keeps the current value of every UNCHANGED column, and one
INSERT of the new keys). The LSN is written last, in the same transaction: after a crash the batch is either
all there with its LSN, or not at all, and the reader resumes from the LSN in the destination.

Soft deletes keep the row and set ``_rds_deleted_at`` to the deleting transaction's commit time (an upsert of
the key clears it). Each log-based table's own state is its row in ``_rds_pipeline_state``: ``replication_key``
names the slot and ``bookmark`` holds the LSN of the snapshot it was copied at (its changes apply from
transactions committed at or after it). No row, or no destination table: the table needs a snapshot.
"""

from __future__ import annotations

import datetime as dt
import io
import zlib
from typing import TYPE_CHECKING

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

from rds_pipeline.engine.core.changes import DELETE, Change, ChangeBatch, CopyRow, RowChange, decoded
from rds_pipeline.engine.core.copy_rows import COPY_BINARY_HEADER, COPY_BINARY_TRAILER
from rds_pipeline.engine.core.messages import UNCHANGED, Value, lsn_text, timestamp
from rds_pipeline.engine.core.rows import one
from rds_pipeline.engine.core.types import postgres_type
from rds_pipeline.engine.destinations.base import (
    BATCH_ID,
    DELETED_AT,
    EXTRACTED_AT,
    SLOT_EVENTS_TABLE,
    SLOT_MARK,
    SLOTS_TABLE,
    SNAPSHOT_CHUNKS_TABLE,
    STATE_TABLE,
    ApplyReport,
    SourceConnect,
)
from rds_pipeline.engine.errors import LoadError, SlotBusy, TableApplyError
from rds_pipeline.engine.quoting import quote_ident
from rds_pipeline.engine.selection import SelectedTable

if TYPE_CHECKING:  # the destination imports its applier
    from rds_pipeline.engine.destinations.postgres import PostgresDestination

# what psycopg2 reads from a COPY's buffer at a time: each read takes the GIL back from the thread reading the
# stream (up to a switch interval each), so a batch's COPY is read in a few large pieces, not 8 KiB ones
_COPY_READ = 1 << 22
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


# a row joined by NUL (which no PostgreSQL text value holds), then escaped and split into columns in one pass
_ROW_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\x00": "\t"})


def _copy_line(change: RowChange) -> str:
    """One COPY text line for a whole row (the hot path of the apply)."""
    values = change.values
    if None not in values:
        try:
            return "\x00".join(values).translate(_ROW_ESCAPES) + "\n"  # type: ignore[arg-type]
        except TypeError:
            pass  # a binary value: the per-value path says what is wrong
    return "\t".join(map(_copy_text, values)) + "\n"


def _copy_text(value: Value) -> str:
    if value is None or value is UNCHANGED:
        return "\\N"
    if isinstance(value, bytes):
        raise LoadError(
            "log-based apply reads text values; the stream sent a binary one. Fix: do not ask "
            "pgoutput for binary = true"
        )
    return value.translate(_COPY_ESCAPES)  # type: ignore[union-attr]


def _rows(lines: list[list[str]]) -> io.StringIO:
    return io.StringIO("".join("\t".join(line) + "\n" for line in lines))


def _slots_table(cur: psycopg2.extensions.cursor, destination: PostgresDestination) -> sql.Identifier:
    state = sql.Identifier(destination.schema, SLOTS_TABLE)
    cur.execute(
        sql.SQL(
            "CREATE TABLE IF NOT EXISTS {} (slot text PRIMARY KEY, lsn text NOT NULL, "
            "updated_at timestamptz NOT NULL DEFAULT now())"
        ).format(state)
    )
    cur.execute(sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS reading boolean NOT NULL DEFAULT false").format(state))
    return state


def _exists(cur: psycopg2.extensions.cursor, destination: PostgresDestination, table: str) -> bool:
    """Whether the destination schema holds ``table`` (one of our state tables, made on first use)."""
    cur.execute("SELECT to_regclass(%s) IS NOT NULL", (f"{quote_ident(destination.schema)}.{quote_ident(table)}",))
    return bool(one(cur.fetchone())[0])


def _write_lsn(cur: psycopg2.extensions.cursor, destination: PostgresDestination, slot: str, lsn: str) -> None:
    """Move the slot's LSN forward to ``lsn`` (never back), in the caller's transaction."""
    state = _slots_table(cur, destination)
    cur.execute(
        sql.SQL(
            "INSERT INTO {s} (slot, lsn) VALUES (%(slot)s, %(lsn)s) ON CONFLICT (slot) DO UPDATE SET "
            "lsn = EXCLUDED.lsn, updated_at = now() WHERE {s}.lsn::pg_lsn < EXCLUDED.lsn::pg_lsn"
        ).format(s=state),
        {"slot": slot, "lsn": lsn},
    )


def _apply_table(
    cur: psycopg2.extensions.cursor,
    destination: PostgresDestination,
    table: SelectedTable,
    changes: list[Change],
    report: ApplyReport,
    soft_deletes: bool = False,
    enforced: bool = False,
) -> None:
    if not table.primary_key:
        raise LoadError(
            f"{table.id}: log-based apply needs a primary key in the destination. Fix: give the table "
            "a primary key at the source, or `primary_key:` in the selection"
        )
    target = destination.target(table)
    names = list(table.column_names)
    key_index = [names.index(k) for k in table.primary_key]
    # primary-key columns are never NULL: plain equality, so the replica's key index serves every join
    keys = sql.SQL(" AND ").join(sql.SQL("t.{k} = s.{k}").format(k=sql.Identifier(k)) for k in table.primary_key)
    typed = sql.SQL(", ").join(
        sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(postgres_type(c))) for c in table.columns
    )
    copied = [c for c in changes if type(c) is CopyRow]
    if copied and not enforced:  # no ON CONFLICT without the replica's key: the decoded path's UPDATE and INSERT
        changes, copied = list(map(decoded, changes)), []
    upserts = [c for c in changes if isinstance(c, RowChange) and c.op != DELETE]
    for change in upserts:
        if change.moved_from is not None:  # a key change that left TOASTed values: they are under the old key
            _fill_from_old_key(cur, table, target, change, key_index)
    deletes = [c for c in changes if isinstance(c, RowChange) and c.op == DELETE]
    if deletes:
        key_types = sql.SQL(", ").join(
            sql.SQL("{} {}").format(
                sql.Identifier(k), sql.SQL(postgres_type(next(c for c in table.columns if c.name == k)))
            )
            for k in table.primary_key
        )
        cur.execute(
            sql.SQL("CREATE TEMP TABLE _rds_deleted ({}, _rds_at timestamptz) ON COMMIT DROP").format(key_types)
        )
        cur.copy_expert(
            sql.SQL("COPY _rds_deleted ({}, _rds_at) FROM STDIN")
            .format(sql.SQL(", ").join(map(sql.Identifier, table.primary_key)))
            .as_string(cur),
            _rows([[*(_copy_text(v) for v in c.values), _commit_time(c.at)] for c in deletes]),
            _COPY_READ,
        )
        cur.execute("ANALYZE _rds_deleted")
        if soft_deletes:
            cur.execute(
                sql.SQL(
                    "UPDATE {} t SET {d} = coalesce(s._rds_at, now()) FROM _rds_deleted s WHERE {k} AND t.{d} IS NULL"
                ).format(target, d=sql.Identifier(DELETED_AT), k=keys)
            )
        else:
            cur.execute(sql.SQL("DELETE FROM {} t USING _rds_deleted s WHERE {}").format(target, keys))
        report.deleted[table.id] = report.deleted.get(table.id, 0) + cur.rowcount
        cur.execute("DROP TABLE _rds_deleted")
    if copied:
        _upsert_copy_rows(cur, table, target, copied, report, soft_deletes)
    complete = [c for c in upserts if UNCHANGED not in c.values]
    if complete and enforced:
        _upsert_complete(cur, table, target, complete, typed, report, soft_deletes)
        upserts = [c for c in upserts if UNCHANGED in c.values]
    if upserts:
        _upsert_partial(cur, table, target, upserts, typed, keys, report, soft_deletes)


def _refresh(soft_deletes: bool) -> list[sql.Composable]:
    """What every upsert also sets: when and by which batch the row was loaded (and that it is not deleted)."""
    assignments: list[sql.Composable] = [
        sql.SQL("{} = now()").format(sql.Identifier(EXTRACTED_AT)),
        sql.SQL("{} = current_setting('rds_pipeline.batch_id', true)").format(sql.Identifier(BATCH_ID)),
    ]
    if soft_deletes:
        assignments.append(sql.SQL("{} = NULL").format(sql.Identifier(DELETED_AT)))
    return assignments


def _upsert_complete(
    cur: psycopg2.extensions.cursor,
    table: SelectedTable,
    target: sql.Composable,
    upserts: list[RowChange],
    typed: sql.Composable,
    report: ApplyReport,
    soft_deletes: bool,
) -> None:
    """Whole decoded rows: one COPY into a stage, one INSERT … ON CONFLICT DO UPDATE."""
    columns = sql.SQL(", ").join(map(sql.Identifier, table.column_names))
    cur.execute(sql.SQL("CREATE TEMP TABLE _rds_complete ({}) ON COMMIT DROP").format(typed))
    text = "".join(map(_copy_line, upserts))
    cur.copy_expert(
        sql.SQL("COPY _rds_complete ({}) FROM STDIN").format(columns).as_string(cur), io.StringIO(text), _COPY_READ
    )
    _insert_or_update(cur, table, target, columns, "_rds_complete", report, soft_deletes)


def _upsert_copy_rows(
    cur: psycopg2.extensions.cursor,
    table: SelectedTable,
    target: sql.Composable,
    rows: list[CopyRow],
    report: ApplyReport,
    soft_deletes: bool,
) -> None:
    """Whole rows as the stream sent them (the common case): one COPY BINARY into a stage of text columns,
    then one INSERT … ON CONFLICT DO UPDATE that casts each column to its type, as COPY's text format would."""
    cur.execute(
        sql.SQL("CREATE TEMP TABLE _rds_rows ({}) ON COMMIT DROP").format(
            sql.SQL(", ").join(sql.SQL("{} text").format(sql.Identifier(n)) for n in table.column_names)
        )
    )
    data = b"".join([COPY_BINARY_HEADER, *(r.row for r in rows), COPY_BINARY_TRAILER])
    cur.copy_expert("COPY _rds_rows FROM STDIN (FORMAT binary)", io.BytesIO(data), _COPY_READ)
    casts = sql.SQL(", ").join(
        sql.SQL("CAST({} AS {})").format(sql.Identifier(c.name), sql.SQL(postgres_type(c))) for c in table.columns
    )
    _insert_or_update(cur, table, target, casts, "_rds_rows", report, soft_deletes)


def _insert_or_update(
    cur: psycopg2.extensions.cursor,
    table: SelectedTable,
    target: sql.Composable,
    select: sql.Composable,
    stage: str,
    report: ApplyReport,
    soft_deletes: bool,
) -> None:
    """Upsert the stage's rows (``select``: the table's columns, in order) by the replica's key, then drop it."""
    names = list(table.column_names)
    updates = [sql.SQL("{c} = EXCLUDED.{c}").format(c=sql.Identifier(n)) for n in names if n not in table.primary_key]
    cur.execute(
        sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ON CONFLICT ({}) DO UPDATE SET {}").format(
            target,
            sql.SQL(", ").join(map(sql.Identifier, names)),
            select,
            sql.Identifier(stage),
            sql.SQL(", ").join(map(sql.Identifier, table.primary_key)),
            sql.SQL(", ").join([*updates, *_refresh(soft_deletes)]),
        )
    )
    report.upserted[table.id] = report.upserted.get(table.id, 0) + cur.rowcount
    cur.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(stage)))


def _upsert_partial(
    cur: psycopg2.extensions.cursor,
    table: SelectedTable,
    target: sql.Composable,
    upserts: list[RowChange],
    typed: sql.Composable,
    keys: sql.Composable,
    report: ApplyReport,
    soft_deletes: bool,
) -> None:
    """Rows with TOASTed values left UNCHANGED: each such column keeps the destination's current value."""
    names = list(table.column_names)
    cur.execute(sql.SQL("CREATE TEMP TABLE _rds_changed ({}, _rds_unchanged text[]) ON COMMIT DROP").format(typed))
    lines = []
    for change in upserts:
        unchanged = [names[i] for i, v in enumerate(change.values) if v is UNCHANGED]
        marker = "{" + ",".join('"' + n.replace("\\", "\\\\").replace('"', '\\"') + '"' for n in unchanged) + "}"
        lines.append([*(_copy_text(v) for v in change.values), _copy_text(marker)])
    columns = sql.SQL(", ").join(map(sql.Identifier, names))
    cur.copy_expert(
        sql.SQL("COPY _rds_changed ({}, _rds_unchanged) FROM STDIN").format(columns).as_string(cur),
        _rows(lines),
        _COPY_READ,
    )
    cur.execute("ANALYZE _rds_changed")
    cur.execute(
        sql.SQL(
            "SELECT count(*) FROM _rds_changed s WHERE cardinality(s._rds_unchanged) > 0 AND NOT EXISTS "
            "(SELECT 1 FROM {} t WHERE {})"
        ).format(target, keys)
    )
    if one(cur.fetchone())[0]:
        raise LoadError(
            f"{table.id}: the stream updated rows the destination does not hold, leaving TOASTed values "
            "unchanged: the replica is missing rows. Fix: re-snapshot the table (rds-pipeline reset)"
        )
    non_key = [n for n in names if n not in table.primary_key]
    assignments = [
        sql.SQL("{c} = CASE WHEN {n} = ANY (s._rds_unchanged) THEN t.{c} ELSE s.{c} END").format(
            c=sql.Identifier(n), n=sql.Literal(n)
        )
        for n in non_key
    ]
    cur.execute(
        sql.SQL("UPDATE {} t SET {} FROM _rds_changed s WHERE {}").format(
            target, sql.SQL(", ").join([*assignments, *_refresh(soft_deletes)]), keys
        )
    )
    updated = cur.rowcount
    cur.execute(
        sql.SQL(
            "INSERT INTO {} ({}) SELECT {} FROM _rds_changed s WHERE NOT EXISTS (SELECT 1 FROM {} t WHERE {})"
        ).format(
            target, columns, sql.SQL(", ").join(sql.SQL("s.{}").format(sql.Identifier(n)) for n in names), target, keys
        )
    )
    report.upserted[table.id] = report.upserted.get(table.id, 0) + updated + cur.rowcount
    cur.execute("DROP TABLE _rds_changed")


def _fill_from_old_key(
    cur: psycopg2.extensions.cursor,
    table: SelectedTable,
    target: sql.Composable,
    change: RowChange,
    key_index: list[int],
) -> None:
    names = list(table.column_names)
    wanted = [i for i, v in enumerate(change.values) if v is UNCHANGED]
    where = sql.SQL(" AND ").join(
        sql.SQL("{}::text = %s").format(sql.Identifier(table.primary_key[j])) for j in range(len(key_index))
    )
    cur.execute(
        sql.SQL("SELECT {} FROM {} WHERE {}").format(
            sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(names[i])) for i in wanted), target, where
        ),
        list(change.moved_from or ()),
    )
    row = cur.fetchone()
    change.moved_from = None
    if row is None:
        # no row under the old key: a re-snapshot already holds the new key (its current values are kept); if it
        # holds neither, the missing-rows check below refuses the batch
        return
    values = list(change.values)
    for i, value in zip(wanted, row, strict=True):
        values[i] = value
    change.values = tuple(values)


def _commit_time(microseconds: int | None) -> str:
    return "\\N" if microseconds is None else timestamp(microseconds).isoformat()


class PostgresApplier:
    """``ChangeApplier`` (``base.py``) for PostgreSQL, on the destination's connection."""

    takes_copy_rows = True  # ``apply_batch`` loads ``CopyRow`` upserts as they are

    def __init__(self, destination: PostgresDestination) -> None:
        self.destination = destination

    def lock_slot(self, slot: str) -> None:
        conn = self.destination.conn
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_lock(%s)", (_lock_key(slot),))
            conn.commit()
        except psycopg2.errors.LockNotAvailable:
            conn.rollback()
            raise SlotBusy(
                f"slot {slot!r}: another run is reading it and did not finish within the destination's "
                "lock_timeout. Fix: wait for that run (Dagster runs it one at a time per slot), or raise "
                "destination.lock_timeout_seconds"
            ) from None

    def unlock_slot(self, slot: str) -> None:
        conn = self.destination.conn
        if conn.closed:
            return  # a closed session holds no lock
        conn.rollback()
        with conn.cursor() as cur:
            cur.execute("SELECT pg_advisory_unlock(%s)", (_lock_key(slot),))
        conn.commit()

    def applied_lsn(self, slot: str) -> str | None:
        """The LSN up to which the self.destination holds the slot's changes (None: nothing applied yet)."""
        with self.destination.conn, self.destination.conn.cursor() as cur:
            if not _exists(cur, self.destination, SLOTS_TABLE):
                return None
            cur.execute(
                sql.SQL("SELECT lsn FROM {} WHERE slot = %s").format(
                    sql.Identifier(self.destination.schema, SLOTS_TABLE)
                ),
                (slot,),
            )
            row = cur.fetchone()
        return row[0] if row else None

    def mark_reading(self, slot: str, reading: bool) -> None:
        """A run is reading the slot (set before it starts, cleared when it ended cleanly): after a run that
        stopped mid-stream, the slot may have confirmed WAL that held nothing for us (psycopg2 moves its confirmed
        position to a keepalive's WAL end while every message it received is confirmed)."""
        with self.destination.conn, self.destination.conn.cursor() as cur:
            state = _slots_table(cur, self.destination)
            cur.execute(sql.SQL("UPDATE {} SET reading = %s WHERE slot = %s").format(state), (reading, slot))

    def was_reading(self, slot: str) -> bool:
        """Whether the last run on the slot stopped before it ended cleanly."""
        with self.destination.conn, self.destination.conn.cursor() as cur:
            state = _slots_table(cur, self.destination)
            cur.execute(sql.SQL("SELECT reading FROM {} WHERE slot = %s").format(state), (slot,))
            row = cur.fetchone()
        return bool(row and row[0])

    def record_lsn(self, slot: str, lsn: str) -> None:
        """Record that the stream reached ``lsn`` with nothing left to apply (the server sent nothing for our
        tables before it)."""
        with self.destination.conn, self.destination.conn.cursor() as cur:
            _write_lsn(cur, self.destination, slot, lsn)

    def snapshot_lsns(self, slot: str) -> dict[str, str]:
        """Per log-based table of ``slot`` whose self.destination table exists: the LSN of the snapshot it was copied at."""
        with self.destination.conn, self.destination.conn.cursor() as cur:
            if not _exists(cur, self.destination, STATE_TABLE):
                return {}
            cur.execute(
                sql.SQL(
                    "SELECT table_id, bookmark FROM {} WHERE replication_key = %s AND bookmark IS NOT NULL "
                    "AND to_regclass(quote_ident(%s) || '.' || quote_ident(destination_table)) IS NOT NULL"
                ).format(sql.Identifier(self.destination.schema, STATE_TABLE)),
                (SLOT_MARK + slot, self.destination.schema),
            )
            return dict(cur.fetchall())

    def record_snapshot(self, table: SelectedTable, slot: str, lsn: str) -> None:
        """The table holds its rows as of ``lsn``: the stream applies its changes from there on."""
        with self.destination.conn, self.destination.conn.cursor() as cur:
            cur.execute(
                sql.SQL(
                    "INSERT INTO {} (table_id, destination_table, replication_key, bookmark) VALUES "
                    "(%s, %s, %s, %s) ON CONFLICT (table_id) DO UPDATE SET destination_table = "
                    "EXCLUDED.destination_table, replication_key = EXCLUDED.replication_key, "
                    "bookmark = EXCLUDED.bookmark, covered_to = NULL, updated_at = now()"
                ).format(sql.Identifier(self.destination.schema, STATE_TABLE)),
                (table.id, table.destination_table, SLOT_MARK + slot, lsn),
            )
            self._drop_chunks(cur, slot, table.id)

    def record_chunk(self, table: SelectedTable, slot: str, upper: int | None, lsn: str) -> None:
        with self.destination.conn, self.destination.conn.cursor() as cur:
            chunks = sql.Identifier(self.destination.schema, SNAPSHOT_CHUNKS_TABLE)
            cur.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (slot text NOT NULL, table_id text NOT NULL, upper_key bigint, "
                    "lsn text NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now())"
                ).format(chunks)
            )
            cur.execute(
                sql.SQL("INSERT INTO {} (slot, table_id, upper_key, lsn) VALUES (%s, %s, %s, %s)").format(chunks),
                (slot, table.id, upper, lsn),
            )

    def snapshot_progress(self, slot: str) -> dict[str, list[tuple[int | None, str]]]:
        with self.destination.conn, self.destination.conn.cursor() as cur:
            if not _exists(cur, self.destination, SNAPSHOT_CHUNKS_TABLE):
                return {}
            cur.execute(
                sql.SQL(
                    "SELECT table_id, upper_key, lsn FROM {} WHERE slot = %s ORDER BY table_id, upper_key NULLS LAST"
                ).format(sql.Identifier(self.destination.schema, SNAPSHOT_CHUNKS_TABLE)),
                (slot,),
            )
            found: dict[str, list[tuple[int | None, str]]] = {}
            for table_id, upper, lsn in cur.fetchall():
                found.setdefault(table_id, []).append((upper, lsn))
            return found

    def _drop_chunks(self, cur: psycopg2.extensions.cursor, slot: str, table_id: str | None = None) -> None:
        """Forget chunk progress under ``slot`` (one table's, or all), in the caller's transaction."""
        if _exists(cur, self.destination, SNAPSHOT_CHUNKS_TABLE):
            cur.execute(
                sql.SQL("DELETE FROM {} WHERE slot = %s AND (%s::text IS NULL OR table_id = %s)").format(
                    sql.Identifier(self.destination.schema, SNAPSHOT_CHUNKS_TABLE)
                ),
                (slot, table_id, table_id),
            )

    def forget_slot(self, slot: str, lost: str | None = None) -> int:
        """Forget the slot's position and every table's snapshot under it (after the slot was dropped): the next
        sync snapshots the tables again. Returns how many tables will be snapshotted again."""
        with self.destination.conn, self.destination.conn.cursor() as cur:
            forgotten = 0
            for table, column in ((SLOTS_TABLE, "slot"), (STATE_TABLE, "replication_key")):
                if _exists(cur, self.destination, table):
                    cur.execute(
                        sql.SQL("DELETE FROM {} WHERE {} = %s").format(
                            sql.Identifier(self.destination.schema, table), sql.Identifier(column)
                        ),
                        (slot if table == SLOTS_TABLE else SLOT_MARK + slot,),
                    )
                    forgotten = cur.rowcount if table == STATE_TABLE else forgotten
            self._drop_chunks(cur, slot)
            if lost is not None:
                events = sql.Identifier(self.destination.schema, SLOT_EVENTS_TABLE)
                cur.execute(
                    sql.SQL(
                        "CREATE TABLE IF NOT EXISTS {} (slot text NOT NULL, lost_at timestamptz NOT NULL DEFAULT now(), "
                        "lost text NOT NULL, tables integer NOT NULL)"
                    ).format(events)
                )
                cur.execute(
                    sql.SQL("INSERT INTO {} (slot, lost, tables) VALUES (%s, %s, %s)").format(events),
                    (slot, lost, forgotten),
                )
            return forgotten

    def slot_lost(self, slot: str) -> tuple[dt.datetime, str] | None:
        with self.destination.conn, self.destination.conn.cursor() as cur:
            if not _exists(cur, self.destination, SLOT_EVENTS_TABLE):
                return None
            cur.execute(
                sql.SQL("SELECT lost_at, lost FROM {} WHERE slot = %s ORDER BY lost_at DESC LIMIT 1").format(
                    sql.Identifier(self.destination.schema, SLOT_EVENTS_TABLE)
                ),
                (slot,),
            )
            row = cur.fetchone()
        return (row[0], row[1]) if row else None

    def forget_table(self, slot: str, table_id: str) -> None:
        """The table's snapshot is void (its changes will not be applied): the next sync copies it again."""
        with self.destination.conn, self.destination.conn.cursor() as cur:
            cur.execute(
                sql.SQL("DELETE FROM {} WHERE table_id = %s AND replication_key = %s").format(
                    sql.Identifier(self.destination.schema, STATE_TABLE)
                ),
                (table_id, SLOT_MARK + slot),
            )
            self._drop_chunks(cur, slot, table_id)

    def slot_age_seconds(self, slot: str) -> int | None:
        """Seconds since the slot's position last moved in the self.destination (None: never)."""
        if self.applied_lsn(slot) is None:
            return None
        with self.destination.conn, self.destination.conn.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT extract(epoch FROM now() - updated_at)::bigint FROM {} WHERE slot = %s").format(
                    sql.Identifier(self.destination.schema, SLOTS_TABLE)
                ),
                (slot,),
            )
            seconds: int | None = one(cur.fetchone())[0]
            return seconds

    def apply_batch(
        self,
        tables: dict[tuple[str, str], SelectedTable],
        batch: ChangeBatch,
        slot: str,
        soft_deletes: bool = False,
        source: SourceConnect | None = None,
    ) -> ApplyReport:
        """Apply ``batch`` (``tables`` by source (schema, name); changes to other relations are ignored) and move the
        slot's LSN to ``batch.end_lsn``, all in one self.destination transaction."""
        report = ApplyReport(lsn=lsn_text(batch.end_lsn) if batch.end_lsn is not None else None)
        conn = self.destination.conn
        try:
            touched = {
                (r.namespace, r.name)
                for segment in batch.segments
                for oid in segment.changes
                if (r := batch.relations.get(oid)) is not None
            }
            enforced = {}
            for name, table in tables.items():
                self.destination.create_if_missing(table)
                if name in touched:  # ON CONFLICT needs the replica's primary key (checked before the transaction)
                    enforced[table.id] = self.destination.primary_key_enforced(table)
            with conn.cursor() as cur:
                if report.lsn is not None:
                    cur.execute("SELECT set_config('rds_pipeline.batch_id', %s, true)", (f"lsn:{report.lsn}",))
                for table in tables.values():
                    self.destination.ensure_table(cur, table)
                    if soft_deletes:
                        cur.execute(
                            sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} timestamptz").format(
                                self.destination.target(table), sql.Identifier(DELETED_AT)
                            )
                        )
                for table, changes in batch.in_order_undecoded(tables):
                    if changes is None:  # a TRUNCATE, in its place
                        target = self.destination.target(table)
                        if soft_deletes:
                            cur.execute(
                                sql.SQL("UPDATE {} SET {d} = now() WHERE {d} IS NULL").format(
                                    target, d=sql.Identifier(DELETED_AT)
                                )
                            )
                        else:
                            cur.execute(sql.SQL("TRUNCATE {}").format(target))
                        report.truncated.append(table.id)
                        continue
                    try:
                        _apply_table(
                            cur, self.destination, table, changes, report, soft_deletes, enforced.get(table.id, False)
                        )
                    except (psycopg2.Error, LoadError) as exc:
                        if isinstance(exc, psycopg2.OperationalError) or conn.closed:
                            raise  # the connection, not the table: the caller retries
                        raise TableApplyError(table.id, str(exc).strip().splitlines()[0]) from exc
                if report.lsn is not None:
                    _write_lsn(cur, self.destination, slot, report.lsn)
            conn.commit()  # the rows and the LSN, together
        except BaseException:
            if not conn.closed:
                conn.rollback()
            raise
        return report


def _lock_key(slot: str) -> int:
    """The advisory lock's key for ``slot`` (a session lock: it dies with a killed run's connection)."""
    return zlib.crc32(f"rds_pipeline slot {slot}".encode()) - 2**31
