"""``rds-pipeline status``: each table's standing (the engine's: the destination's state and a probe of the
source) with what the Dagster instance knows: the last sync's outcome and rows, and the next tick."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.event_api import EventLogRecord
from dagster._core.scheduler.instigation import InstigatorStatus, InstigatorType
from dagster._utils.schedules import get_next_cron_tick

from rds_pipeline.dagster_defs.automation import SENSOR
from rds_pipeline.dagster_defs.tables import TableAsset, table_assets
from rds_pipeline.engine.config import find_config_path, load_config
from rds_pipeline.engine.destinations.factory import open_destination
from rds_pipeline.engine.replication.status import TableStanding, standings
from rds_pipeline.engine.selection import resolve_selection
from rds_pipeline.engine.source.catalog import Catalog

FAILURES_SCANNED = 500  # the newest step failures read for per-table outcomes
DUCKDB_BUSY_SECONDS = 5  # status does not wait long for a DuckDB file a run is writing


@dataclass(frozen=True)
class TableStatus:
    table: str
    replica: str
    method: str
    last_sync: str | None  # ISO time of the last committed load (the destination's state)
    outcome: str  # ok, failed, never run
    error: str | None  # the last failure's message and fix, when it is newer than the last success
    position: str | None  # bookmark or LSN
    source_position: str | None
    lag: str
    lag_amount: float | None
    lag_unit: str | None
    rows_loaded: int | None  # rows the last sync copied
    next_tick: str | None  # ISO time of the next tick of the table's frequency
    automation: str  # "schedule <name> running|stopped", or the automation sensor's state
    slot_lost: str | None = None  # log-based: when and why the source last lost the slot, and what was done


def collect_status(config_path: str | Path | None, instance: dg.DagsterInstance) -> list[TableStatus]:
    path = find_config_path(config_path)
    config = load_config(path)
    catalog = Catalog.load(config.catalog_path)
    assets = table_assets(config, resolve_selection(config.tables, catalog, config.source.database))
    destination = open_destination(config, lock_wait_seconds=DUCKDB_BUSY_SECONDS)
    try:
        standing = {s.table_id: s for s in standings(config, [a.table for a in assets], destination)}
    finally:
        destination.close()
    failures = _latest_failures(instance)
    latest = {
        r.asset_entry.asset_key: r.asset_entry.last_materialization_record
        for r in instance.get_asset_records([a.key for a in assets])
    }  # one query for every table
    states = _instigator_states(instance)
    now = dt.datetime.now(dt.UTC)
    found = []
    for asset in assets:
        success, rows = _last_success(instance, asset.key, latest.get(asset.key))
        failed = failures.get(asset.table.id)
        if failed and (success is None or failed[0] > success):
            outcome, error = "failed", failed[1]
        else:
            outcome, error = ("ok" if success is not None or standing[asset.table.id].synced_at else "never run"), None
        found.append(_row(asset, standing[asset.table.id], outcome, error, rows, now, config.automation, states))
    return found


def _row(
    asset: TableAsset,
    standing: TableStanding,
    outcome: str,
    error: str | None,
    rows: int | None,
    now: dt.datetime,
    automation: str,
    states: dict[tuple[str, str], InstigatorStatus],
) -> TableStatus:
    frequency = asset.frequency
    if automation == "declarative":  # the sensor runs from the start unless someone stopped it
        stopped = states.get(("sensor", SENSOR)) == InstigatorStatus.STOPPED
        state = f"sensor {SENSOR} " + ("stopped (start it in the UI)" if stopped else "running")
    else:  # schedules start stopped
        running = states.get(("schedule", frequency.name)) in (
            InstigatorStatus.RUNNING,
            InstigatorStatus.DECLARED_IN_CODE,
        )
        state = f"schedule {frequency.name} " + ("running" if running else "stopped (start it in the UI)")
    next_tick = get_next_cron_tick(frequency.cron, now, frequency.timezone)
    return TableStatus(
        table=asset.table.id,
        replica=asset.key.to_user_string(),
        method=asset.table.method,
        last_sync=standing.synced_at.astimezone(dt.UTC).isoformat(timespec="seconds") if standing.synced_at else None,
        outcome=outcome,
        error=error,
        position=standing.position,
        source_position=standing.source_position,
        lag=standing.lag,
        lag_amount=standing.lag_amount,
        lag_unit=standing.lag_unit,
        rows_loaded=rows,
        next_tick=next_tick.astimezone(dt.UTC).isoformat(timespec="seconds"),
        automation=state,
        slot_lost=standing.lost,
    )


def _last_success(
    instance: dg.DagsterInstance, key: dg.AssetKey, newest: EventLogRecord | None
) -> tuple[float | None, int | None]:
    """The newest materialization's time, and the rows of the newest one that counted them: usually the newest
    itself; a catch-up also records the other windows it covered, without counts (then a second look)."""
    if newest is None:
        return None, None
    if _rows(newest) is not None:
        return newest.timestamp, _rows(newest)
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=key), limit=20, ascending=False).records
    return newest.timestamp, next((r for r in map(_rows, records) if r is not None), None)


def _rows(record: EventLogRecord) -> int | None:
    meta = record.asset_materialization.metadata if record.asset_materialization else {}
    if "rows_inserted" in meta and "dagster/row_count" in meta:
        return int(meta["dagster/row_count"].value)  # type: ignore[arg-type]
    return None


def _latest_failures(instance: dg.DagsterInstance) -> dict[str, tuple[float, str]]:
    """Per table id, its newest failure: the failed_tables every failed replication step reports."""
    records = instance.get_event_records(
        dg.EventRecordsFilter(dg.DagsterEventType.STEP_FAILURE), limit=FAILURES_SCANNED, ascending=False
    )
    found: dict[str, tuple[float, str]] = {}
    for record in records:
        event = record.event_log_entry.dagster_event
        data = event.step_failure_data if event else None
        user = data.user_failure_data if data else None
        failed = user.metadata.get("failed_tables") if user else None
        items: Any = failed.value if failed is not None else None
        for item in items or []:
            found.setdefault(item["table"], (record.event_log_entry.timestamp, item["error"]))
    return found


def _instigator_states(instance: dg.DagsterInstance) -> dict[tuple[str, str], InstigatorStatus]:
    """(kind, name) -> status of every schedule and sensor the instance has a state for."""
    found = {}
    for state in instance.all_instigator_state():
        kind = "schedule" if state.instigator_type == InstigatorType.SCHEDULE else "sensor"
        found[(kind, state.instigator_name)] = state.status
    return found


def as_json(rows: list[TableStatus]) -> list[dict[str, Any]]:
    return [asdict(r) for r in rows]
