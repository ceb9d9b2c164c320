"""The one path every trigger takes: a request for one table goes to the engine, and its result comes back as
materializations (one per partition the sync covered) and asset-check results.

The asset (a UI partition, a backfill) and the sync jobs (a schedule tick, a sensor, ``rds-pipeline sync``,
``reset_table``) differ only in how they hand these events to Dagster: an asset yields its own partitions'
``MaterializeResult`` and logs the rest; a job logs them all. A failing table is reported with its name and
fix, and the caller goes on with the next table.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
from dagster._core.errors import DagsterExecutionInterruptedError

from rds_pipeline.dagster_defs.materializations import TableEvents
from rds_pipeline.dagster_defs.partitions import chunk_ranges, covered_keys, window_starts
from rds_pipeline.dagster_defs.resources import RdsDestinationResource, RdsSourceResource
from rds_pipeline.dagster_defs.tables import (
    CHECK_REPLICA,
    PART_COLUMNS,
    PART_PRIMARY_KEY,
    PART_ROW_COUNT,
    TableAsset,
)
from rds_pipeline.engine import interrupts
from rds_pipeline.engine.errors import ConnectionProblem, LoadError, RdsPipelineError
from rds_pipeline.engine.replication.plan import Request
from rds_pipeline.engine.replication.sync import SyncResult, sync_table
from rds_pipeline.engine.replication.verify import (
    CheckOutcome,
    columns_check,
    combined,
    primary_key_check,
    row_count_check,
)


@dataclass
class TableRun:
    """One table's sync, as Dagster will record it."""

    asset: TableAsset
    result: SyncResult
    partitions: list[str]  # every partition the sync covered
    metadata: dict[str, Any]
    checks: list[tuple[str, CheckOutcome]] = field(default_factory=list)


@dataclass(frozen=True)
class TableFailure:
    table: str
    error: str

    def line(self) -> str:
        return f"{self.table}: {self.error}"


def partition_keys(asset: TableAsset, instance: dg.DagsterInstance | None) -> list[str]:
    return list(asset.plan.partitions_def.get_partition_keys(dynamic_partitions_store=instance))


def run_table(
    asset: TableAsset,
    request: Request,
    source: RdsSourceResource,
    destination: RdsDestinationResource,
    instance: dg.DagsterInstance | None,
    checks: set[str] | None = None,
) -> TableRun:
    """Sync one table through the engine and run its checks (all of them, or ``checks``)."""
    keys = partition_keys(asset, instance)
    dest = destination.get()
    result = sync_table(source.session(), dest, asset.table, request, chunks=chunk_ranges(asset.plan, keys))
    starts = window_starts(asset.plan, keys) if asset.plan.kind == "time" and keys else None
    covered: dict[str, None] = {}  # ordered, without repeats
    for step in result.steps:
        covered.update(dict.fromkeys(covered_keys(asset.plan, keys, step.key_range, starts)))
    wanted = {name for name, _ in check_names(asset)} if checks is None else checks
    outcomes = list(_run_checks(wanted, asset, source, dest, result))
    return TableRun(asset, result, list(covered), materialization_metadata(result), outcomes)


def check_names(asset: TableAsset) -> list[tuple[str, str]]:
    parts = ["its columns match the catalog"]
    if asset.table.primary_key:
        parts.append("its primary key is unique")
    if asset.table.method == "full_table":
        parts.append("its rows equal the rows copied from the source")
    return [(CHECK_REPLICA, f"The replica matches the source: {', '.join(parts)}")]


