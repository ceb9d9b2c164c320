"""What log-based replication needs from the source, checked and set up with the exact SQL shown.

- ``wal_level = logical``: on RDS, ``rds.logical_replication = 1`` in the DB parameter group, then a reboot.
- The REPLICATION attribute (``rds_replication`` on RDS) to create and read slots.
- A replica identity on every log-based table: without a primary key (or ``REPLICA IDENTITY FULL`` or an
  index), adding the table to a publication that publishes UPDATE and DELETE makes those statements **fail on
  the source**. Such a table is refused before anything is changed.
- A publication ``FOR TABLE …`` of exactly the log-based tables (``FOR ALL TABLES`` needs rds_superuser), with
  ``publish_via_partition_root`` so a partitioned table's changes arrive under its own name. When the user
  may not create or alter it (only a table's owner may add it), the statements are returned for an admin.
"""

from __future__ import annotations

import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

from rds_pipeline.engine.errors import SetupNeeded
from rds_pipeline.engine.replication.cdc.slot import publication_statement
from rds_pipeline.engine.selection import SelectedTable


def publication_tables(conn: psycopg2.extensions.connection, publication: str) -> set[tuple[str, str]] | None:
    """The tables a publication sends (None: it does not exist): named ones, and those it takes in through
    ``FOR ALL TABLES`` or ``FOR TABLES IN SCHEMA`` (PostgreSQL 15+), as ``pg_publication_tables`` lists them."""
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_publication WHERE pubname = %s", (publication,))
        if cur.fetchone() is None:
            conn.rollback()
            return None
        cur.execute("SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s", (publication,))
        found = {(schema, name) for schema, name in cur.fetchall()}
    conn.rollback()
    return found


def publication_plan(
    conn: psycopg2.extensions.connection, publication: str, tables: list[SelectedTable]
) -> list[sql.Composed]:
    """The statements that make ``publication`` hold every log-based table (none when it already does)."""
    wanted = [(t.relation.schema, t.relation.name) for t in tables]
    existing = publication_tables(conn, publication)
    if existing is None:
        return [publication_statement(publication, wanted, conn.server_version)] if wanted else []
    missing = [name for name in wanted if name not in existing]
    if not missing:
        return []
    return [
        sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
            sql.Identifier(publication), sql.SQL(", ").join(sql.Identifier(s, n) for s, n in missing)
        )
    ]


def run_or_ask_admin(conn: psycopg2.extensions.connection, statements: list[sql.Composed], who: str) -> list[str]:
    """Run ``statements`` in one transaction and return their text; without the right, change nothing and raise
    ``SetupNeeded`` with the statements for ``who`` (an admin, the tables' owner, …) to run."""
    texts = [s.as_string(conn) for s in statements]
    try:
        with conn.cursor() as cur:
            for statement in statements:
                cur.execute(statement)
        conn.commit()
    except psycopg2.errors.InsufficientPrivilege as exc:
        conn.rollback()
        reason = str(exc).strip().splitlines()[0]
        raise SetupNeeded(f"{reason}. Fix: ask {who} to run:\n  " + ";\n  ".join(texts) + ";") from None
    return texts


def ensure_publication(
    conn: psycopg2.extensions.connection, publication: str, tables: list[SelectedTable]
) -> list[str]:
    """Create or extend the publication; returns the SQL it ran. Without the right, raise ``SetupNeeded``
    with the statements for an admin (nothing was changed)."""
    return run_or_ask_admin(
        conn, publication_plan(conn, publication, tables), "an admin (the tables' owner, or rds_superuser on RDS)"
    )


def ask_primary(conn: psycopg2.extensions.connection, publication: str, tables: list[SelectedTable]) -> None:
    """On a standby nothing but a slot can be created: a publication missing a table is refused with the SQL
    to run on the primary (it reaches the standby with the WAL)."""
    missing = publication_plan(conn, publication, tables)
    if missing:
        raise SetupNeeded(
            "the source is a standby, where nothing can be created: a publication is made on the primary and "
            "reaches the standby with the WAL. Fix: run on the primary:\n  "
            + ";\n  ".join(statement.as_string(conn) for statement in missing)
            + ";"
        )
