"""The digest of a range of rows, as the source and a PostgreSQL replica compute it: ``count(*)`` and the sum
of the first 60 bits of ``md5`` over each row's text (every column as text, NULL marked, in one string), which
no row order changes. The DuckDB destination writes the same text its own way (``duckdb.py``)."""

from __future__ import annotations

from psycopg2 import sql

from rds_pipeline.engine.selection import SelectedTable
from rds_pipeline.engine.source.catalog import Column

NULL_MARK = "chr(30)"  # a NULL, in a row's text (a value's text is never this one character: see README)
SEPARATOR = "chr(31)"


def digest_columns(table: SelectedTable, keys_only: bool) -> list[Column]:
    if keys_only:
        return [c for c in table.columns if c.name in table.primary_key]
    return list(table.columns)


FLOAT_DIGITS = {"double precision": 14, "real": 5}  # decimals after the first digit, when floats are rounded


def float_digits(column: Column) -> int | None:
    base = column.base_type if column.kind == "domain" and column.base_type else column.type
    return FLOAT_DIGITS.get(base)


def row_text(columns: list[Column], array_as_json: bool, floats_rounded: bool = False) -> sql.Composable:
    """A row's text: each column's ``::text`` (arrays as ``to_json`` for a destination that stores them so;
    floats in ``%.14e`` for one whose text of a float is not always PostgreSQL's, ``Verifier.floats_rounded``)."""
    parts = []
    for column in columns:
        ident = sql.Identifier(column.name)
        digits = float_digits(column) if floats_rounded else None
        if array_as_json and column.kind == "array":
            text = sql.SQL("to_json({})::text").format(ident)
        elif digits is not None:
            text = sql.SQL(
                "CASE WHEN {c} IN ('NaN', 'Infinity', '-Infinity') THEN {c}::text ELSE ltrim(to_char({c}, {f})) END"
            ).format(c=ident, f=sql.Literal("9." + "9" * digits + "EEEE"))
        else:
            text = sql.SQL("{}::text").format(ident)
        parts.append(sql.SQL("coalesce({}, {})").format(text, sql.SQL(NULL_MARK)))
    return sql.SQL("concat_ws({}, {})").format(sql.SQL(SEPARATOR), sql.SQL(", ").join(parts))


def digested(columns: list[Column], array_as_json: bool, floats_rounded: bool = False) -> sql.Composable:
    """``count(*), sum(first 60 bits of md5(row text))`` over whatever the query's FROM and WHERE give."""
    return sql.SQL("count(*), coalesce(sum(('x' || left(md5({}), 15))::bit(60)::bigint), 0)::text").format(
        row_text(columns, array_as_json, floats_rounded)
    )
