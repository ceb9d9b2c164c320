"""Partitions: every selected table is partitioned; a partition (or a range of them) is the unit of a sync.

- key-based on a date/timestamp key: time windows of the key (hourly, daily, weekly, monthly), from the
  discovered minimum, with the window still filling materializable (end_offset=1). The first window also
  takes earlier keys and NULL keys; the last takes later keys.
- key-based on an integer key: dynamic key ranges ``lo..hi`` added by a sensor as max(key) grows; the latest
  range is open-ended.
- full table: primary-key-range chunks ``lo..hi`` from the discovered min/max and row estimate (first and last
  open-ended), each replaced atomically; ``all`` when there is no single integer key (views).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import dagster as dg

from rds_pipeline.dagster_defs.translator import dynamic_partitions_name
from rds_pipeline.engine.core.ranges import MAX_HISTORY_CHUNKS, KeyRange, coalesced_spans, covered_span
from rds_pipeline.engine.selection import INTEGER_TYPES, SelectedTable, chunkable_key

WHOLE = "all"
MAX_AUTO_WINDOWS = 1000  # a table's time windows when the user did not choose a granularity


@dataclass(frozen=True)
class PartitionPlan:
    kind: str  # time, dynamic, chunks, whole
    column: str | None
    partitions_def: dg.PartitionsDefinition
    column_type: str | None = None  # the key's type (for literals)


def _key_column(table: SelectedTable, name: str):  # noqa: ANN202
    return next(c for c in table.columns if c.name == name)


def _start(low: str | None, granularity: str, today: dt.date) -> dt.datetime:
    day = today
    if low and low[:4].isdigit() and not low.endswith("BC"):
        try:
            day = dt.date.fromisoformat(low[:10])
        except ValueError:
            day = today
    start = dt.datetime(day.year, day.month, day.day)
    if granularity == "monthly":
        start = start.replace(day=1)
    elif granularity == "weekly":
        start -= dt.timedelta(days=(start.weekday() + 1) % 7)  # weeks start on Sunday in Dagster
    return start


def auto_granularity(low: str | None, today: dt.date) -> str:
    """The finest of daily, weekly and monthly that covers the key's span (from its discovered minimum to today)
    in at most ``MAX_AUTO_WINDOWS`` windows: a key starting in 1947 gets monthly windows, not 29,000 days."""
    start = _start(low, "daily", today).date()
    days = (today - start).days + 1
    if days <= MAX_AUTO_WINDOWS:
        return "daily"
    return "weekly" if days / 7 <= MAX_AUTO_WINDOWS else "monthly"


def plan_for(table: SelectedTable, today: dt.date | None = None) -> PartitionPlan:
    today = today or dt.datetime.now(dt.UTC).date()
    relation = table.relation
    if table.method == "key_based" and table.replication_key:
        column = _key_column(table, table.replication_key)
        base = column.base_type if column.kind == "domain" and column.base_type else column.type
        if column.category == "D" and not base.startswith("time "):
            low, _ = relation.stats_for(column.name)
            granularity = table.granularity or auto_granularity(low, today)
            start = _start(low, granularity, today)
            cls = {
                "hourly": dg.HourlyPartitionsDefinition,
                "daily": dg.DailyPartitionsDefinition,
                "weekly": dg.WeeklyPartitionsDefinition,
                "monthly": dg.MonthlyPartitionsDefinition,
            }[granularity]
            start_text = start.strftime("%Y-%m-%d-%H:%M" if granularity == "hourly" else "%Y-%m-%d")
            return PartitionPlan("time", column.name, cls(start_date=start_text, end_offset=1), base)
        if base in INTEGER_TYPES:
            return PartitionPlan(
                "dynamic", column.name, dg.DynamicPartitionsDefinition(name=dynamic_partitions_name(table)), base
            )
        return PartitionPlan("whole", None, dg.StaticPartitionsDefinition([WHOLE]))
    key = chunkable_key(relation)
    if key is not None and key in table.column_names:
        low, high = relation.stats_for(key)
        rows = relation.row_estimate or 0
        if low is not None and high is not None and rows > table.chunk_rows:
            return PartitionPlan(
                "chunks", key, dg.StaticPartitionsDefinition(chunk_keys(int(low), int(high), rows, table.chunk_rows))
            )
    return PartitionPlan("whole", None, dg.StaticPartitionsDefinition([WHOLE]))


def chunk_keys(low: int, high: int, rows: int, chunk_rows: int) -> list[str]:
    """Equal-width key ranges; the first is open below and the last open above, so no row is left out."""
    count = max(1, math.ceil(rows / chunk_rows))
    width = max(1, math.ceil((high - low + 1) / count))
    bounds = [low + i * width for i in range(1, count)]
    edges = [None, *bounds, None]
    return [f"{'' if a is None else a}..{'' if b is None else b}" for a, b in zip(edges, edges[1:], strict=False)]


def range_bounds(key: str) -> tuple[int | None, int | None]:
    low, _, high = key.partition("..")
    return (int(low) if low else None, int(high) if high else None)


def integer_range_keys(existing: list[str], max_key: int, size: int) -> list[str]:
    """New dynamic partitions covering keys up to ``max_key`` in ranges of ``size`` (first starts at 0)."""
    last_high = max((range_bounds(k)[1] or 0 for k in existing), default=0)
    keys = []
    while last_high <= max_key:
        keys.append(f"{last_high}..{last_high + size}")
        last_high += size
    return keys


def _literal(value: dt.datetime, column_type: str | None) -> str:
    if column_type == "date":
        return value.date().isoformat()
    if column_type and "with time zone" in column_type:
        return value.astimezone(dt.UTC).isoformat(sep=" ")
    return value.replace(tzinfo=None).isoformat(sep=" ")


def key_range_for(
    plan: PartitionPlan, first_key: str, last_key: str, all_keys: list[str], window: dg.TimeWindow | None = None
) -> KeyRange:
    """The engine's key range for the partitions ``first_key``..``last_key`` (one partition or a range)."""
    if plan.kind == "whole" or not all_keys:
        return KeyRange()
    is_first = first_key == all_keys[0]
    is_last = last_key == all_keys[-1]
    lower: str | int | None
    upper: str | int | None
    if plan.kind == "time":
        assert window is not None
        lower = None if is_first else _literal(window.start, plan.column_type)
        upper = None if is_last else _literal(window.end, plan.column_type)
    else:
        lower, upper = (
            None if is_first else range_bounds(first_key)[0],
            None if is_last else range_bounds(last_key)[1],
        )
    return KeyRange(plan.column, lower=lower, upper=upper, include_nulls=is_first)


