"""Declarative automation (``automation: declarative``): each table's frequency as an ``AutomationCondition``.

A tick is ``cron_tick_passed(<the table's cron>) & ~in_progress()`` over the partitions a tick must copy:
- an incremental table (time windows, integer key ranges) or a log-based one: its latest partition only. The
  latest partition is open-ended, and the engine's planner makes it reach back to the bookmark, so the one
  request after an outage or a late start copies everything since (a table never synced gets its history);
  nothing is skipped, and every window it covered is recorded as materialized;
- a full-table table: every chunk (each is replaced whole), or its one partition.

``cron_tick_passed`` is true once after any number of missed ticks, so a daemon that was down requests one
catch-up, not one run per missed tick. The source assets are external and never materialized, so Dagster's
``on_cron`` (which also waits for every dependency to update) would never fire: hence the explicit condition.
"""

from __future__ import annotations

import dagster as dg

from rds_pipeline.dagster_defs.tables import TableAsset

SENSOR = "rds_automation"


class LatestPartition(dg.AutomationCondition):
    """The asset's last partition: the open-ended key range (or window) that reaches back to the bookmark."""

    @property
    def description(self) -> str:
        return "Latest partition (it reaches back to the bookmark)"

    @property
    def name(self) -> str:
        return "latest_partition"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:
        partitions_def = context.partitions_def
        last = partitions_def.get_last_partition_key() if partitions_def is not None else None
        if partitions_def is None:
            subset = context.candidate_subset
        elif last is None:
            subset = context.get_empty_subset()
        else:
            subset = context.candidate_subset.compute_intersection_with_partition_keys({last})
        return dg.AutomationResult(context, subset)


def automation_condition(asset: TableAsset) -> dg.AutomationCondition:
    frequency = asset.frequency
    tick = (
        dg.AutomationCondition.cron_tick_passed(frequency.cron, frequency.timezone)
        & ~dg.AutomationCondition.in_progress()
    )
    if asset.plan.kind == "time":
        return (tick & dg.AutomationCondition.in_latest_time_window()).with_label(f"sync {frequency.description}")
    if asset.plan.kind == "dynamic" or asset.table.method == "log_based":
        return (tick & LatestPartition()).with_label(f"sync {frequency.description}")
    return tick.with_label(f"sync {frequency.description}")


def automation_sensor(assets: list[TableAsset]) -> dg.AutomationConditionSensorDefinition:
    """Evaluates the replicas' conditions. It runs from the start (schedules start stopped): choosing
    `automation: declarative` is the opt-in."""
    return dg.AutomationConditionSensorDefinition(
        SENSOR,
        target=dg.AssetSelection.assets(*[a.key for a in assets]),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        description="Requests each replica's partitions when its frequency's cron tick passes (catch-up from the "
        "bookmark: see automation.py).",
    )
