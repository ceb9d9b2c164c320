"""What one replication tick covers, per table: shared by schedules, sensors, jobs and `rds-pipeline sync`.

- incremental tables: the current and the previous window (or the latest two key ranges);
- full-table tables: every chunk;
- a table never materialized: its whole history, as one range (a historical sync).
"""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from rds_pipeline.dagster_defs.assets import TableAsset
from rds_pipeline.dagster_defs.partitions import key_range_for
from rds_pipeline.engine.replication.extract import KeyRange


@dataclass(frozen=True)
class PartitionSpan:
    first: str
    last: str


def partition_keys(asset: TableAsset, instance: dg.DagsterInstance | None) -> list[str]:
    return list(asset.plan.partitions_def.get_partition_keys(dynamic_partitions_store=instance))


def tick_spans(
    asset: TableAsset, instance: dg.DagsterInstance | None, history: bool | None = None
) -> list[PartitionSpan]:
    """The partition spans one tick materializes for ``asset`` (empty when it has no partitions yet)."""
    keys = partition_keys(asset, instance)
    if not keys:
        return []
    if history is None:
        history = instance is None or instance.get_latest_materialization_event(asset.key) is None
    if history and len(keys) > 1:
        return [PartitionSpan(keys[0], keys[-1])]
    if asset.plan.kind in ("time", "dynamic"):
        return [PartitionSpan(k, k) for k in keys[-2:]]
    return [PartitionSpan(k, k) for k in keys]


def span_key_range(asset: TableAsset, span: PartitionSpan, keys: list[str]) -> KeyRange:
    window = None
    if asset.plan.kind == "time":
        pdef = asset.plan.partitions_def
        assert isinstance(pdef, dg.TimeWindowPartitionsDefinition)
        window = dg.TimeWindow(pdef.time_window_for_partition_key(span.first).start,
                               pdef.time_window_for_partition_key(span.last).end)  # fmt: skip
    return key_range_for(asset.plan, span.first, span.last, keys, window)


def span_keys(keys: list[str], span: PartitionSpan) -> list[str]:
    return keys[keys.index(span.first) : keys.index(span.last) + 1]
