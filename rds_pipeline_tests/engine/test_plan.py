"""The planner's rules, one test each (pure: the planner reads no server; the timelines run in test_timeline)."""

from __future__ import annotations

import datetime as dt

from rds_pipeline.engine.core.ranges import (
    MAX_HISTORY_CHUNKS,
    KeyRange,
    coalesce_chunks,
    coalesced_spans,
    covered_span,
    parse_key_time,
)
from rds_pipeline.engine.core.state import TableState
from rds_pipeline.engine.replication.plan import Request, plan_sync
from rds_pipeline.engine.selection import SelectedTable
from rds_pipeline.engine.source.catalog import Column, Relation

TS = Column("ts", "timestamp with time zone", False, category="D")
ID = Column("id", "integer", False, category="N")
RELATION = Relation("db", "public", "events", "table", (ID, TS), primary_key=("id",))
KEY_BASED = SelectedTable(RELATION, "key_based", "ts", (ID, TS), ("id",), "events", lookback="10 minutes")
FULL = SelectedTable(RELATION, "full_table", None, (ID, TS), ("id",), "events")
DAYS = [
    KeyRange("ts", upper="2026-11-02", include_nulls=True),
    KeyRange("ts", "2026-11-02", "2026-11-03"),
    KeyRange("ts", lower="2026-11-03"),
]
SYNCED = TableState(True, "2026-11-02 10:00:00+00")


def test_no_bookmark_is_a_history_chunked_by_partition() -> None:
    plan = plan_sync(KEY_BASED, TableState(True, None), Request.catch_up(), DAYS)
    assert plan.historical and [s.key_range for s in plan.steps] == DAYS
    assert all(s.reach_back_to is None for s in plan.steps)
    unpartitioned = plan_sync(KEY_BASED, TableState(True, None), Request.catch_up())
    assert [s.key_range for s in unpartitioned.steps] == [KeyRange("ts", include_nulls=True)]


def test_a_missing_destination_table_voids_the_bookmark() -> None:
    dropped = TableState(False, "2026-11-02 10:00:00+00")  # dropped by hand: the bookmark describes nothing
    plan = plan_sync(KEY_BASED, dropped, Request.catch_up(), DAYS)
    assert plan.historical and "missing" in plan.reason and len(plan.steps) == 3
    assert not dropped.usable


def test_catch_up_reads_from_the_bookmark_to_the_end_however_long_the_outage() -> None:
    plan = plan_sync(KEY_BASED, SYNCED, Request.catch_up(), DAYS)
    [step] = plan.steps
    assert not plan.historical
    assert step.key_range == KeyRange("ts", include_nulls=True)  # no upper bound: to the end
    assert (step.reach_back_to, step.lookback) == ("2026-11-02 10:00:00+00", "10 minutes")


def test_the_latest_window_reaches_back_to_the_bookmark() -> None:
    [step] = plan_sync(KEY_BASED, SYNCED, Request.range(DAYS[-1]), DAYS).steps
    assert step.key_range == DAYS[-1] and step.reach_back_to == SYNCED.bookmark


def test_an_older_window_is_copied_as_asked() -> None:
    [step] = plan_sync(KEY_BASED, SYNCED, Request.range(DAYS[0]), DAYS).steps
    assert step.key_range == DAYS[0] and step.reach_back_to is None
    # without a usable bookmark an older window is only itself: the bookmark waits for the history
    plan = plan_sync(KEY_BASED, TableState(True, None), Request.range(DAYS[0]), DAYS)
    assert [s.key_range for s in plan.steps] == [DAYS[0]] and plan.notes


def test_the_latest_window_without_a_bookmark_brings_the_history() -> None:
    """What declarative automation asks for is only the latest window: it must never leave the history out."""
    for state in (TableState(True, None), TableState(False, "2026-11-02 10:00:00+00")):
        plan = plan_sync(KEY_BASED, state, Request.range(DAYS[-1]), DAYS)
        assert plan.historical and [s.key_range for s in plan.steps] == DAYS


def test_everything_ignores_the_bookmark() -> None:
    plan = plan_sync(KEY_BASED, SYNCED, Request.everything(), DAYS)
    assert plan.historical and [s.key_range for s in plan.steps] == DAYS


def test_full_table_copies_every_chunk_or_the_one_asked() -> None:
    chunks = [KeyRange("id", upper=1001), KeyRange("id", 1001, 2001), KeyRange("id", lower=2001)]
    assert [s.key_range for s in plan_sync(FULL, TableState(True), Request.catch_up(), chunks).steps] == chunks
    assert [s.key_range for s in plan_sync(FULL, TableState(True), Request.catch_up()).steps] == [KeyRange()]
    [step] = plan_sync(FULL, TableState(True), Request.range(chunks[1]), chunks).steps
    assert step.key_range == chunks[1]
    assert plan_sync(FULL, TableState(False), Request.catch_up(), chunks).historical


def test_a_long_history_is_at_most_max_chunks_on_partition_edges() -> None:
    edges = [str(1000 + i) for i in range(200)]
    ranges = [
        KeyRange("id", lower=None if i == 0 else edges[i], upper=None if i == 199 else edges[i + 1]) for i in range(200)
    ]
    merged = coalesce_chunks(ranges)
    assert MAX_HISTORY_CHUNKS == 64 and len(merged) == 50  # 4 partitions per chunk: ceil(200 / 64)
    # exactly: every 4th partition edge, the first open below (with NULLs as the first partition was), the last
    # open above, no gap and no overlap
    expected = [
        KeyRange("id", lower=None if k == 0 else edges[4 * k], upper=None if k == 49 else edges[4 * k + 4])
        for k in range(50)
    ]
    assert merged == expected
    assert coalesce_chunks(ranges[:64]) == ranges[:64]  # at the limit: untouched
    assert coalesced_spans(5, 2) == [(0, 2), (3, 4)] and coalesced_spans(0) == []


def test_covered_span_of_integer_and_time_windows() -> None:
    lows = [None, 1001, 2001, 3001]  # the first window is open below
    assert covered_span(lows, KeyRange("id")) == (0, 4)
    assert covered_span(lows, KeyRange("id", lower=1500)) == (1, 4)
    assert covered_span(lows, KeyRange("id", lower=500, upper=2001)) == (0, 2)
    assert covered_span(lows, KeyRange("id", lower=2001, upper=2500)) == (2, 3)
    assert covered_span(lows, KeyRange("id", lower=5000)) == (3, 4)  # past the last start: the open last window
    starts = [dt.datetime(2024, m, 1, tzinfo=dt.UTC) for m in (1, 2, 3)]
    assert covered_span(starts, KeyRange("t", lower="2024-02-15 10:00:00+00")) == (1, 3)
    assert covered_span(starts, KeyRange("t", lower="2023-01-01", upper="2024-02-01")) == (0, 1)
    assert covered_span(starts, KeyRange("t", lower="2024-01-31 23:30:00-01")) == (1, 3)  # 00:30 UTC in February
    assert covered_span(starts, KeyRange("t", lower="infinity")) == (0, 3)  # outside Python's range: unbounded
    assert parse_key_time("2024-02-01 00:00:00.5+05:30") == dt.datetime(2024, 1, 31, 18, 30, 0, 500000, tzinfo=dt.UTC)
    assert KeyRange("id", 1000, 2000).contains(KeyRange("id", 1200, 2000))
    assert not KeyRange("id", 1000, 2000).contains(KeyRange("id", 1200, None))
