"""Discovery: every database the user may CONNECT to, and in each, one catalog query (never one per table)."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import psycopg2.extensions
from psycopg2 import sql

from rds_pipeline.engine.config import SourceConfig
from rds_pipeline.engine.core.rows import one
from rds_pipeline.engine.source.catalog import Catalog, Column, Relation
from rds_pipeline.engine.source.connection import connect_source, open_tunnel

log = logging.getLogger(__name__)

EXCLUDED_DATABASES = ("rdsadmin",)
_KINDS = {"r": "table", "p": "partitioned_table", "v": "view", "m": "materialized_view", "f": "foreign_table"}
_TYPE_KINDS = {
    "b": "base",
    "e": "enum",
    "d": "domain",
    "r": "range",
    "m": "multirange",
    "c": "composite",
    "p": "pseudo",
}
# Candidate replication keys: dates and timestamps, and integers (also through domains).
_KEY_TYPES = ("date", "timestamp without time zone", "timestamp with time zone", "smallint", "integer", "bigint")

DATABASES_SQL = """
SELECT datname FROM pg_database
WHERE datallowconn AND NOT datistemplate AND datname <> ALL(%s)
  AND has_database_privilege(datname, 'CONNECT')
ORDER BY datname
"""

# One query returns every relation of the database with its columns, primary key, indexed columns, view
# dependencies, size and estimate. Leaf partitions are folded into their root partitioned table.
CATALOG_SQL = """
WITH rels AS (
    SELECT c.oid, n.nspname, c.relname, c.relkind, c.reltuples, obj_description(c.oid, 'pg_class') AS comment,
           has_table_privilege(c.oid, 'SELECT') AS can_select
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
      AND NOT c.relispartition
      AND n.nspname NOT IN ('pg_catalog', 'information_schema')
      AND n.nspname NOT LIKE 'pg\\_toast%%' AND n.nspname NOT LIKE 'pg\\_temp\\_%%'
      AND has_schema_privilege(n.oid, 'USAGE')
),
cols AS (
    SELECT a.attrelid,
           json_agg(json_build_array(
               a.attname, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull, pg_get_expr(d.adbin, d.adrelid),
               t.typtype, CASE WHEN t.typtype = 'd' THEN format_type(t.typbasetype, t.typtypmod)
                               WHEN t.typcategory = 'A' THEN format_type(t.typelem, NULL) END,
               coalesce(bt.typcategory, t.typcategory),
               format_type(coalesce(bt.oid, t.oid), NULL)
           ) ORDER BY a.attnum) AS columns
    FROM rels r
    JOIN pg_attribute a ON a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped
    JOIN pg_type t ON t.oid = a.atttypid
    LEFT JOIN pg_type bt ON t.typtype = 'd' AND bt.oid = t.typbasetype
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    GROUP BY a.attrelid
),
pk AS (
    SELECT i.indrelid, array_agg(a.attname ORDER BY k.ord) AS columns
    FROM pg_index i
    JOIN rels r ON r.oid = i.indrelid
    CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
    WHERE i.indisprimary AND k.ord <= i.indnkeyatts  -- key columns only, not INCLUDE columns
    GROUP BY i.indrelid
),
indexed AS (
    SELECT i.indrelid, array_agg(DISTINCT a.attname) AS columns
    FROM pg_index i
    JOIN rels r ON r.oid = i.indrelid
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
    WHERE i.indisvalid OR r.relkind = 'p'
    GROUP BY i.indrelid
),
leaves AS (
    SELECT r.oid AS root, count(*) FILTER (WHERE pt.isleaf) AS partitions,
           sum(greatest(c.reltuples, 0)) FILTER (WHERE pt.isleaf) AS reltuples,
           bool_and(c.reltuples >= 0) FILTER (WHERE pt.isleaf) AS analyzed,
           sum(pg_total_relation_size(pt.relid)) FILTER (WHERE pt.isleaf) AS size,
           bool_and(lp.columns IS NOT NULL) FILTER (WHERE pt.isleaf) AS all_leaves_have_pk,
           count(DISTINCT lp.columns::text) FILTER (WHERE pt.isleaf) AS leaf_pk_variants,
           min(lp.columns::text[]) FILTER (WHERE pt.isleaf) AS leaf_pk,
           (SELECT array_agg(a.attname::text ORDER BY k.ord)
            FROM pg_partitioned_table ppt
            CROSS JOIN LATERAL unnest(ppt.partattrs) WITH ORDINALITY AS k(attnum, ord)
            JOIN pg_attribute a ON a.attrelid = ppt.partrelid AND a.attnum = k.attnum
            WHERE ppt.partrelid = r.oid AND k.attnum <> 0) AS partition_key
    FROM rels r
    CROSS JOIN LATERAL pg_partition_tree(r.oid) pt
    JOIN pg_class c ON c.oid = pt.relid
    LEFT JOIN LATERAL (
        SELECT array_agg(a.attname ORDER BY k.ord) AS columns
        FROM pg_index i
        CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE i.indrelid = pt.relid AND i.indisprimary AND k.ord <= i.indnkeyatts
    ) lp ON true
    WHERE r.relkind = 'p'
    GROUP BY r.oid
),
deps AS (
    SELECT rw.ev_class AS view_oid,
           jsonb_agg(DISTINCT jsonb_build_array(dn.nspname, dc.relname)) AS reads_raw
    FROM pg_rewrite rw
    JOIN rels r ON r.oid = rw.ev_class AND r.relkind IN ('v', 'm')
    JOIN pg_depend d ON d.classid = 'pg_rewrite'::regclass AND d.objid = rw.oid
                    AND d.refclassid = 'pg_class'::regclass AND d.refobjid <> rw.ev_class
    JOIN pg_class dc ON dc.oid = d.refobjid
    JOIN pg_namespace dn ON dn.oid = dc.relnamespace
    GROUP BY rw.ev_class
)
SELECT r.nspname, r.relname, r.relkind, r.comment, r.can_select,
       coalesce(cols.columns, '[]'::json), coalesce(pk.columns, '{}'), coalesce(indexed.columns, '{}'),
       CASE WHEN r.relkind = 'p' THEN CASE WHEN leaves.analyzed THEN leaves.reltuples END
            WHEN r.reltuples >= 0 AND r.relkind IN ('r', 'm') THEN r.reltuples END,
       CASE WHEN r.relkind = 'p' THEN leaves.size
            WHEN r.relkind IN ('r', 'm') THEN pg_total_relation_size(r.oid) END,
       coalesce(leaves.partitions, 0), deps.reads_raw,
       CASE WHEN leaves.all_leaves_have_pk AND leaves.leaf_pk_variants = 1
            THEN leaves.leaf_pk || array(SELECT unnest(leaves.partition_key) EXCEPT SELECT unnest(leaves.leaf_pk)) END
