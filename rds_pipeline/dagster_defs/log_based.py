"""Log-based tables in Dagster: one stream run applies the slot's changes for every log-based table (they share
the slot's position), so a run for any of them reads the slot once and records each table it brought up to date.

- Partitions are the snapshot's key-range chunks (as for full-table tables). A stream run materializes the
  table's latest partition; a first sync (the snapshot) materializes them all; a backfill of other partitions
  copies just their range again under a fresh snapshot, then catches the stream up past it.
- One run per slot at a time: the stream's steps use the slot's own pool (``rds_slot__<slot>``, limit 1: see
  ``pools.py``), and the engine also holds a lock on the slot in the destination.
- Metadata per run: changes applied per kind, the LSN range, lag and retained WAL; the ``slot_lag`` check
  warns, then fails, on retained WAL and on how stale the replica was, with the thresholds of ``log_based:``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dagster as dg

from rds_pipeline.dagster_defs.execute import TableFailure, partition_keys
from rds_pipeline.dagster_defs.materializations import record_partitions
from rds_pipeline.dagster_defs.partitions import chunk_ranges, range_for_keys
from rds_pipeline.dagster_defs.resources import RdsDestinationResource, RdsSourceResource
from rds_pipeline.dagster_defs.tables import CHECK_REPLICA, PART_COLUMNS, PART_PRIMARY_KEY, TableAsset
from rds_pipeline.engine.config import LogBasedConfig
from rds_pipeline.engine.core.ranges import KeyRange
from rds_pipeline.engine.destinations.base import LoadingReport
from rds_pipeline.engine.replication.verify import CheckOutcome, columns_check, combined, primary_key_check

if TYPE_CHECKING:  # the log-based flow loads only when a slot is read
    from rds_pipeline.engine.replication.cdc.flow import LogBasedResult

CHECK_SLOT = "slot_lag"


@dataclass
class StreamedTable:
    """One log-based table a stream run brought up to date, as Dagster will record it."""

    asset: TableAsset
    partitions: list[str]  # the partitions it materializes
    metadata: dict[str, Any]
    checks: list[tuple[str, CheckOutcome]]


@dataclass
class StreamRun:
    result: LogBasedResult
    runs: list[StreamedTable]  # one per log-based table the run brought up to date
    failures: dict[str, str]  # table id -> error with its fix


def stream(
    assets: list[TableAsset],
    ranges: dict[str, KeyRange],
    source: RdsSourceResource,
    destination: RdsDestinationResource,
    instance: dg.DagsterInstance | None,
) -> StreamRun:
    """Run the engine's log-based flow over ``assets`` (every log-based table of the integration)."""
    from rds_pipeline.engine.replication.cdc.flow import sync_log_based

    config = source.integration()
    dest = destination.get()
    keys = {a.table.id: partition_keys(a, instance) for a in assets}
    chunks = {a.table.id: chunk_ranges(a.plan, keys[a.table.id]) for a in assets}
    result = sync_log_based(
        config, dest, [a.table for a in assets], chunks={k: v for k, v in chunks.items() if v}, ranges=ranges
    )
    runs = []
    for asset in assets:
        table_id = asset.table.id
        if table_id in result.failures:
            continue
        all_keys = keys[table_id]
        if table_id in result.snapshots and table_id not in ranges:
            partitions = all_keys  # a whole snapshot: every partition holds its rows
        elif table_id in ranges:
            partitions = [k for k in all_keys if ranges[table_id].contains(range_for_keys(asset.plan, k, k, all_keys))]
        else:
            partitions = all_keys[-1:]
        outcomes = [
            (
                CHECK_REPLICA,
                combined(
                    [
                        (PART_COLUMNS, columns_check(dest.column_names(asset.table), asset.table)),
                        (PART_PRIMARY_KEY, primary_key_check(0, asset.table, dest.primary_key_enforced(asset.table))),
                    ]
                ),
            )
        ]
        outcomes.append((CHECK_SLOT, slot_check(result, config.log_based)))
        runs.append(StreamedTable(asset, partitions, table_metadata(result, table_id), outcomes))
    return StreamRun(result, runs, dict(result.failures))


def table_metadata(result: LogBasedResult, table_id: str) -> dict[str, Any]:
    changes = result.changes(table_id)
    snapshot = result.snapshots.get(table_id, 0)
    stream = result.stream
    status = result.status
    report = LoadingReport(table_id, table_id, "log_based", batch_id=stream.end_lsn or "" if stream else "")
    report.rows_inserted = snapshot + changes.get("insert", 0)
    report.rows_updated = changes.get("update", 0)
    report.rows_deleted = changes.get("delete", 0)
    report.seconds = result.seconds
    return {
        "dagster/row_count": report.rows_inserted,
        "rows_inserted": report.rows_inserted,
        "rows_updated": report.rows_updated,
        "rows_deleted": report.rows_deleted,
        "truncates": changes.get("truncate", 0),
        "snapshot_rows": snapshot,
        "snapshot_lsn": result.snapshot_lsn.get(table_id, ""),
        "duration_seconds": round(result.seconds, 3),
        "slot": result.slot,
        "lsn_start": (stream.start_lsn or "") if stream else "",
        "lsn_end": (stream.end_lsn or "") if stream else "",
        "transactions": stream.transactions if stream else 0,
        "lag_bytes": status.lag_bytes if status and status.lag_bytes is not None else -1,
        "retained_wal_bytes": status.retained_bytes if status and status.retained_bytes is not None else -1,
        "wal_status": (status.wal_status or "") if status else "",
        "heartbeat": result.heartbeat,
        "slot_recovered": result.recovered or "",
        "generated_computed": ", ".join(result.computed.get(table_id, [])),
        "batch_id": report.batch_id,
        "plan": "snapshot, then stream" if snapshot else "stream",
        "loading_report": dg.MetadataValue.json(report.as_dict()),
    }


