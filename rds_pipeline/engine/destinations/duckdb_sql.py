"""DuckDB SQL, as both the loader and the change applier write it: quoting, the one place SQL is executed, and
the expressions that turn PostgreSQL's CSV text into DuckDB's types (so a value lands the same way whether a
snapshot or the stream wrote it)."""

from __future__ import annotations

from typing import Any

import duckdb

from rds_pipeline.engine.core.types import duckdb_type
from rds_pipeline.engine.quoting import quote_ident
from rds_pipeline.engine.source.catalog import Column

dq = quote_ident  # DuckDB has no psycopg2.sql; identifiers follow PostgreSQL's double-quote rule


def run(conn: duckdb.DuckDBPyConnection, query: str, params: list[Any] | None = None) -> duckdb.DuckDBPyConnection:
    """The one place DuckDB SQL is executed. DuckDB has no psycopg2.sql: identifiers in ``query`` must come
    from ``dq()`` (or be constants), and every value goes in ``params``."""
    return conn.execute(query, params or [])


def _bc_aware(expr: str, target: str) -> str:
    """DuckDB silently reads '0044-03-15 BC' as year 44 AD; rebuild BC dates and timestamps explicitly
    (PostgreSQL's year N BC is DuckDB's year 1 - N)."""
    if target == "DATE":
        bc = (
            f"make_date(1 - CAST(split_part({expr}, '-', 1) AS INTEGER), CAST(split_part({expr}, '-', 2) AS INTEGER),"
            f" CAST(left(split_part({expr}, '-', 3), 2) AS INTEGER))"
        )
    elif target == "TIMESTAMP":
        bc = (
            f"make_timestamp(1 - CAST(split_part({expr}, '-', 1) AS BIGINT), CAST(split_part({expr}, '-', 2) AS BIGINT),"
            f" CAST(left(split_part({expr}, '-', 3), 2) AS BIGINT), CAST(substr({expr}, 12, 2) AS BIGINT),"
            f" CAST(substr({expr}, 15, 2) AS BIGINT), CAST(regexp_extract({expr}, ':(\\d+(\\.\\d+)?) BC$', 1) AS DOUBLE))"
        )
    else:
        return f"CAST({expr} AS {target})"
    return f"CASE WHEN {expr} LIKE '% BC' THEN {bc} ELSE CAST({expr} AS {target}) END"


def convert(expr: str, column: Column) -> str:
    """SQL turning PostgreSQL's CSV text for ``column`` into its DuckDB type."""
    target = duckdb_type(column)
    base = column.base_type if column.kind == "domain" and column.base_type else column.type
    if base.startswith("character(") or base == "character":
        return f"rtrim({expr}, ' ')"  # char(n) padding is insignificant in PostgreSQL (its ::text drops it too)
    if target == "VARCHAR":
        return expr
    if target == "BLOB":
        return f"from_hex(substr({expr}, 3))"  # PostgreSQL's hex format: \\x0a0b…
    if target == "TIMESTAMPTZ":
        # the session's TimeZone is UTC, so a BC value reads '3004-10-19 18:23:54.123456+00 BC': drop the
        # offset, rebuild the BC timestamp, and read it as UTC
        plain = f"regexp_replace({expr}, '[+-]\\d\\d(:\\d\\d)* BC$', ' BC')"
        return f"CASE WHEN {expr} LIKE '% BC' THEN CAST({_bc_aware(plain, 'TIMESTAMP')} AS TIMESTAMPTZ) ELSE CAST({expr} AS TIMESTAMPTZ) END"
    return _bc_aware(expr, target)


def csv_source(width: int) -> str:
    """``read_csv`` of a CSV file (the ``?`` parameter) of PostgreSQL's CSV text: ``width`` VARCHAR columns c0…,
    empty unquoted = NULL, nothing guessed."""
    columns = ", ".join(f"'c{i}': 'VARCHAR'" for i in range(width))
    return (
        f"read_csv(?, header = false, columns = {{{columns}}}, quote = '\"', escape = '\"', "
        "allow_quoted_nulls = false, nullstr = '', delim = ',', strict_mode = true, auto_detect = false)"
    )
