"""Extraction: the source query for a table's range, ``COPY (SELECT … WHERE <range>) TO STDOUT``, and the format
it is read in. The bytes are streamed by ``core.copy_out``."""

from __future__ import annotations

from psycopg2 import sql

from rds_pipeline.engine.core.ranges import KeyRange
from rds_pipeline.engine.core.types import binary_refusal
from rds_pipeline.engine.destinations.base import Destination
from rds_pipeline.engine.selection import SelectedTable


def select_query(
    table: SelectedTable,
    key_range: KeyRange,
    csv: bool = False,
    array_as_json: bool = False,
    binary: bool = False,
    changed_since: str | None = None,
) -> sql.Composed:
    """``COPY (SELECT cols FROM schema.table [WHERE range]) TO STDOUT``, identifiers quoted by psycopg2.sql.
    ``changed_since`` (a 64-bit xid): only row versions written by that transaction or a later one
    (``written_since``)."""
    columns: list[sql.Composable] = []
    for column in table.columns:
        ident = sql.Identifier(column.name)
        if array_as_json and column.kind == "array":
            columns.append(sql.SQL("to_json({})").format(ident))
        else:
            columns.append(ident)
    relation = sql.Identifier(table.relation.schema, table.relation.name)
    select = sql.SQL("SELECT {} FROM {}").format(sql.SQL(", ").join(columns), relation)
    predicate = key_range.predicate()
    if changed_since is not None:
        since = written_since(changed_since)
        predicate = since if predicate is None else sql.SQL("{} AND {}").format(predicate, since)
    if predicate is not None:
        select = sql.SQL("{} WHERE {}").format(select, predicate)
    options = sql.SQL(" WITH (FORMAT csv)") if csv else sql.SQL(" WITH (FORMAT binary)") if binary else sql.SQL("")
    return sql.SQL("COPY ({}) TO STDOUT{}").format(select, options)


def xid32(xid8: str) -> int:
    """A 64-bit transaction id as the 32-bit xid a row's ``xmin`` holds; never one of the special xids below 3."""
    return max(int(xid8) % 2**32, 3)


def written_since(xid8: str) -> sql.Composed:
    """Row versions whose ``xmin`` is ``xid8`` or later, up to now: the forward arc of 32-bit xids from it to the
    current one, which ``age()`` measures across a wraparound of the 32-bit counter. Exact while ``xid8`` is
    less than 2^31 transactions old (the planner checks with 64-bit ids: ``xmin_wrapped``). A row frozen long
    ago keeps its raw xmin: one whose xmin falls in that arc by chance is read again (harmless: upserted)."""
    return sql.SQL("age(xmin) BETWEEN 0 AND age({}::xid)").format(sql.Literal(str(xid32(xid8))))


def binary_copy(
    destination: Destination, table: SelectedTable, wanted: str = "auto", tunnelled: bool = False
) -> tuple[bool, str]:
    """Whether the rows move as binary COPY (PostgreSQL to PostgreSQL, every column of a type whose binary
    form is exact there, and ``source.copy_format`` allows it), and the format as the extraction log shows it."""
    if not destination.accepts_binary_copy:
        return False, "csv" if destination.copy_csv else "text"
    if wanted == "text" or (wanted == "auto" and tunnelled):
        return False, "text (copy_format: text)" if wanted == "text" else "text (through the SSH tunnel: fewer bytes)"
    refusal = binary_refusal(table.columns)
    return (True, "binary") if refusal is None else (False, f"text ({refusal})")