def materialization_metadata(result: SyncResult) -> dict[str, Any]:
    extraction, report = result.extraction, result.report
    return {
        "dagster/row_count": result.rows,
        "rows_inserted": report.rows_inserted,
        "rows_updated": report.rows_updated,
        "rows_deleted": report.rows_deleted,
        "bytes": result.bytes,
        "duration_seconds": round(report.seconds, 3),
        "rows_per_second": round(report.rows_per_second, 1),
        "bookmark": result.bookmark or "",
        "null_key_rows": result.null_key_rows,
        "source_in_recovery": extraction.source_in_recovery,
        "key_range": result.key_range.describe(),
        "plan": result.plan.reason,
        "steps": len(result.steps),
        "query": dg.MetadataValue.md(f"```sql\n{extraction.query}\n```"),
        "extraction_log": dg.MetadataValue.json({"steps": [s.extraction.as_dict() for s in result.steps]}),
        "loading_report": dg.MetadataValue.json(report.as_dict()),
        "batch_id": report.batch_id,
        "attempts": result.attempts,
    }


def _run_checks(
    selected: set[str], asset: TableAsset, source: RdsSourceResource, dest: Any, result: SyncResult
) -> Iterator[tuple[str, CheckOutcome]]:
    if CHECK_REPLICA not in selected:
        return
    table = asset.table
    parts = [(PART_COLUMNS, columns_check(dest.column_names(table), table))]
    if table.primary_key:
        enforced = dest.primary_key_enforced(table)  # a catalog lookup instead of a scan of the replica
        parts.append(
            (PART_PRIMARY_KEY, primary_key_check(0 if enforced else dest.duplicate_keys(table), table, enforced))
        )
    if table.method == "full_table":
        # the rows this sync's COPY read from the source (its command tag, under the copy's snapshot) against the
        # destination's rows in the same range: catches rows lost or doubled on the way without scanning
        # production again; nor the replica: each load emptied its range and filled it in one transaction, so
        # the range holds what that COPY stored (counted after any trigger)
        key_range = result.key_range
        stored = result.rows_at_commit
        parts.append(
            (
                PART_ROW_COUNT,
                row_count_check(
                    result.rows_copied,
                    dest.count_rows(table, key_range) if stored is None else stored,
                    key_range,
                    "copied from the source by this sync",
                ),
            )
        )
    yield CHECK_REPLICA, combined(parts)


@contextmanager
def stops_without_retry() -> Iterator[None]:
    """A stop request (Ctrl-C, SIGTERM, a terminated run) ends the step as failed, never retried: Dagster's
    RetryPolicy would retry an interrupted step like any failure, and copy the range again after the stop."""
    try:
        interrupts.checkpoint()
        yield
    except (interrupts.Stopped, DagsterExecutionInterruptedError):
        raise dg.Failure(
            description="stopped (Ctrl-C, SIGTERM or a terminated run): the range in flight was rolled "
            "back; the next sync goes on from the state in the destination",
            allow_retries=False,
        ) from None


def describe_failure(asset: TableAsset, exc: BaseException) -> TableFailure:
    """The table's name, what went wrong and the fix, on one line (no traceback, no secret)."""
    if isinstance(exc, ConnectionProblem):
        text = f"{exc.message} Fix: {exc.fix}"
    elif isinstance(exc, (LoadError, RdsPipelineError)):
        text = str(exc)
    else:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        text = f"{type(exc).__name__}: {first}. Fix: see the run's log for the full error, then sync again"
    prefix = f"{asset.table.id}: "
    return TableFailure(asset.table.id, text[len(prefix) :] if text.startswith(prefix) else text)


def failure(failures: list[TableFailure], synced: int) -> dg.Failure:
    lines = "\n".join(f"- {f.line()}" for f in failures)
    return dg.Failure(
        description=f"{len(failures)} table(s) failed ({synced} synced):\n{lines}",
        metadata={"failed_tables": dg.MetadataValue.json([{"table": f.table, "error": f.error} for f in failures])},
        allow_retries=False,
    )


def log_run(events: TableEvents, run: TableRun) -> None:
    """Record a table's sync from a job: every covered partition, then the check results."""
    events.add(
        run.asset.key,
        run.partitions,
        run.metadata,
        [
            dg.AssetCheckEvaluation(
                asset_key=run.asset.key,
                check_name=name,
                passed=outcome.passed,
                description=outcome.description,
                metadata=outcome.metadata,
            )
            for name, outcome in run.checks
        ],
    )
