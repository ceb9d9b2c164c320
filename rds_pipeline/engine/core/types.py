"""How source column types are created in each destination (the README documents these rules).

PostgreSQL destination: the exact source type for built-in types (so every value reads back equal), with:
- enums -> ``text`` (the label), arrays of enums -> ``text[]``;
- domains -> their base type (constraints are the source's business);
- composite and other user-defined types (extensions included) -> ``text`` (their text form).

DuckDB destination: native types where DuckDB holds every value exactly, text otherwise (see ``duckdb_type``).
"""

from __future__ import annotations

from rds_pipeline.engine.source.catalog import Column

# Built-in PostgreSQL types (format_type spelling, without typmod) that exist in every PostgreSQL destination.
# fmt: off
BUILTIN_TYPES = {
    "smallint", "integer", "bigint", "numeric", "real", "double precision", "money", "boolean", "text",
    "character varying", "character", '"char"', "name", "bytea", "uuid", "json", "jsonb", "xml", "date",
    "time without time zone", "time with time zone", "timestamp without time zone", "timestamp with time zone",
    "interval", "inet", "cidr", "macaddr", "macaddr8", "bit", "bit varying", "tsvector", "tsquery", "point", "line",
    "lseg", "box", "path", "polygon", "circle", "int4range", "int8range", "numrange", "tsrange", "tstzrange",
    "daterange", "int4multirange", "int8multirange", "nummultirange", "tsmultirange", "tstzmultirange",
    "datemultirange", "pg_lsn", "oid", "regclass", "txid_snapshot", "pg_snapshot",
}
# fmt: on


def bare_type(type_name: str) -> str:
    """``numeric(5,2)`` -> ``numeric``; ``timestamp(3) with time zone`` -> ``timestamp with time zone``."""
    import re

    return re.sub(r"\(\d+(,\d+)?\)", "", type_name.removesuffix("[]")).strip()


def postgres_type(column: Column) -> str:
    """The destination PostgreSQL type for a source column (trusted text: built only from known names)."""
    if column.kind == "enum":
        return "text"
    if column.kind == "domain":
        base = column.base_type or "text"
        return base if bare_type(base) in BUILTIN_TYPES else "text"
    if column.kind == "array":
        element = column.base_type or "text"
        if bare_type(column.type) in BUILTIN_TYPES:
            return column.type
        return "text[]" if element else "text"
    if bare_type(column.type) in BUILTIN_TYPES:
        return column.type
    return "text"


# DuckDB: source type -> DuckDB type. Anything not listed is stored as VARCHAR holding PostgreSQL's text form.
_DUCKDB_NATIVE = {
    "smallint": "SMALLINT",
    "integer": "INTEGER",
    "bigint": "BIGINT",
    "real": "FLOAT",
    "double precision": "DOUBLE",
    "boolean": "BOOLEAN",
    "text": "VARCHAR",
    "character varying": "VARCHAR",
    "character": "VARCHAR",
    "name": "VARCHAR",
    "uuid": "UUID",
    "json": "JSON",
    "jsonb": "JSON",
    "date": "DATE",
    "timestamp without time zone": "TIMESTAMP",
    "timestamp with time zone": "TIMESTAMPTZ",
    "time without time zone": "TIME",
    "bytea": "BLOB",
}


def duckdb_type(column: Column) -> str:
    """DuckDB type: native when exact; numeric(p,s) with p <= 38 -> DECIMAL(p,s); arrays -> JSON; else VARCHAR."""
    if column.kind == "array":
        return "JSON"
    base = column.base_type if column.kind == "domain" and column.base_type else column.type
    bare = bare_type(base)
    if bare == "numeric":
        import re

        match = re.match(r"numeric\((\d+),(\d+)\)", base.replace(" ", ""))
        if match and int(match.group(1)) <= 38:
            return f"DECIMAL({match.group(1)},{match.group(2)})"
        return "VARCHAR"
    if column.kind in ("enum", "composite", "range", "multirange"):
        return "VARCHAR"
    return _DUCKDB_NATIVE.get(bare, "VARCHAR")


# Built-in types whose binary COPY form is the same on every PostgreSQL from 12 to 18 and does not depend on the
# server (no OIDs inside, no encoding-dependent parsing): rows of these move as COPY (FORMAT binary) between two
# PostgreSQL servers, which skips the text conversion on both ends.
# fmt: off
BINARY_STABLE_TYPES = {
    "smallint", "integer", "bigint", "numeric", "real", "double precision", "boolean", "text", "character varying",
    "character", "bytea", "uuid", "json", "jsonb", "date", "time without time zone", "time with time zone",
    "timestamp without time zone", "timestamp with time zone", "interval", "inet", "cidr", "macaddr", "macaddr8",
    "bit", "bit varying", "point", "line", "lseg", "box", "path", "polygon", "circle", "money",
}
# fmt: on


def binary_refusal(columns: tuple[Column, ...]) -> str | None:
    """Why these columns cannot move as binary COPY between two PostgreSQL servers (None: they can, exactly).

    Binary is exact only when the destination column has the source column's type (so not for enums, composites
    or extension types, which become text, nor arrays of them: an array's binary form names its element type),
    and only for types whose binary form is stable across server versions."""
    for column in columns:
        if column.kind in ("enum", "composite", "range", "multirange", "pseudo"):
            return f"column {column.name} is of type {column.type} ({column.kind}): it moves as text"
        declared = column.base_type if column.kind == "domain" and column.base_type else column.type
        if postgres_type(column) != declared:
            return f"column {column.name} ({column.type}) becomes {postgres_type(column)} in the destination"
        if bare_type(declared) not in BINARY_STABLE_TYPES:
            return f"column {column.name} is of type {column.type}, whose binary form may differ between servers"
        if column.kind == "array" and bare_type(column.base_type or "") not in BINARY_STABLE_TYPES:
            return f"column {column.name} is an array of {column.base_type}"
    return None