def _window(plan: PartitionPlan, first_key: str, last_key: str) -> dg.TimeWindow | None:
    if plan.kind != "time":
        return None
    pdef = plan.partitions_def
    assert isinstance(pdef, dg.TimeWindowPartitionsDefinition)
    return dg.TimeWindow(
        pdef.time_window_for_partition_key(first_key).start, pdef.time_window_for_partition_key(last_key).end
    )


def range_for_keys(plan: PartitionPlan, first_key: str, last_key: str, keys: list[str]) -> KeyRange:
    """The key range of the partitions ``first_key``..``last_key`` (of ``keys``, in order)."""
    return key_range_for(plan, first_key, last_key, keys, _window(plan, first_key, last_key))


def chunk_ranges(plan: PartitionPlan, keys: list[str], limit: int = MAX_HISTORY_CHUNKS) -> list[KeyRange]:
    """The table's partitioning as key ranges in key order, for the planner to chunk a history or a
    full-table sync along. Neighbouring partitions are merged (the engine's spans) so there are at most ``limit``."""
    if plan.kind == "whole" or len(keys) <= 1:
        return []
    return [range_for_keys(plan, keys[a], keys[b], keys) for a, b in coalesced_spans(len(keys), limit)]


def window_starts(plan: PartitionPlan, keys: list[str]) -> list[dt.datetime]:
    """Each time window's start, in key order (computed once per sync: a table may have 29,000 windows)."""
    pdef = plan.partitions_def
    assert isinstance(pdef, dg.TimeWindowPartitionsDefinition)
    return [pdef.time_window_for_partition_key(k).start for k in keys]


def covered_keys(
    plan: PartitionPlan, keys: list[str], key_range: KeyRange, starts: list[dt.datetime] | None = None
) -> list[str]:
    """The partitions a copied range reached (the engine's ``covered_span`` over the partitions' starts)."""
    if plan.kind == "whole":
        return list(keys)
    if plan.kind == "time":
        first, end = covered_span(starts if starts is not None else window_starts(plan, keys), key_range)
    else:
        first, end = covered_span([range_bounds(k)[0] for k in keys], key_range)
    return keys[first:end]