FROM rels r
LEFT JOIN cols ON cols.attrelid = r.oid
LEFT JOIN pk ON pk.indrelid = r.oid
LEFT JOIN indexed ON indexed.indrelid = r.oid
LEFT JOIN leaves ON leaves.root = r.oid
LEFT JOIN deps ON deps.view_oid = r.oid
ORDER BY r.nspname, r.relname
"""


def list_databases(conn: psycopg2.extensions.connection) -> list[str]:
    """Databases this user may CONNECT to, without templates and RDS's own ``rdsadmin``."""
    with conn.cursor() as cur:
        cur.execute(DATABASES_SQL, (list(EXCLUDED_DATABASES),))
        return [row[0] for row in cur.fetchall()]


def discover_database(conn: psycopg2.extensions.connection, database: str) -> list[Relation]:
    """Every relation of the connected database, from one catalog query."""
    with conn.cursor() as cur:
        cur.execute(CATALOG_SQL)
        rows = cur.fetchall()
    conn.rollback()
    return [_relation(database, row) for row in rows]


def _relation(database: str, row: tuple[Any, ...]) -> Relation:
    schema, name, relkind, comment, can_select, raw_columns, pk, indexed, estimate, size, partitions, reads, leaf_pk = (
        row
    )
    inferred = not pk and bool(leaf_pk)
    if inferred:
        # Every partition has the same primary key; with the partition key it is unique across the table.
        pk = leaf_pk
    columns = tuple(
        Column(
            name=c[0],
            type=c[1],
            nullable=c[2],
            default=c[3],
            kind=_column_kind(c[4], c[6]),
            base_type=c[5],
            category=c[6],
        )
        for c in raw_columns
    )
    key_types = {c[0]: c[7] for c in raw_columns}
    indexed_set = set(indexed)
    candidates = [c.name for c in columns if key_types[c.name] in _KEY_TYPES and c.kind != "array"]
    candidates.sort(key=lambda n: (n not in indexed_set, [c.name for c in columns].index(n)))
    return Relation(
        database=database,
        schema=schema,
        name=name,
        kind=_KINDS[relkind],
        columns=columns,
        primary_key=tuple(pk),
        primary_key_inferred=inferred,
        replication_key_candidates=tuple(candidates),
        indexed_columns=tuple(sorted(indexed_set)),
        row_estimate=int(estimate) if estimate is not None else None,
        size_bytes=int(size) if size is not None else None,
        comment=comment,
        reads=tuple(sorted(f"{s}.{n}" for s, n in (reads or []))),
        can_select=bool(can_select),
        partitions=int(partitions),
    )


