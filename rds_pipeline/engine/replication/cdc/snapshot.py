"""The initial copy of log-based tables, under the snapshot a new slot exported: then streaming from the slot's
consistent point holds every later change once, with no gap and no double at the handoff.

Each table goes through the same COPY path as full-table replication (bytes from COPY TO into COPY FROM, never
Python rows), in its own destination transaction; the slot's consistent point is recorded in the destination
only after every table is in, so an interrupted snapshot is simply made again (with a new slot).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from dataclasses import dataclass, field

import psycopg2.extensions

from rds_pipeline.engine.config import SourceConfig
from rds_pipeline.engine.destinations.postgres import PostgresDestination
from rds_pipeline.engine.destinations.postgres_apply import record_lsn
from rds_pipeline.engine.replication.cdc.slot import SlotSnapshot, create_slot, replication_connection, use_snapshot
from rds_pipeline.engine.replication.extract import (
    CopyOut,
    ExtractionLog,
    KeyRange,
    apply_session_settings,
    select_query,
)
from rds_pipeline.engine.selection import SelectedTable
from rds_pipeline.engine.source.connection import connect_source


@dataclass
class SnapshotResult:
    slot: str
    consistent_point: str
    rows: dict[str, int] = field(default_factory=dict)


def snapshot_tables(config: SourceConfig, destination: PostgresDestination, tables: list[SelectedTable],
                    slot: str) -> SnapshotResult:  # fmt: skip
    """Create ``slot`` with an exported snapshot, copy ``tables`` as of that snapshot, then record the slot's
    consistent point in the destination (where the stream starts)."""
    replication = replication_connection(config)
    try:
        snapshot, _ = create_slot(replication, slot)
        source = connect_source(config)
        try:
            apply_session_settings(source)
            use_snapshot(source, snapshot)  # the exporting connection stays open until this transaction began
            result = SnapshotResult(slot, snapshot.consistent_point)
            for table in tables:
                result.rows[table.id] = _copy_table(source, destination, table, snapshot)
        finally:
            source.close()
    finally:
        replication.close()
    record_lsn(destination, slot, snapshot.consistent_point)
    return result


def _copy_table(source: psycopg2.extensions.connection, destination: PostgresDestination, table: SelectedTable,
                snapshot: SlotSnapshot) -> int:  # fmt: skip
    """One table, whole, replaced in the destination; the source transaction (the snapshot) stays open."""
    query = select_query(table, KeyRange(), csv=destination.copy_csv, array_as_json=destination.array_as_json)
    extraction = ExtractionLog(table=table.id, query=query.as_string(source), started_at=dt.datetime.now(dt.UTC),
                               parameters={"snapshot": snapshot.snapshot_name})  # fmt: skip
    copy = CopyOut(source, query, table.id, extraction)
    full = table if table.method == "full_table" else _as_full_table(table)
    report, _ = destination.load(full, KeyRange(), copy, uuid.uuid4().hex)
    return report.rows_inserted


def _as_full_table(table: SelectedTable) -> SelectedTable:
    """The snapshot replaces the table's rows, as a full-table load does."""
    return dataclasses.replace(table, method="full_table", replication_key=None)