def slot_check(result: LogBasedResult, options: LogBasedConfig) -> CheckOutcome:
    """Retained WAL (what the slot makes the server keep) and lag, against the configured thresholds."""
    status = result.status
    if result.recovered:  # the run recovered, but changes were lost from the log: say it once, loudly
        return CheckOutcome(
            False,
            f"slot {result.slot} was lost and re-created ({result.recovered}). Fix: sync more often than "
            "max_slot_wal_keep_size allows the slot to fall behind",
            {"severity": "ERROR", "slot_recovered": result.recovered},
        )
    if status is None:
        return CheckOutcome(False, f"slot {result.slot} is missing on the source", {"severity": "ERROR"})
    retained_mb = (status.retained_bytes or 0) / 2**20
    metadata = {
        "retained_wal_mb": round(retained_mb, 1),
        "lag_bytes": status.lag_bytes or 0,
        "wal_status": status.wal_status or "",
        "safe_wal_size": status.safe_wal_size or -1,
        "severity": "OK",
    }
    if status.wal_status == "lost" or retained_mb > options.lag_fail_mb:
        metadata["severity"] = "ERROR"
        return CheckOutcome(
            False,
            f"slot {result.slot} holds {retained_mb:.0f} MB of WAL (fails above "
            f"{options.lag_fail_mb} MB), wal_status {status.wal_status}: sync more often, or run "
            "`rds-pipeline cdc drop` if this integration is gone",
            metadata,
        )
    if status.wal_status == "unreserved" or retained_mb > options.lag_warn_mb:
        metadata["severity"] = "WARN"
        return CheckOutcome(
            False,
            f"slot {result.slot} holds {retained_mb:.0f} MB of WAL (warns above "
            f"{options.lag_warn_mb} MB), wal_status {status.wal_status}",
            metadata,
        )
    return CheckOutcome(
        True, f"slot {result.slot} holds {retained_mb:.1f} MB of WAL, wal_status {status.wal_status}", metadata
    )


def emit_stream(
    context: dg.AssetExecutionContext | dg.OpExecutionContext, run: StreamRun, own: set[dg.AssetKey]
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """Materializations and check results for the tables the stream brought up to date: results for ``own``
    (the assets of this step), logged events for the rest."""
    result = run.result
    if result.stream is not None:
        counts = ", ".join(f"{n} {k}s" for k, n in result.stream.counts.items() if n)
        context.log.info(
            f"slot {result.slot}: {result.stream.start_lsn} -> {result.stream.end_lsn}, "
            f"{result.stream.transactions} transactions ({counts or 'no changes'}); "
            f"snapshots: {result.snapshots or 'none'}"
        )
    as_asset = isinstance(context, dg.AssetExecutionContext)
    run_partitions = (
        set(context.partition_keys)
        if as_asset and context.has_partition_key_range or (as_asset and context.has_partition_key)
        else set()
    )
    for table_run in run.runs:
        key = table_run.asset.key
        mine = as_asset and key in own
        logged = [p for p in table_run.partitions if not (mine and p in run_partitions)]
        record_partitions(context, key, logged, table_run.metadata, with_counts=not mine)
        if mine:
            yield dg.MaterializeResult(asset_key=key, metadata=table_run.metadata)
        for name, outcome in table_run.checks:
            severity = (
                dg.AssetCheckSeverity.WARN
                if outcome.metadata.get("severity") == "WARN"
                else dg.AssetCheckSeverity.ERROR
            )
            if mine:
                yield dg.AssetCheckResult(
                    asset_key=key,
                    check_name=name,
                    passed=outcome.passed,
                    severity=severity,
                    description=outcome.description,
                    metadata=outcome.metadata,
                )
            elif not as_asset:
                context.log_event(
                    dg.AssetCheckEvaluation(  # type: ignore[arg-type]  # as in execute.log_run
                        asset_key=key,
                        check_name=name,
                        passed=outcome.passed,
                        severity=severity,
                        description=outcome.description,
                        metadata=outcome.metadata,
                    )
                )


def stream_failures(context: dg.AssetExecutionContext | dg.OpExecutionContext, run: StreamRun) -> list[TableFailure]:
    failures = [TableFailure(t, e) for t, e in sorted(run.failures.items())]
    for failed in failures:
        context.log.error(f"FAILED {failed.line()}")
    return failures
