"""``rds-pipeline cdc setup | status | drop``: the publication and slot of an integration, each command printing
the SQL it runs (or, without the right, the SQL an admin should run).

``drop`` matters most: a slot nobody reads keeps every WAL segment written after its position, until the
disk fills (or ``max_slot_wal_keep_size`` invalidates it). Dropping also forgets the destination's stream state,
so the next sync copies the log-based tables again from a new snapshot: nothing is silently skipped.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from psycopg2 import sql

from rds_pipeline.engine.config import IntegrationConfig
from rds_pipeline.engine.core.rows import one
from rds_pipeline.engine.destinations.base import Destination
from rds_pipeline.engine.destinations.factory import open_destination
from rds_pipeline.engine.errors import RdsPipelineError, SetupNeeded
from rds_pipeline.engine.replication.cdc.setup import (
    ask_primary,
    ensure_publication,
    publication_tables,
    run_or_ask_admin,
)
from rds_pipeline.engine.replication.cdc.slot import PLUGIN, slot_status
from rds_pipeline.engine.report import format_size
from rds_pipeline.engine.selection import SelectedTable
from rds_pipeline.engine.source.connection import source_connection
from rds_pipeline.engine.source.logical import FAILOVER_SLOTS, publication_facts, readiness, replica_facts


def log_based(selection: list[SelectedTable]) -> list[SelectedTable]:
    tables = [t for t in selection if t.method == "log_based"]
    if not tables:
        raise RdsPipelineError(
            "no table is selected with `method: log_based`. Fix: set it on a table in "
            "`tables:` (see README.md, 'Log-based replication')"
        )
    return tables


def setup(config: IntegrationConfig, selection: list[SelectedTable]) -> Iterator[str]:
    """Check readiness, create or extend the publication, create the slot (without a snapshot: the first sync
    copies each table under its own)."""
    tables = log_based(selection)
    with source_connection(config.source) as conn:
        published = publication_facts(conn, config.publication_name, tables)
        problems = readiness(conn, tables).problems(tables, config.source.user, published)
        if published is not None:
            problems += published.problems(tables)
        if problems:
            lines = [f"{subject}: {what}\n  fix: {fix}" for subject, what, fix in problems]
            raise SetupNeeded("the source is not ready for log-based replication:\n" + "\n".join(lines))
        standby = replica_facts(conn, config.slot_name).standby
        if standby:
            ask_primary(conn, config.publication_name, tables)
        statements = [] if standby else ensure_publication(conn, config.publication_name, tables)
        yield from (f"{text};" for text in statements)
        if not statements:
            yield f"-- publication {config.publication_name} already holds the {len(tables)} log-based table(s)"
        if slot_status(conn, config.slot_name) is not None:
            yield f"-- slot {config.slot_name} already exists"
            return
        # a standby's own slot cannot be a failover one
        failover = sql.SQL(", false, false, true" if conn.server_version >= FAILOVER_SLOTS and not standby else "")
        statement = sql.SQL("SELECT pg_create_logical_replication_slot({}, {}{})").format(
            sql.Literal(config.slot_name), sql.Literal(PLUGIN), failover
        )
        yield from (
            f"{text};"
            for text in run_or_ask_admin(
                conn, [statement], "an admin (or grant the replication right: `rds-pipeline check` prints it)"
            )
        )


def status(config: IntegrationConfig, selection: list[SelectedTable], destination: Destination | None) -> Iterator[str]:
    tables = [t for t in selection if t.method == "log_based"]
    with source_connection(config.source) as conn:
        published = publication_tables(conn, config.publication_name)
        found = slot_status(conn, config.slot_name)
        with conn.cursor() as cur:
            cur.execute("SELECT current_setting('max_slot_wal_keep_size')")
            keep = one(cur.fetchone())[0]
        conn.rollback()
    if published is None:
        yield f"publication {config.publication_name}: missing (run `rds-pipeline cdc setup`)"
    else:
        names = ", ".join(f"{s}.{n}" for s, n in sorted(published)) or "no tables"
        yield f"publication {config.publication_name}: {names}"
    if found is None:
        yield f"slot {config.slot_name}: missing (the first sync creates it; or `rds-pipeline cdc setup`)"
    else:
        reader = f"read by PID {found.active_pid}" if found.active else "idle"
        yield (
            f"slot {config.slot_name}: {reader}; confirmed {found.confirmed_flush_lsn}; lag {format_size(found.lag_bytes)}; "
            f"retained WAL {format_size(found.retained_bytes)}; wal_status {found.wal_status}; safe_wal_size "
            f"{format_size(found.safe_wal_size) if found.safe_wal_size is not None else 'unlimited'} "
            f"(max_slot_wal_keep_size {keep})"
        )
    if destination is not None:
        lsn, age = _destination_position(destination, config.slot_name)
        yield (f"destination: changes applied up to {lsn}, {age}" if lsn else "destination: nothing applied yet")
        snapshots = destination.changes().snapshot_lsns(config.slot_name)
        for table in tables:
            at = snapshots.get(table.id)
            yield f"  {table.id}: " + (f"streaming (snapshot at {at})" if at else "needs a snapshot (next sync)")


def _destination_position(destination: Destination, slot: str) -> tuple[str | None, str]:
    lsn = destination.changes().applied_lsn(slot)
    if lsn is None:
        return None, ""
    seconds = destination.changes().slot_age_seconds(slot) or 0
    return lsn, f"last moved {seconds // 60} min {seconds % 60} s ago"


def drop(
    config: IntegrationConfig, destination: Destination | None, *, keep_publication: bool = False
) -> Iterator[str]:
    """Drop the slot (and the publication), then forget the destination's stream state."""
    with source_connection(config.source) as conn:
        found = slot_status(conn, config.slot_name)
        if found is not None and found.active:
            raise RdsPipelineError(
                f"slot {config.slot_name} is being read (walsender PID {found.active_pid}). Fix: "
                "wait for the sync to finish (or stop it), then drop"
            )
        statements = []
        if found is not None:
            statements.append(sql.SQL("SELECT pg_drop_replication_slot({})").format(sql.Literal(config.slot_name)))
        if not keep_publication and publication_tables(conn, config.publication_name) is not None:
            statements.append(sql.SQL("DROP PUBLICATION {}").format(sql.Identifier(config.publication_name)))
        for statement in statements:  # one at a time: the slot goes even if the publication is not ours
            yield from (f"{text};" for text in run_or_ask_admin(conn, [statement], "an admin"))
        if not statements:
            yield f"-- no slot {config.slot_name} and no publication {config.publication_name} on the source"
    if destination is not None:
        forgotten = destination.changes().forget_slot(config.slot_name)
        yield (
            f"-- destination: stream state of {config.slot_name} forgotten; {forgotten} table(s) will be copied "
            "again from a new snapshot at the next sync"
        )


@contextlib.contextmanager
def destination_of(config: IntegrationConfig) -> Iterator[Destination]:
    """The configured destination, where the stream's state lives."""

    destination = open_destination(config)
    try:
        yield destination
    finally:
        destination.close()
