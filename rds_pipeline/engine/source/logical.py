"""What the source offers log-based replication, read and never changed: ``wal_level``, the right to use slots,
the WAL a slot may hold, and each table's replica identity. ``check`` reports it; the log-based flow refuses to
start without it (``replication/cdc/setup.py``)."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg2.extensions

from rds_pipeline.engine.core.rows import one
from rds_pipeline.engine.quoting import quote_ident
from rds_pipeline.engine.selection import SelectedTable

IDENTITIES = {"d": "default", "n": "nothing", "f": "full", "i": "index"}


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
            fix = (
                "set rds.logical_replication = 1 in the instance's DB parameter group, then reboot the instance"
                if self.rds
                else "ALTER SYSTEM SET wal_level = logical; -- then restart PostgreSQL"
            )
            found.append(("wal_level", f"is {self.wal_level}; log-based replication needs logical", fix))
        if not self.can_replicate:
            grant = (
                f"GRANT rds_replication TO {quote_ident(user)};"
                if self.rds
                else f"ALTER ROLE {quote_ident(user)} REPLICATION;"
            )
            found.append((f"user {user}", "may not create or read replication slots", grant))
        for table in tables:
            identity, has_pk = self.identities.get(table.id, ("?", False))
            name = f"{quote_ident(table.relation.schema)}.{quote_ident(table.relation.name)}"
            if identity == "?":
                found.append((table.id, "is not in the source any more", "run `rds-pipeline discover`"))
            elif identity == "n" or (identity == "d" and not has_pk):
                found.append(
                    (
                        table.id,
                        f"has replica identity {IDENTITIES[identity]} and no primary key: adding it "
                        "to a publication would make its UPDATEs and DELETEs fail on the source",
                        f"ALTER TABLE {name} ADD PRIMARY KEY (…);  -- or: ALTER TABLE {name} REPLICA IDENTITY FULL;",
                    )
                )
        return found


def readiness(conn: psycopg2.extensions.connection, tables: list[SelectedTable]) -> Readiness:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT current_setting('wal_level'), current_setting('rds.logical_replication', true) IS NOT NULL, "
            "r.rolsuper OR r.rolreplication OR pg_has_role(current_user, 'rds_replication', 'MEMBER') IS TRUE, "
            "current_setting('max_slot_wal_keep_size')::text FROM pg_roles r WHERE r.rolname = current_user"
            if _has_role(cur, "rds_replication")
            else "SELECT current_setting('wal_level'), current_setting('rds.logical_replication', true) IS NOT NULL, "
            "r.rolsuper OR r.rolreplication, current_setting('max_slot_wal_keep_size')::text "
            "FROM pg_roles r WHERE r.rolname = current_user"
        )
        wal_level, rds, can_replicate, keep = one(cur.fetchone())
        identities: dict[str, tuple[str, bool]] = {}
        for table in tables:
            cur.execute(
                "SELECT c.relreplident, EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND "
                "i.indisprimary) FROM pg_class c WHERE c.oid = to_regclass(%s)",
                (f"{quote_ident(table.relation.schema)}.{quote_ident(table.relation.name)}",),
            )
            row = cur.fetchone()
            if row:
                identities[table.id] = (row[0], bool(row[1]))
    conn.rollback()
    return Readiness(wal_level, bool(rds), bool(can_replicate), _megabytes(keep), identities)


def _has_role(cur: psycopg2.extensions.cursor, role: str) -> bool:
    cur.execute("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s)", (role,))
    return bool(one(cur.fetchone())[0])


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
