"""Publications and replication slots: create one (with an exported snapshot), read its state, drop it.

The snapshot handoff rests on ``CREATE_REPLICATION_SLOT … EXPORT_SNAPSHOT``, as PostgreSQL's own table sync
and PeerDB do: the slot's consistent point and the exported snapshot are the same moment, so a copy made
under ``SET TRANSACTION SNAPSHOT`` plus the changes streamed from the slot hold every row once. The snapshot
lives only while the replication connection that created it stays open and idle. Every statement is also
returned as text, so a command can print what it runs, or what an administrator should run.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
from psycopg2 import sql

from rds_pipeline.engine.config import SourceConfig
from rds_pipeline.engine.core.rows import one
from rds_pipeline.engine.core.session_settings import SESSION_SETTINGS
from rds_pipeline.engine.errors import SetupNeeded
from rds_pipeline.engine.source.connection import connect_source
from rds_pipeline.engine.source.logical import FAILOVER_SLOTS

if TYPE_CHECKING:  # paramiko loads only when a tunnel is opened
    from rds_pipeline.engine.source.tunnel import SshTunnel

PLUGIN = "pgoutput"
# where the source's WAL ends now: on a standby, what it has replayed (all a slot there can decode)
WAL_POSITION = sql.SQL("CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END")


@dataclass(frozen=True)
class SlotSnapshot:
    slot: str
    consistent_point: str  # the LSN from which the slot streams what the snapshot does not hold
    snapshot_name: str  # for SET TRANSACTION SNAPSHOT, while the creating connection stays open


@dataclass(frozen=True)
class SlotStatus:
    slot: str
    active: bool
    active_pid: int | None
    restart_lsn: str | None
    confirmed_flush_lsn: str | None
    lag_bytes: int | None  # changes not yet confirmed: current LSN minus its confirmed flush
    retained_bytes: int | None  # WAL the server keeps for the slot: current LSN minus its restart LSN
    wal_status: str | None  # reserved, extended, unreserved, lost
    safe_wal_size: int | None  # bytes that can still be written before the slot is in danger (None: no limit)
    invalidated: str | None = None  # why the server gave the slot up (wal_removed, rows_removed, ...): unusable
    failover: bool | None = None  # PostgreSQL 17+: created to be synchronized to standbys
    synced: bool | None = None  # PostgreSQL 17+: a standby's copy of a primary's failover slot

    @property
    def lost(self) -> str | None:
        """Why the slot can no longer be read (None: it can): the changes it held are gone."""
        if self.invalidated:
            return self.invalidated
        return "wal_removed" if self.wal_status == "lost" else None


def publication_statement(name: str, tables: list[tuple[str, str]], server_version: int = 0) -> sql.Composed:
    """``CREATE PUBLICATION … FOR TABLE …`` for the log-based tables only (``FOR ALL TABLES`` needs a
    superuser, rds_superuser on RDS), publishing a partitioned table's changes under its root and, on
    PostgreSQL 18, stored generated columns' values (so the stream carries them, and a table with
    REPLICA IDENTITY FULL keeps accepting UPDATEs)."""
    generated = sql.SQL(", publish_generated_columns = stored" if server_version >= 180000 else "")
    return sql.SQL("CREATE PUBLICATION {} FOR TABLE {} WITH (publish_via_partition_root = true{})").format(
        sql.Identifier(name), sql.SQL(", ").join(sql.Identifier(schema, table) for schema, table in tables), generated
    )


def create_publication(conn: psycopg2.extensions.connection, name: str, tables: list[tuple[str, str]]) -> str:
    statement = publication_statement(name, tables, conn.server_version)
    text = statement.as_string(conn)
    with conn.cursor() as cur:
        cur.execute(statement)
    conn.commit()
    return text


def replication_connection(
    config: SourceConfig, tunnel: SshTunnel | None = None, database: str | None = None
) -> psycopg2.extras.LogicalReplicationConnection:
    """A walsender connection whose session settings make pgoutput's text values exact and unambiguous (UTC,
    ISO dates, full float digits), as on the COPY path: they are set at startup, before any value is sent."""

    settings = {name: value.replace(" ", "") for name, value in SESSION_SETTINGS.items()}
    return connect_source(
        config,
        tunnel,
        database,  # type: ignore[return-value]
        connection_factory=psycopg2.extras.LogicalReplicationConnection,
        settings=settings,
    )


def create_slot(
    conn: psycopg2.extras.LogicalReplicationConnection,
    slot: str,
    temporary: bool = False,
    *,
    failover: bool = False,
    wait_seconds: float | None = None,
) -> tuple[SlotSnapshot, str]:
    """Create a pgoutput slot and export its snapshot; a temporary slot is dropped when ``conn`` closes. Keep
    ``conn`` open and idle until the copy under the snapshot has started. ``failover``: on a PostgreSQL 17+
    primary, mark it to be synchronized to standbys. The server waits for every transaction running at that
    moment to end (on a standby, for the primary to log them): ``wait_seconds`` bounds that, then the
    creation is cancelled and ``SetupNeeded`` says what keeps it waiting."""
    if failover and not temporary and conn.server_version >= FAILOVER_SLOTS:
        statement = sql.SQL("CREATE_REPLICATION_SLOT {} LOGICAL {} (SNAPSHOT 'export', FAILOVER true)").format(
            sql.Identifier(slot), sql.Identifier(PLUGIN)
        )
    else:  # the syntax every server from 12 to 18 accepts
        statement = sql.SQL("CREATE_REPLICATION_SLOT {} {}LOGICAL {} EXPORT_SNAPSHOT").format(
            sql.Identifier(slot), sql.SQL("TEMPORARY " if temporary else ""), sql.Identifier(PLUGIN)
        )
    text = statement.as_string(conn)
    timer = threading.Timer(wait_seconds, conn.cancel) if wait_seconds else None
    try:
        with conn.cursor() as cur:
            if timer is not None:
                timer.start()
            cur.execute(text)
            name, consistent_point, snapshot_name, _plugin = one(cur.fetchone())
    except psycopg2.errors.QueryCanceled:
        raise SetupNeeded(
            f"creating slot {slot!r} waited {wait_seconds:.0f}s (log_based.slot_create_wait_seconds) for the "
            "transactions running on the source to end, and was cancelled. Fix: " + WAITING_FIX
        ) from None
    finally:
        if timer is not None:
            timer.cancel()
    return SlotSnapshot(name, consistent_point, snapshot_name), text


WAITING_FIX = (
    "on a standby the slot waits for the primary to log its running transactions: run SELECT "
    "pg_log_standby_snapshot(); on the primary (or write anything there; RDS's own heartbeat does within "
    "minutes), then sync again. On a primary, a long transaction keeps it waiting: find it in pg_stat_activity "
    "(the oldest xact_start with a backend_xid) and end it. Nothing was created, so no slot holds WAL"
)


def use_snapshot(conn: psycopg2.extensions.connection, snapshot: SlotSnapshot) -> None:
    """Start a transaction on ``conn`` that sees exactly what the slot's consistent point saw (psycopg2 opens
    it as REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT must be its first statement)."""
    conn.rollback()
    conn.set_session(isolation_level=psycopg2.extensions.ISOLATION_LEVEL_REPEATABLE_READ, readonly=True)
    with conn.cursor() as cur:
        cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot.snapshot_name,))


def slot_status(conn: psycopg2.extensions.connection, slot: str) -> SlotStatus | None:
    """The slot's activity, position, retained WAL and risk (``wal_status``, ``safe_wal_size``), and whether the
    server invalidated it (PostgreSQL 17+ says why; 16 says ``conflicting`` on a standby)."""
    version = conn.server_version
    invalidated = (
        "invalidation_reason"
        if version >= 170000
        else "CASE WHEN conflicting THEN 'rows_removed' END"
        if version >= 160000
        else "NULL::text"
    )
    failover = "failover, synced" if version >= 170000 else "NULL::boolean, NULL::boolean"
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "SELECT active, active_pid, restart_lsn::text, confirmed_flush_lsn::text, "
                "pg_wal_lsn_diff({position}, confirmed_flush_lsn)::bigint, "
                "pg_wal_lsn_diff({position}, restart_lsn)::bigint, wal_status, safe_wal_size, {invalidated}, "
                "{failover} FROM pg_replication_slots WHERE slot_name = %s"
            ).format(position=WAL_POSITION, invalidated=sql.SQL(invalidated), failover=sql.SQL(failover)),
            (slot,),
        )
        row = cur.fetchone()
    conn.rollback()
    return SlotStatus(slot, *row) if row else None


def drop_slot(conn: psycopg2.extensions.connection, slot: str) -> str:
    """Drop the slot, so it never holds WAL again (fails if a client is reading it)."""
    text = "SELECT pg_drop_replication_slot(%s)"
    with conn.cursor() as cur:
        cur.execute(text, (slot,))
        shown = cur.query.decode() if cur.query else text
    conn.commit()
    return shown
