"""Copies of log-based tables under the snapshot a new slot exported: then streaming from the slot's consistent
point holds every later change once, with no gap and no double at the handoff.

- The first sync creates the integration's slot with ``EXPORT_SNAPSHOT`` and copies every table under it.
- A table added later (or reset, or whose copy failed) gets its own snapshot from a **temporary** slot, as
  PostgreSQL's table sync does; its consistent point becomes the table's LSN filter: the stream applies that
  table's changes only from transactions committed at or after it, and everything before is in the copy.
- A range of a table (a backfill of some partitions) is copied the same way, then the stream is caught up past
  the copy's point, so the range converges with the rest of the table.

Each table (each chunk of it) goes through the full-table COPY path (bytes from COPY TO into COPY FROM, never
Python rows) and commits on its own, so memory stays flat and a failure loses only that table's copy.
"""

from __future__ import annotations

import datetime as dt
import secrets
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import psycopg2.extensions

from rds_pipeline.engine.config import SourceConfig
from rds_pipeline.engine.core.copy_out import CopyOut, ExtractionLog
from rds_pipeline.engine.core.ranges import KeyRange
from rds_pipeline.engine.core.session_settings import apply_session_settings
from rds_pipeline.engine.destinations.base import Destination
from rds_pipeline.engine.replication.cdc.slot import SlotSnapshot, create_slot, replication_connection, use_snapshot
from rds_pipeline.engine.replication.extract import binary_copy, select_query
from rds_pipeline.engine.selection import SelectedTable
from rds_pipeline.engine.source.connection import connect_source

if TYPE_CHECKING:  # paramiko loads only when a tunnel is opened
    from rds_pipeline.engine.source.tunnel import SshTunnel


@dataclass
class SnapshotResult:
    slot: str
    consistent_point: str
    rows: dict[str, int] = field(default_factory=dict)
    failed: dict[str, BaseException] = field(default_factory=dict)


def snapshot_tables(
    config: SourceConfig,
    destination: Destination,
    tables: list[SelectedTable],
    slot: str,
    *,
    temporary: bool = False,
    chunks: dict[str, list[KeyRange]] | None = None,
    ranges: dict[str, KeyRange] | None = None,
    main_slot: str | None = None,
    on_table: Callable[[str, int], None] | None = None,
    tunnel: SshTunnel | None = None,
    failover: bool = False,
    wait_seconds: float | None = None,
) -> SnapshotResult:
    """Create ``slot`` (temporary: dropped when this returns) with an exported snapshot and copy ``tables`` as of
    it: whole (in ``chunks`` when given) or only ``ranges[table id]``. A whole table's state records the
    snapshot's LSN under ``main_slot`` (default ``slot``); a permanent slot's position is recorded too.
    A table that fails is in ``failed``; the others still commit. ``failover`` and ``wait_seconds``: see
    ``create_slot``."""
    replication = replication_connection(config, tunnel)
    try:
        snapshot, _ = create_slot(replication, slot, temporary, failover=failover, wait_seconds=wait_seconds)
        source = connect_source(config, tunnel)
        try:
            apply_session_settings(source)
            use_snapshot(source, snapshot)  # the exporting connection stays open until this transaction began
            result = SnapshotResult(slot, snapshot.consistent_point)
            for table in tables:
                part = (ranges or {}).get(table.id)
                try:
                    pieces = [part] if part is not None else (chunks or {}).get(table.id) or [KeyRange()]
                    result.rows[table.id] = sum(_copy(source, destination, table, snapshot, r, config) for r in pieces)
                except Exception as exc:  # noqa: BLE001 - one table's failure never stops another
                    result.failed[table.id] = exc
                    if (
                        source.closed
                        or source.get_transaction_status() != psycopg2.extensions.TRANSACTION_STATUS_INTRANS
                    ):
                        for rest in tables[tables.index(table) + 1 :]:  # the snapshot is gone with the transaction
                            result.failed.setdefault(rest.id, exc)
                        break
                    continue
                if part is None:
                    destination.changes().record_snapshot(table, main_slot or slot, snapshot.consistent_point)
                if on_table is not None:
                    on_table(table.id, result.rows[table.id])
        finally:
            source.close()
    finally:
        replication.close()  # a temporary slot goes with its connection
    if not temporary:
        destination.changes().record_lsn(slot, snapshot.consistent_point)
    return result


def temporary_slot_name(slot: str) -> str:
    return f"{slot[:48]}_snap_{secrets.token_hex(4)}"


def _copy(
    source: psycopg2.extensions.connection,
    destination: Destination,
    table: SelectedTable,
    snapshot: SlotSnapshot,
    key_range: KeyRange,
    config: SourceConfig,
) -> int:
    """One range (or the whole table), replaced in the destination; the source transaction (the snapshot)
    stays open for the next one."""
    binary, copy_format = binary_copy(destination, table, config.copy_format, config.ssh is not None)
    query = select_query(
        table, key_range, csv=destination.copy_csv, array_as_json=destination.array_as_json, binary=binary
    )
    extraction = ExtractionLog(
        table=table.id,
        query=query.as_string(source),
        started_at=dt.datetime.now(dt.UTC),
        parameters={"snapshot": snapshot.snapshot_name, "format": copy_format},
    )
    copy = CopyOut(source, query, table.id, extraction, binary=binary)
    report, _ = destination.load(table, key_range, copy, uuid.uuid4().hex)
    return report.rows_inserted
