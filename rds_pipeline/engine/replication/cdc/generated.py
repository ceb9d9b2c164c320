"""Generated columns the stream leaves out, filled in before a batch is applied.

pgoutput never sends a generated column before PostgreSQL 18; on 18 it never sends a virtual one, and sends a
stored one only when the publication sets ``publish_generated_columns = stored`` (ours does). Left alone, such a
column would read NULL in every row the stream wrote.

PostgreSQL requires a generation expression to be immutable and to read only its own row, so the source can
compute it exactly from the row the stream carried: each table's changed rows go to the source as one array of
its own row type, and one short query evaluates the expressions over it (the source's own functions, types and
collations; no table is read). That works for stored and virtual columns on every version, into any
destination. We chose it over re-creating the expression at the destination (DuckDB speaks another SQL, and the
expression may call the source's own functions) and over reading the changed keys back from the table (a later
value than the change, and an index lookup per key).

A row whose inputs the stream did not carry (a TOASTed value the UPDATE left unchanged, or a column left out of
the selection) is read back by key instead: that is the row's current value, which any later change to it in
the stream corrects. A row gone from the source meanwhile keeps the destination's value until its delete
arrives.
"""

from __future__ import annotations

from collections.abc import Callable

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from rds_pipeline.engine.core.changes import UPSERT, ChangeBatch, RowChange, decoded
from rds_pipeline.engine.core.messages import UNCHANGED, Relation, Value
from rds_pipeline.engine.errors import TableApplyError
from rds_pipeline.engine.selection import SelectedTable
from rds_pipeline.engine.source.logical import GeneratedColumn, RowShape, qualified, row_shapes


