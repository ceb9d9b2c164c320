"""Where each table stands (``rds-pipeline status``): its position from the destination's state, the only truth,
and its lag from a cheap probe of the source (one statement for every key-based table's max(key), one for the
current WAL position). Nothing is written, and the source sees two short reads."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from psycopg2 import sql

from rds_pipeline.engine.config import IntegrationConfig
from rds_pipeline.engine.destinations.base import Destination
from rds_pipeline.engine.replication.cdc.slot import WAL_POSITION
from rds_pipeline.engine.report import format_size
from rds_pipeline.engine.selection import INTEGER_TYPES, SelectedTable
from rds_pipeline.engine.source.connection import source_connection
from rds_pipeline.engine.source.probe import KeyProbe, probe_max_keys

NOT_SYNCED = "not synced yet"
UP_TO_DATE = "up to date"


@dataclass(frozen=True)
class TableStanding:
    table_id: str
    destination_table: str
    method: str
    synced_at: dt.datetime | None  # the last committed load, from the destination's state
    position: str | None  # bookmark (key-based), LSN applied (log-based); None for a full table
    source_position: str | None  # max(key) on the source, or the source's current WAL LSN
    lag: str  # in words: "2 h 5 min of keys", "1,200 keys", "3.2 MB of WAL", "up to date", ...
    lag_amount: float | None = None  # seconds of keys, keys, or bytes of WAL (see lag_unit), for --json
    lag_unit: str | None = None
    lost: str | None = None  # log-based: when and why the source last lost the slot (re-created, tables copied again)


def standings(
    config: IntegrationConfig, selection: list[SelectedTable], destination: Destination
) -> list[TableStanding]:
    """One standing per selected table; a source that cannot be reached leaves lag unknown, with the reason."""
    bookmarks = destination.read_bookmarks()
    synced = destination.read_sync_times()
    generations = destination.read_generations()
    applied_lsn = None
    lost = None
    logged = [t for t in selection if t.method == "log_based"]
    if logged:
        applied_lsn = destination.changes().applied_lsn(config.slot_name)
        event = destination.changes().slot_lost(config.slot_name)
        if event is not None:
            at, why = event
            lost = f"slot lost at {at.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC ({why}); re-created, tables copied again"
    probes: dict[str, KeyProbe] = {}
    wal: tuple[Any, ...] | None = None
    problem: str | None = None
    keyed = [t for t in selection if t.method == "key_based" and t.replication_key]
    databases = sorted({t.relation.database for t in keyed} - {config.source.database})
    try:
        for database in databases:  # tables of other databases on the server: one statement each
            with source_connection(config.source, database) as conn:
                probes |= probe_max_keys(conn, [t for t in keyed if t.relation.database == database], bookmarks)
        with source_connection(config.source) as conn:
            probes |= probe_max_keys(
                conn, [t for t in keyed if t.relation.database == config.source.database], bookmarks
            )
            if logged:
                with conn.cursor() as cur:
                    cur.execute(
                        sql.SQL("SELECT {0}::text, pg_wal_lsn_diff({0}, %s::pg_lsn)").format(WAL_POSITION),
                        (applied_lsn or "0/0",),
                    )
                    wal = cur.fetchone()
                conn.rollback()
    except Exception as exc:  # noqa: BLE001 - the destination's part still stands without the source
        problem = f"source not reached: {str(exc).strip().splitlines()[0]}"
    found = []
    for table in selection:
        bookmark = bookmarks.get(table.id)
        common: dict[str, Any] = {  # the fields every standing shares
            "table_id": table.id,
            "destination_table": table.destination_table,
            "method": table.method,
            "synced_at": synced.get(table.id) if table.id in bookmarks else None,
        }
        if table.method == "log_based":
            lag, amount = (problem or NOT_SYNCED, None) if wal is None or applied_lsn is None else _wal_lag(wal[1])
            found.append(
                TableStanding(
                    **common,
                    position=applied_lsn,
                    source_position=wal[0] if wal else None,
                    lag=lag,
                    lag_amount=amount,
                    lag_unit="bytes" if amount is not None else None,
                    lost=lost,
                )
            )
        elif table.method == "key_based":
            probe = probes.get(table.id)
            lag, amount, unit = _key_lag(table, bookmark, probe.max_key if probe else None, bool(probe and probe.newer))
            found.append(
                TableStanding(
                    **common,
                    position=bookmark,
                    source_position=probe.max_key if probe else None,
                    lag=problem if probe is None and problem else lag,
                    lag_amount=amount,
                    lag_unit=unit,
                )
            )
        elif table.method == "xmin":
            found.append(
                TableStanding(
                    **common,
                    position=f"xid {bookmark}" if bookmark else None,
                    source_position=None,
                    lag="row versions since the last sync" if bookmark else NOT_SYNCED,
                )
            )
        else:
            lag = "full copy each sync" if common["synced_at"] else NOT_SYNCED
            generation = generations.get(table.id)
            if generation is not None:  # a copy in chunks of pages, stopped part-way: the next sync resumes it
                lag += (
                    f"; a new copy under way: sweeping, {generation.swept} of {generation.pages} pages"
                    if generation.copy_done
                    else f"; a new copy under way: {generation.copied} of {generation.pages} pages"
                )
            found.append(TableStanding(**common, position=None, source_position=None, lag=lag))
    return found


def _wal_lag(lag_bytes: float | None) -> tuple[str, float]:
    amount = float(lag_bytes or 0)
    return (UP_TO_DATE if amount <= 0 else f"{format_size(amount)} of WAL"), max(amount, 0.0)


def _key_lag(
    table: SelectedTable, bookmark: str | None, max_key: str | None, newer: bool
) -> tuple[str, float | None, str | None]:
    if bookmark is None:
        return NOT_SYNCED, None, None
    if not newer or max_key is None:
        return UP_TO_DATE, 0.0, None
    column = next(c for c in table.columns if c.name == table.replication_key)
    base = column.base_type if column.kind == "domain" and column.base_type else column.type
    if base in INTEGER_TYPES:
        keys = int(max_key) - int(bookmark)
        return f"{keys:,} keys", float(keys), "keys"
    if column.category == "D":
        try:
            seconds = (_instant(max_key) - _instant(bookmark)).total_seconds()
        except ValueError:
            return f"behind (source max {max_key})", None, None
        return f"{_duration(seconds)} of keys", seconds, "seconds"
    return f"behind (source max {max_key})", None, None


def _instant(text: str) -> dt.datetime:
    """PostgreSQL's text of a date or timestamp(tz) (ISO, as the session prints it); naive values as UTC."""
    value = dt.datetime.fromisoformat(text.replace(" ", "T", 1))
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _duration(seconds: float) -> str:
    minutes = int(seconds // 60)
    if minutes < 1:
        return f"{int(seconds)} s"
    if minutes < 60:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min"
    return f"{hours // 24} days"
