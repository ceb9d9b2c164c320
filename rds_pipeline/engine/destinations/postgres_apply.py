"""Apply a batch of log-based changes to the PostgreSQL destination, with the slot's LSN, in one transaction.

Per segment of the batch (a TRUNCATE ends one), per table: the values an upsert left ``UNCHANGED`` under a key
that changed are read from the old row first; then the deleted keys go (COPY into a stage, one DELETE); then
the upserts (COPY into a stage; one UPDATE that keeps the current value of every UNCHANGED column, and one
INSERT of the new keys). The LSN is written last, in the same transaction: after a crash the batch is either
all there with its LSN, or not at all, and the reader resumes from the LSN in the destination.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import psycopg2.extensions
from psycopg2 import sql

from rds_pipeline.engine.destinations.base import LoadError
from rds_pipeline.engine.destinations.postgres import PostgresDestination
from rds_pipeline.engine.destinations.types import postgres_type
from rds_pipeline.engine.quoting import quote_ident
from rds_pipeline.engine.replication.cdc.batch import DELETE, ChangeBatch, RowChange
from rds_pipeline.engine.replication.cdc.pgoutput import UNCHANGED, Value, lsn_text
from rds_pipeline.engine.selection import SelectedTable

SLOTS_TABLE = "_rds_pipeline_slots"


@dataclass
class ApplyReport:
    upserted: dict[str, int] = field(default_factory=dict)
    deleted: dict[str, int] = field(default_factory=dict)
    truncated: list[str] = field(default_factory=list)
    lsn: str | None = None


def _copy_text(value: Value) -> str:
    if value is None or value is UNCHANGED:
        return "\\N"
    if isinstance(value, bytes):
        raise LoadError("log-based apply reads text values; the stream sent a binary one. Fix: do not ask "
                        "pgoutput for binary = true")  # fmt: skip
    return value.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")  # type: ignore[union-attr]


def _rows(lines: list[list[str]]) -> io.StringIO:
    return io.StringIO("".join("\t".join(line) + "\n" for line in lines))


def applied_lsn(destination: PostgresDestination, slot: str) -> str | None:
    """The LSN up to which the destination holds the slot's changes (None: nothing applied yet)."""
    with destination.conn, destination.conn.cursor() as cur:
        cur.execute("SELECT to_regclass(%s) IS NOT NULL",
                    (f"{quote_ident(destination.schema)}.{quote_ident(SLOTS_TABLE)}",))  # fmt: skip
        if not cur.fetchone()[0]:
            return None
        cur.execute(sql.SQL("SELECT lsn FROM {} WHERE slot = %s").format(sql.Identifier(destination.schema, SLOTS_TABLE)),
                    (slot,))  # fmt: skip
        row = cur.fetchone()
    return row[0] if row else None


def _slots_table(cur: psycopg2.extensions.cursor, destination: PostgresDestination) -> sql.Identifier:
    state = sql.Identifier(destination.schema, SLOTS_TABLE)
    cur.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} (slot text PRIMARY KEY, lsn text NOT NULL, "
                        "updated_at timestamptz NOT NULL DEFAULT now())").format(state))  # fmt: skip
    return state


def _write_lsn(cur: psycopg2.extensions.cursor, destination: PostgresDestination, slot: str, lsn: str) -> None:
    """Move the slot's LSN forward to ``lsn`` (never back), in the caller's transaction."""
    state = _slots_table(cur, destination)
    cur.execute(sql.SQL("INSERT INTO {s} (slot, lsn) VALUES (%(slot)s, %(lsn)s) ON CONFLICT (slot) DO UPDATE SET "
                        "lsn = EXCLUDED.lsn, updated_at = now() WHERE {s}.lsn::pg_lsn < EXCLUDED.lsn::pg_lsn")
                .format(s=state), {"slot": slot, "lsn": lsn})  # fmt: skip


def record_lsn(destination: PostgresDestination, slot: str, lsn: str) -> None:
    """Record that the stream reached ``lsn`` with nothing left to apply (the server sent nothing for our
    tables before it)."""
    with destination.conn, destination.conn.cursor() as cur:
        _write_lsn(cur, destination, slot, lsn)


def apply_batch(destination: PostgresDestination, tables: dict[tuple[str, str], SelectedTable], batch: ChangeBatch,
                slot: str) -> ApplyReport:  # fmt: skip
    """Apply ``batch`` (``tables`` by source (schema, name); changes to other relations are ignored) and move the
    slot's LSN to ``batch.end_lsn``, all in one destination transaction."""
    report = ApplyReport(lsn=lsn_text(batch.end_lsn) if batch.end_lsn is not None else None)
    conn = destination.conn
    try:
        for table in tables.values():
            destination._create_if_missing(table)
        with conn.cursor() as cur:
            for table in tables.values():
                destination.ensure_table(cur, table)
            for segment in batch.segments:
                for oid, changes in segment.changes.items():
                    relation = batch.relations[oid]
                    table = tables.get((relation.namespace, relation.name))
                    if table is not None and changes:
                        _apply_table(cur, destination, table, list(changes.values()), report)
                if segment.truncate is not None:
                    names = [tables[(r.namespace, r.name)] for oid in segment.truncate.relation_oids
                             if (r := batch.relations.get(oid)) is not None and (r.namespace, r.name) in tables]  # fmt: skip
                    if names:
                        cur.execute(sql.SQL("TRUNCATE {}").format(sql.SQL(", ").join(destination._target(t) for t in names)))
                        report.truncated.extend(t.id for t in names)
            if report.lsn is not None:
                _write_lsn(cur, destination, slot, report.lsn)
        conn.commit()  # the rows and the LSN, together
    except BaseException:
        if not conn.closed:
            conn.rollback()
        raise
    return report


