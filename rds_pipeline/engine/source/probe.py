"""Cheap probes of the source for sensors: max(replication key) per table against its bookmark, one statement
per database over one connection."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg2.extensions
from psycopg2 import sql

from rds_pipeline.engine.core.types import postgres_type
from rds_pipeline.engine.selection import SelectedTable


@dataclass(frozen=True)
class KeyProbe:
    table_id: str
    max_key: str | None
    newer: bool  # max(key) is greater than the bookmark (or there are rows and no bookmark yet)


def probe_max_keys(
    conn: psycopg2.extensions.connection, tables: list[SelectedTable], bookmarks: dict[str, str | None]
) -> dict[str, KeyProbe]:
    """One UNION ALL statement: for each key-based table, max(key) and whether it is past the bookmark."""
    parts = []
    for table in tables:
        assert table.replication_key is not None
        column = next(c for c in table.columns if c.name == table.replication_key)
        key = sql.Identifier(table.replication_key)
        parts.append(
            sql.SQL("SELECT {}, max({})::text, coalesce(max({}) > CAST({} AS {}), max({}) IS NOT NULL) FROM {}").format(
                sql.Literal(table.id),
                key,
                key,
                sql.Literal(bookmarks.get(table.id)),
                sql.SQL(postgres_type(column)),
                key,
                sql.Identifier(table.relation.schema, table.relation.name),
            )
        )
    if not parts:
        return {}
    with conn.cursor() as cur:
        cur.execute(sql.SQL(" UNION ALL ").join(parts))
        rows = cur.fetchall()
    conn.rollback()
    return {table_id: KeyProbe(table_id, max_key, bool(newer)) for table_id, max_key, newer in rows}