def row_literal(values: list[Value]) -> str:
    """A row type's text form, ``("a","b",)``: every value quoted, NULL as nothing."""
    fields = []
    for value in values:
        if value is None or not isinstance(value, str):
            fields.append("")
        else:
            fields.append('"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return "(" + ",".join(fields) + ")"


class GeneratedFiller:
    """Fills a batch's generated columns from the source, for the tables that have any (one source connection,
    opened on first use; called from the applying thread only)."""

    def __init__(self, connect: Callable[[], psycopg2.extensions.connection], tables: set[str]) -> None:
        self._connect = connect
        self._tables = tables  # ids of the tables with generated columns (the others are never looked at)
        self._conn: psycopg2.extensions.connection | None = None
        self._shapes: dict[int, tuple[Relation, RowShape | None]] = {}

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def fill(self, batch: ChangeBatch, tables: dict[tuple[str, str], SelectedTable]) -> int:
        """Set every upsert's missing generated values; returns how many rows were computed."""
        if not self._tables:
            return 0
        filled = 0
        for segment in batch.segments:
            for oid, changes in segment.changes.items():
                relation = batch.relations[oid]
                table = tables.get((relation.namespace, relation.name))
                if table is None or table.id not in self._tables:
                    continue
                for key, change in changes.items():  # (a table with generated columns is never kept as COPY rows)
                    changes[key] = decoded(change)
                upserts = [c for c in changes.values() if isinstance(c, RowChange) and c.op == UPSERT]
                if not upserts:
                    continue
                missing = self._missing(relation, table)
                if missing:
                    try:
                        filled += self._fill(table, missing[0], missing[1], upserts)
                    except psycopg2.Error as exc:
                        if self._conn is not None:
                            self._conn.rollback()
                        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                        raise TableApplyError(table.id, f"computing its generated columns failed: {text}") from exc
        return filled

    def _source(self) -> psycopg2.extensions.connection:
        if self._conn is None or self._conn.closed:
            self._conn = self._connect()
            self._conn.set_session(readonly=True)
        return self._conn

    def _missing(self, relation: Relation, table: SelectedTable) -> tuple[RowShape, list[GeneratedColumn]] | None:
        """The table's shape and its selected generated columns this Relation does not carry (read again after
        each Relation message: the table may have changed)."""
        cached = self._shapes.get(relation.oid)
        if cached is None or cached[0] is not relation:
            shape = row_shapes(self._source(), [qualified(table)]).get(qualified(table))
            self._shapes[relation.oid] = cached = (relation, shape)
        shape = cached[1]
        if shape is None:
            return None
        sent = {c.name for c in relation.columns}
        wanted = [g for g in shape.generated if g.name in table.column_names and g.name not in sent]
        return (shape, wanted) if wanted else None

    def _fill(
        self, table: SelectedTable, shape: RowShape, missing: list[GeneratedColumn], upserts: list[RowChange]
    ) -> int:
        names = table.column_names
        inputs = {name for g in missing for name in g.inputs}
        carried = [i for i in inputs if i in names]
        from_row: list[RowChange] = []
        by_key: list[RowChange] = []
        for change in upserts:
            complete = len(carried) == len(inputs) and all(
                isinstance(change.values[names.index(i)], str) or change.values[names.index(i)] is None for i in carried
            )
            (from_row if complete else by_key).append(change)
        positions = [names.index(g.name) for g in missing]
        generated = {g.name for g in shape.generated}
        for batch_rows, computed in (
            (from_row, self._evaluate(table, shape, missing, from_row, generated)),
            (by_key, self._read_back(table, shape, missing, by_key)),
        ):
            for change, values in zip(batch_rows, computed, strict=True):
                row = list(change.values)
                for position, value in zip(positions, values, strict=True):
                    row[position] = value
                change.values = tuple(row)
        return len(upserts)

    def _array(self, table: SelectedTable, shape: RowShape, rows: list[RowChange], blank: set[str]) -> list[str]:
        """The rows as literals of the source's row type (generated and unknown fields NULL)."""
        position = {name: i for i, name in enumerate(table.column_names)}
        literals = []
        for change in rows:
            values: list[Value] = []
            for field in shape.fields:
                i = position.get(field)
                value = change.values[i] if i is not None and field not in blank else None
                values.append(None if value is UNCHANGED else value)
            literals.append(row_literal(values))
        return literals

    def _unnest(self, table: SelectedTable, shape: RowShape, alias: str) -> tuple[sql.Composable, sql.Identifier]:
        order = "ordinality"
        while order in shape.fields:
            order += "_"
        rowtype = sql.Identifier(table.relation.schema, table.relation.name)
        columns = sql.SQL(", ").join(sql.Identifier(f) for f in (*shape.fields, order))
        source = sql.SQL("unnest(%s::text[]::{}[]) WITH ORDINALITY AS {}({})").format(
            rowtype, sql.Identifier(alias), columns
        )
        return source, sql.Identifier(order)

    def _evaluate(
        self,
        table: SelectedTable,
        shape: RowShape,
        missing: list[GeneratedColumn],
        rows: list[RowChange],
        generated: set[str],
    ) -> list[tuple[Value, ...]]:
        """Each generated expression over each row, evaluated by the source (no table read)."""
        if not rows:
            return []
        source, order = self._unnest(table, shape, "r")
        query = sql.SQL("SELECT {} FROM {} ORDER BY {}").format(
            sql.SQL(", ").join(sql.SQL("({})::text").format(sql.SQL(g.expression)) for g in missing), source, order
        )
        with self._source().cursor() as cur:
            cur.execute(query, (self._array(table, shape, rows, generated),))
            found = [tuple(row) for row in cur.fetchall()]
        self._source().rollback()
        return found

    def _read_back(
        self, table: SelectedTable, shape: RowShape, missing: list[GeneratedColumn], rows: list[RowChange]
    ) -> list[tuple[Value, ...]]:
        """The rows' current generated values, by key (UNCHANGED for a row no longer there)."""
        if not rows:
            return []
        source, order = self._unnest(table, shape, "k")
        keys = set(table.primary_key)
        query = sql.SQL("SELECT k.{}, {} FROM {} JOIN {} AS t ON {}").format(
            order,
            sql.SQL(", ").join(sql.SQL("t.{}::text").format(sql.Identifier(g.name)) for g in missing),
            source,
            sql.Identifier(table.relation.schema, table.relation.name),
            sql.SQL(" AND ").join(sql.SQL("t.{0} = k.{0}").format(sql.Identifier(k)) for k in table.primary_key),
        )
        blank = set(shape.fields) - keys
        with self._source().cursor() as cur:
            cur.execute(query, (self._array(table, shape, rows, blank),))
            found = {n: tuple(values) for n, *values in cur.fetchall()}
        self._source().rollback()
        return [found.get(n + 1, (UNCHANGED,) * len(missing)) for n in range(len(rows))]
