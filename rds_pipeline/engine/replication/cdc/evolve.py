"""Schema evolution of log-based tables, by the README's rules, without waiting for ``rds-pipeline discover``:

- a column added at the source is added to the destination (when the table takes all its columns, i.e. has
  no ``columns:`` list) and its values flow from then on;
- a column whose type changed is altered in the destination (a checked cast, as for the other methods);
- a column dropped at the source is kept in the destination, NULL in new rows.

The stream learns of a change from a Relation message (its columns' type OIDs and modifiers), a run from the
source's catalog before it copies anything; both describe columns as discovery does, so they compare equal.
"""

from __future__ import annotations

import dataclasses

import psycopg2.extensions

from rds_pipeline.engine.core.messages import Relation
from rds_pipeline.engine.selection import SelectedTable
from rds_pipeline.engine.source.catalog import Column
from rds_pipeline.engine.source.logical import qualified

_KINDS = {"b": "base", "e": "enum", "d": "domain", "r": "range", "m": "multirange", "c": "composite", "p": "pseudo"}
_DESCRIBE = """
    SELECT {name}, format_type(t.oid, {typmod}), t.typtype,
           CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod)
                WHEN t.typcategory = 'A' THEN format_type(t.typelem, NULL) END,
           coalesce(bt.typcategory, t.typcategory)
    FROM {source}
    JOIN pg_type t ON t.oid = {type_oid}
    LEFT JOIN pg_type bt ON t.typtype = 'd' AND bt.oid = t.typbasetype
"""


def _column(name: str, type_name: str, typtype: str, base: str | None, category: str) -> Column:
    kind = "array" if typtype == "b" and category == "A" else _KINDS.get(typtype, "base")
    return Column(name, type_name, True, None, kind, base, category)


def live_columns(conn: psycopg2.extensions.connection, table: SelectedTable) -> list[Column] | None:
    """The table's columns now, in the source's catalog (None: the table is gone)."""
    query = (
        _DESCRIBE.format(name="a.attname", typmod="a.atttypmod", type_oid="a.atttypid", source="pg_attribute a")
        + "WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND "
        "NOT a.attisdropped ORDER BY a.attnum"
    )
    with conn.cursor() as cur:
        cur.execute(query, (qualified(table),))
        found = [_column(*row) for row in cur.fetchall()]
    conn.rollback()
    return found or None


def relation_columns(conn: psycopg2.extensions.connection, relation: Relation) -> list[Column]:
    """The columns a Relation message describes (type OIDs and modifiers), as discovery would spell them."""
    query = _DESCRIBE.format(
        name="u.name",
        typmod="u.typmod",
        type_oid="u.oid",
        source="unnest(%s::oid[], %s::int[], %s::text[]) WITH ORDINALITY AS u(oid, typmod, name, i)",
    )
    with conn.cursor() as cur:
        cur.execute(
            query + " ORDER BY u.i",
            (
                [c.type_oid for c in relation.columns],
                [c.type_modifier for c in relation.columns],
                [c.name for c in relation.columns],
            ),
        )
        found = [_column(*row) for row in cur.fetchall()]
    conn.rollback()
    return found


def evolve(table: SelectedTable, columns: list[Column]) -> tuple[SelectedTable, list[str]]:
    """``table`` with the source's current columns applied (see the module's rules), and what changed."""
    by_name = {c.name: c for c in columns}
    kept: list[Column] = []
    changes: list[str] = []
    for column in table.columns:
        now = by_name.get(column.name)
        if now is None and column.name not in table.primary_key:
            changes.append(f"{column.name}: dropped at the source (kept in the destination, NULL in new rows)")
            continue
        if now is not None and now.type != column.type:
            kept.append(
                dataclasses.replace(
                    column, type=now.type, kind=now.kind, base_type=now.base_type, category=now.category
                )
            )
            changes.append(f"{column.name}: type {column.type} -> {now.type}")
        else:
            kept.append(column)
    if table.all_columns:
        for column in columns:
            if column.name not in table.column_names:
                kept.append(column)
                changes.append(f"{column.name}: added ({column.type})")
    if not changes:
        return table, []
    return dataclasses.replace(table, columns=tuple(kept)), changes