def _column_kind(typtype: str, category: str) -> str:
    if typtype == "b" and category == "A":
        return "array"
    return _TYPE_KINDS.get(typtype, "base")


def key_stats(
    conn: psycopg2.extensions.connection, wanted: list[tuple[Relation, str]]
) -> dict[str, list[tuple[str, str | None, str | None]]]:
    """min/max of the given (relation, column) pairs of one database, in one statement: they place the first
    time window and size the key-range chunks. Only selected keys are asked for (usually indexed)."""
    if not wanted:
        return {}
    parts = [
        sql.SQL("SELECT {}, {}, min({})::text, max({})::text FROM {}").format(
            sql.Literal(relation.id),
            sql.Literal(column),
            sql.Identifier(column),
            sql.Identifier(column),
            sql.Identifier(relation.schema, relation.name),
        )
        for relation, column in wanted
    ]
    with conn.cursor() as cur:
        cur.execute(sql.SQL(" UNION ALL ").join(parts))
        rows = cur.fetchall()
    conn.rollback()
    found: dict[str, list[tuple[str, str | None, str | None]]] = {}
    for relation_id, column, low, high in rows:
        found.setdefault(relation_id, []).append((column, low, high))
    return found


def discover(
    config: SourceConfig,
    databases: list[str] | None = None,
    progress: Callable[[str, int], None] | None = None,
    stats_for: Callable[[list[Relation]], list[tuple[Relation, str]]] | None = None,
) -> Catalog:
    """Discover every database the user may connect to (or only ``databases``), over one tunnel."""
    tunnel = open_tunnel(config)
    try:
        first = connect_source(config, tunnel)
        try:
            with first.cursor() as cur:
                cur.execute("SELECT current_setting('server_version')")
                version = one(cur.fetchone())[0]
            names = databases or list_databases(first)
            first.rollback()
            relations: list[Relation] = []
            for name in names:
                conn = first if name == config.database else connect_source(config, tunnel, database=name)
                try:
                    found = discover_database(conn, name)
                    if stats_for is not None:
                        stats = key_stats(conn, stats_for(found))
                        found = [
                            dataclasses.replace(r, key_stats=tuple(stats[r.id])) if r.id in stats else r for r in found
                        ]
                finally:
                    if conn is not first:
                        conn.close()
                relations.extend(found)
                if progress:
                    progress(name, len(found))
        finally:
            first.close()
    finally:
        if tunnel is not None:
            tunnel.close()
    return Catalog(relations, names, version).sorted()
