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

from dataclasses import dataclass

import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

from rds_pipeline.engine.errors import RdsPipelineError
from rds_pipeline.engine.quoting import quote_ident
from rds_pipeline.engine.replication.cdc.slot import publication_statement
from rds_pipeline.engine.selection import SelectedTable

IDENTITIES = {"d": "default", "n": "nothing", "f": "full", "i": "index"}


class SetupNeeded(RdsPipelineError):
    """The source is not ready for log-based replication; the message holds the SQL to run."""


@dataclass(frozen=True)
class Readiness:
    wal_level: str
    rds: bool  # the rds.logical_replication setting exists (Amazon RDS or Aurora)
    can_replicate: bool  # superuser, REPLICATION or rds_replication
    max_slot_wal_keep_size_mb: int  # -1: no limit
    identities: dict[str, tuple[str, bool]]  # table id -> (relreplident, has a primary key)

    def problems(self, tables: list[SelectedTable], user: str) -> list[tuple[str, str, str]]:
        """(subject, what is wrong, the fix) for each blocker."""
        found = []
        if self.wal_level != "logical":
            fix = ("set rds.logical_replication = 1 in the instance's DB parameter group, then reboot the instance"
                   if self.rds else "ALTER SYSTEM SET wal_level = logical; -- then restart PostgreSQL")  # fmt: skip
            found.append(("wal_level", f"is {self.wal_level}; log-based replication needs logical", fix))
        if not self.can_replicate:
            grant = (f"GRANT rds_replication TO {quote_ident(user)};" if self.rds
                     else f"ALTER ROLE {quote_ident(user)} REPLICATION;")  # fmt: skip
            found.append((f"user {user}", "may not create or read replication slots", grant))
        for table in tables:
            identity, has_pk = self.identities.get(table.id, ("?", False))
            name = f"{quote_ident(table.relation.schema)}.{quote_ident(table.relation.name)}"
            if identity == "?":
                found.append((table.id, "is not in the source any more", "run `rds-pipeline discover`"))
            elif identity == "n" or (identity == "d" and not has_pk):
                found.append((table.id, f"has replica identity {IDENTITIES[identity]} and no primary key: adding it "
                              "to a publication would make its UPDATEs and DELETEs fail on the source",
                              f"ALTER TABLE {name} ADD PRIMARY KEY (…);  -- or: ALTER TABLE {name} REPLICA IDENTITY FULL;"))  # fmt: skip
        return found


def readiness(conn: psycopg2.extensions.connection, tables: list[SelectedTable]) -> Readiness:
    with conn.cursor() as cur:
        cur.execute("SELECT current_setting('wal_level'), current_setting('rds.logical_replication', true) IS NOT NULL, "
                    "r.rolsuper OR r.rolreplication OR pg_has_role(current_user, 'rds_replication', 'MEMBER') IS TRUE, "
                    "current_setting('max_slot_wal_keep_size')::text FROM pg_roles r WHERE r.rolname = current_user"
                    if _has_role(cur, "rds_replication") else
                    "SELECT current_setting('wal_level'), current_setting('rds.logical_replication', true) IS NOT NULL, "
                    "r.rolsuper OR r.rolreplication, current_setting('max_slot_wal_keep_size')::text "
                    "FROM pg_roles r WHERE r.rolname = current_user")  # fmt: skip
        wal_level, rds, can_replicate, keep = cur.fetchone()
        identities: dict[str, tuple[str, bool]] = {}
        for table in tables:
            cur.execute("SELECT c.relreplident, EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND "
                        "i.indisprimary) FROM pg_class c WHERE c.oid = to_regclass(%s)",
                        (f"{quote_ident(table.relation.schema)}.{quote_ident(table.relation.name)}",))  # fmt: skip
            row = cur.fetchone()
            if row:
                identities[table.id] = (row[0], bool(row[1]))
    conn.rollback()
    return Readiness(wal_level, bool(rds), bool(can_replicate), _megabytes(keep), identities)


def _has_role(cur: psycopg2.extensions.cursor, role: str) -> bool:
    cur.execute("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s)", (role,))
    return bool(cur.fetchone()[0])


def _megabytes(setting: str) -> int:
    """``max_slot_wal_keep_size`` as shown (``-1``, ``1024MB``, ``10GB``) in MB."""
    text = setting.strip()
    if text.startswith("-"):
        return -1
    units = {"kB": 1 / 1024, "MB": 1, "GB": 1024, "TB": 1024 * 1024}
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


def publication_tables(conn: psycopg2.extensions.connection, publication: str) -> set[tuple[str, str]] | None:
    """The tables a publication holds (None: it does not exist)."""
    with conn.cursor() as cur:
        cur.execute("SELECT oid, puballtables FROM pg_publication WHERE pubname = %s", (publication,))
        row = cur.fetchone()
        if row is None:
            conn.rollback()
            return None
        cur.execute("SELECT n.nspname, c.relname FROM pg_publication_rel p JOIN pg_class c ON c.oid = p.prrelid "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE p.prpubid = %s", (row[0],))  # fmt: skip
        found = {(schema, name) for schema, name in cur.fetchall()}
    conn.rollback()
    return found


def publication_plan(conn: psycopg2.extensions.connection, publication: str,
                     tables: list[SelectedTable]) -> list[sql.Composed]:  # fmt: skip
    """The statements that make ``publication`` hold every log-based table (none when it already does)."""
    wanted = [(t.relation.schema, t.relation.name) for t in tables]
    existing = publication_tables(conn, publication)
    if existing is None:
        return [publication_statement(publication, wanted)] if wanted else []
    missing = [name for name in wanted if name not in existing]
    if not missing:
        return []
    return [sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
        sql.Identifier(publication), sql.SQL(", ").join(sql.Identifier(s, n) for s, n in missing))]  # fmt: skip


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


def ensure_publication(conn: psycopg2.extensions.connection, publication: str,
                       tables: list[SelectedTable]) -> list[str]:  # fmt: skip
    """Create or extend the publication; returns the SQL it ran. Without the right, raise ``SetupNeeded``
    with the statements for an admin (nothing was changed)."""
    return run_or_ask_admin(conn, publication_plan(conn, publication, tables),
                            "an admin (the tables' owner, or rds_superuser on RDS)")
