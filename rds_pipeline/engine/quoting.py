"""SQL quoting for text we print or hand to DuckDB, where psycopg2.sql cannot be used (no PostgreSQL
connection to render it). SQL executed on PostgreSQL always goes through psycopg2.sql."""

from __future__ import annotations


def quote_ident(name: str) -> str:
    """Quote an identifier as PostgreSQL's quote_ident does (always quoted here); DuckDB uses the same rule."""
    if "\x00" in name:
        raise ValueError("identifiers cannot contain NUL")
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """A standard-conforming string literal ('' doubles a quote; backslashes are plain characters)."""
    return "'" + value.replace("'", "''") + "'"
