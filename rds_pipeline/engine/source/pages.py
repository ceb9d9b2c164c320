"""A table's pages at the source, read once per full-table sync: how many, how many make a chunk of about
``chunk_rows`` rows (from ``pg_class.reltuples``), and the snapshot xmin a new generation starts from.

Chunks of pages are ranges of ``ctid``, which PostgreSQL 14+ reads with a TID range scan (only those pages).
Before 14 such a range is a scan of the whole table per chunk, so older servers copy the table in one COPY.
"""

from __future__ import annotations

import psycopg2.extensions

from rds_pipeline.engine.core.ranges import PageSource
from rds_pipeline.engine.quoting import quote_ident
from rds_pipeline.engine.selection import SelectedTable

TID_RANGE_SCAN = 140000  # server_version_num of PostgreSQL 14
ROWS_PER_PAGE_UNKNOWN = 60  # a table never analyzed (reltuples < 0): a guess, corrected at the next ANALYZE


def read_pages(conn: psycopg2.extensions.connection, table: SelectedTable) -> PageSource | None:
    """The table's pages now, or None where chunks of pages do not apply: PostgreSQL before 14; views and
    partitioned tables, which have no pages of their own; materialized views, whose every refresh rewrites all
    their pages (rows would be read twice or not at all across it). One short catalog query; it ends its
    transaction."""
    relation = table.relation
    with conn.cursor() as cur:
        cur.execute(
            "SELECT current_setting('server_version_num')::int, c.relkind::text, "
            "pg_relation_size(c.oid) / current_setting('block_size')::bigint, c.reltuples::float8, "
            "txid_snapshot_xmin(txid_current_snapshot())::text "
            "FROM pg_catalog.pg_class c WHERE c.oid = to_regclass(%s)",
            (f"{quote_ident(relation.schema)}.{quote_ident(relation.name)}",),
        )
        row = cur.fetchone()
    conn.commit()
    if row is None:
        return None
    version, kind, pages, tuples, since = row
    if version < TID_RANGE_SCAN or kind != "r":
        return None
    per_page = tuples / pages if tuples > 0 and pages > 0 else ROWS_PER_PAGE_UNKNOWN
    return PageSource(int(pages), max(1, int(table.chunk_rows / max(per_page, 1e-9))), str(since))