def _apply_table(cur: psycopg2.extensions.cursor, destination: PostgresDestination, table: SelectedTable,
                 changes: list[RowChange], report: ApplyReport) -> None:  # fmt: skip
    if not table.primary_key:
        raise LoadError(f"{table.id}: log-based apply needs a primary key in the destination. Fix: give the table "
                        "a primary key at the source, or `primary_key:` in the selection")  # fmt: skip
    target = destination._target(table)
    names = list(table.column_names)
    key_index = [names.index(k) for k in table.primary_key]
    # primary-key columns are never NULL: plain equality, so the replica's key index serves every join
    keys = sql.SQL(" AND ").join(sql.SQL("t.{k} = s.{k}").format(k=sql.Identifier(k)) for k in table.primary_key)
    typed = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(postgres_type(c)))
                               for c in table.columns)  # fmt: skip
    upserts = [c for c in changes if c.op != DELETE]
    for change in upserts:
        if change.moved_from is not None:  # a key change that left TOASTed values: they are under the old key
            _fill_from_old_key(cur, table, target, change, key_index)
    deletes = [c.values for c in changes if c.op == DELETE]
    if deletes:
        key_types = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(c.name), sql.SQL(postgres_type(c)))
                                       for c in table.columns if c.name in table.primary_key)  # fmt: skip
        cur.execute(sql.SQL("CREATE TEMP TABLE _rds_deleted ({}) ON COMMIT DROP").format(key_types))
        cur.copy_expert(sql.SQL("COPY _rds_deleted ({}) FROM STDIN").format(
            sql.SQL(", ").join(map(sql.Identifier, table.primary_key))).as_string(cur),
            _rows([[_copy_text(v) for v in key] for key in deletes]))  # fmt: skip
        cur.execute("ANALYZE _rds_deleted")
        cur.execute(sql.SQL("DELETE FROM {} t USING _rds_deleted s WHERE {}").format(target, keys))
        report.deleted[table.id] = report.deleted.get(table.id, 0) + cur.rowcount
        cur.execute("DROP TABLE _rds_deleted")
    if not upserts:
        return
    cur.execute(sql.SQL("CREATE TEMP TABLE _rds_changed ({}, _rds_unchanged text[]) ON COMMIT DROP").format(typed))
    lines = []
    for change in upserts:
        unchanged = [names[i] for i, v in enumerate(change.values) if v is UNCHANGED]
        marker = "{" + ",".join('"' + n.replace("\\", "\\\\").replace('"', '\\"') + '"' for n in unchanged) + "}"
        lines.append([*(_copy_text(v) for v in change.values), _copy_text(marker)])
    columns = sql.SQL(", ").join(map(sql.Identifier, names))
    cur.copy_expert(sql.SQL("COPY _rds_changed ({}, _rds_unchanged) FROM STDIN").format(columns).as_string(cur),
                    _rows(lines))  # fmt: skip
    cur.execute("ANALYZE _rds_changed")
    cur.execute(sql.SQL("SELECT count(*) FROM _rds_changed s WHERE cardinality(s._rds_unchanged) > 0 AND NOT EXISTS "
                        "(SELECT 1 FROM {} t WHERE {})").format(target, keys))  # fmt: skip
    if cur.fetchone()[0]:
        raise LoadError(f"{table.id}: the stream updated rows the destination does not hold, leaving TOASTed values "
                        "unchanged: the replica is missing rows. Fix: re-snapshot the table (rds-pipeline reset)")  # fmt: skip
    non_key = [n for n in names if n not in table.primary_key]
    if non_key:
        sets = sql.SQL(", ").join(
            sql.SQL("{c} = CASE WHEN {n} = ANY (s._rds_unchanged) THEN t.{c} ELSE s.{c} END").format(
                c=sql.Identifier(n), n=sql.Literal(n)) for n in non_key)  # fmt: skip
        cur.execute(sql.SQL("UPDATE {} t SET {} FROM _rds_changed s WHERE {}").format(target, sets, keys))
    updated = cur.rowcount if non_key else 0
    cur.execute(sql.SQL("INSERT INTO {} ({}) SELECT {} FROM _rds_changed s WHERE NOT EXISTS "
                        "(SELECT 1 FROM {} t WHERE {})").format(target, columns, sql.SQL(", ").join(
                            sql.SQL("s.{}").format(sql.Identifier(n)) for n in names), target, keys))  # fmt: skip
    report.upserted[table.id] = report.upserted.get(table.id, 0) + updated + cur.rowcount
    cur.execute("DROP TABLE _rds_changed")


def _fill_from_old_key(cur: psycopg2.extensions.cursor, table: SelectedTable, target: sql.Composable,
                       change: RowChange, key_index: list[int]) -> None:  # fmt: skip
    names = list(table.column_names)
    wanted = [i for i, v in enumerate(change.values) if v is UNCHANGED]
    where = sql.SQL(" AND ").join(sql.SQL("{}::text = %s").format(sql.Identifier(table.primary_key[j]))
                                  for j in range(len(key_index)))  # fmt: skip
    cur.execute(sql.SQL("SELECT {} FROM {} WHERE {}").format(
        sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(names[i])) for i in wanted), target, where),
        list(change.moved_from or ()))  # fmt: skip
    row = cur.fetchone()
    if row is None:
        raise LoadError(f"{table.id}: a key change left TOASTed values unchanged, but the destination has no row "
                        f"under the old key {change.moved_from}. Fix: re-snapshot the table (rds-pipeline reset)")  # fmt: skip
    values = list(change.values)
    for i, value in zip(wanted, row, strict=True):
        values[i] = value
    change.values = tuple(values)
    change.moved_from = None
