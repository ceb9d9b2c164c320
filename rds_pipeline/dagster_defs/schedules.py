"""Schedules: the integration's replication frequency (interval, anchor time or cron), with per-table overrides.

One schedule per distinct frequency. A tick launches sync_all for its tables: per table, the current and
previous window of incremental tables, every chunk of full-table ones, and the whole history of a table never
synced.
"""

from collections import defaultdict

import dagster as dg

from rds_pipeline.dagster_defs.jobs import tick_run_request
from rds_pipeline.dagster_defs.tables import TableAsset


def build_schedules(assets: list[TableAsset], sync_all: dg.JobDefinition) -> list[dg.ScheduleDefinition]:
    grouped: dict[str, list[TableAsset]] = defaultdict(list)
    for asset in assets:
        grouped[asset.frequency.name].append(asset)
    return [_schedule(name, members, sync_all) for name, members in sorted(grouped.items())]


def _schedule(name: str, members: list[TableAsset], sync_all: dg.JobDefinition) -> dg.ScheduleDefinition:
    frequency = members[0].frequency

    @dg.schedule(
        name=name,
        cron_schedule=frequency.cron,
        execution_timezone=frequency.timezone,
        job=sync_all,
        description=f"Replicates {len(members)} table(s) {frequency.description} ({frequency.timezone}).",
    )
    def _tick(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        stamp = context.scheduled_execution_time.isoformat() if context.scheduled_execution_time else "now"
        return tick_run_request(members, run_key=f"{name}:{stamp}", reason=f"schedule {name}")

    return _tick
