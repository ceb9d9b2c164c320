"""Schedules: the integration's replication frequency (interval, anchor time or cron), with per-table overrides.

One schedule per (frequency, partitioning job). A tick requests, per table, the current and previous window of
incremental tables, every chunk of full-table ones, and the whole history of a table never synced.
"""

from collections import defaultdict
from collections.abc import Iterator

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from rds_pipeline.dagster_defs.assets import TableAsset
from rds_pipeline.dagster_defs.ticks import job_name_for, run_request, tick_spans


def build_schedules(
    assets: list[TableAsset], jobs: dict[str, UnresolvedAssetJobDefinition]
) -> list[dg.ScheduleDefinition]:
    grouped: dict[tuple[str, str, str], list[TableAsset]] = defaultdict(list)
    for asset in assets:
        grouped[(asset.frequency.name, asset.frequency.cron, job_name_for(asset))].append(asset)
    schedules = []
    for (name, cron, job_name), members in sorted(grouped.items()):
        frequency = members[0].frequency
        schedules.append(_schedule(f"{name}__{job_name.removeprefix('rds_sync_')}", cron, frequency.timezone,
                                   jobs[job_name], members))  # fmt: skip
    return schedules


def _schedule(name: str, cron: str, timezone: str, job: UnresolvedAssetJobDefinition,
              members: list[TableAsset]) -> dg.ScheduleDefinition:  # fmt: skip
    @dg.schedule(name=name, cron_schedule=cron, execution_timezone=timezone, job=job,
                 description=f"Replicates {len(members)} table(s) {members[0].frequency.description} "
                             f"({timezone}).")  # fmt: skip
    def _tick(context: dg.ScheduleEvaluationContext) -> Iterator[dg.RunRequest]:
        stamp = context.scheduled_execution_time.isoformat() if context.scheduled_execution_time else "now"
        for asset in members:
            for span in tick_spans(asset, context.instance):
                yield run_request(asset, span, run_key=f"{asset.table.id}:{span.first}:{span.last}:{stamp}")

    return _tick
