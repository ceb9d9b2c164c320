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
BUILTIN_TYPES = {
    "smallint", "integer", "bigint", "numeric", "real", "double precision", "money", "boolean",
    "text", "character varying", "character", '"char"', "name", "bytea", "uuid", "json", "jsonb", "xml",
    "date", "time without time zone", "time with time zone", "timestamp without time zone",
    "timestamp with time zone", "interval", "inet", "cidr", "macaddr", "macaddr8", "bit", "bit varying",
    "tsvector", "tsquery", "point", "line", "lseg", "box", "path", "polygon", "circle", "int4range",
    "int8range", "numrange", "tsrange", "tstzrange", "daterange", "int4multirange", "int8multirange",
    "nummultirange", "tsmultirange", "tstzmultirange", "datemultirange", "pg_lsn", "oid", "regclass",
    "txid_snapshot", "pg_snapshot",
}  # fmt: skip


def _bare(type_name: str) -> str:
    """``numeric(5,2)`` -> ``numeric``; ``timestamp(3) with time zone`` -> ``timestamp with time zone``."""
    import re

    return re.sub(r"\(\d+(,\d+)?\)", "", type_name.removesuffix("[]")).strip()


def postgres_type(column: Column) -> str:
    """The destination PostgreSQL type for a source column (trusted text: built only from known names)."""
    if column.kind == "enum":
        return "text"
    if column.kind == "domain":
        base = column.base_type or "text"
        return base if _bare(base) in BUILTIN_TYPES else "text"
    if column.kind == "array":
        element = column.base_type or "text"
        if _bare(column.type) in BUILTIN_TYPES:
            return column.type
        return "text[]" if element else "text"
    if _bare(column.type) in BUILTIN_TYPES:
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
    bare = _bare(base)
    if bare == "numeric":
        import re

        match = re.match(r"numeric\((\d+),(\d+)\)", base.replace(" ", ""))
        if match and int(match.group(1)) <= 38:
            return f"DECIMAL({match.group(1)},{match.group(2)})"
        return "VARCHAR"
    if column.kind in ("enum", "composite", "range", "multirange"):
        return "VARCHAR"
    return _DUCKDB_NATIVE.get(bare, "VARCHAR")
