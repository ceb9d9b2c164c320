"""The planner: what to copy next, from the destination's state and a request. Pure: no I/O, no dagster.

Whoever triggers a sync (a UI partition, a backfill, a schedule tick, a sensor, ``rds-pipeline sync``) turns
it into a ``Request``; the planner turns request + ``TableState`` (read from the destination, the only truth)
into the key ranges to copy. The rules:

- No bookmark, or the destination table is missing (dropped by hand, or reset): a historical sync of
  everything, chunked along the table's partitions when it has them (each chunk commits and moves the
  bookmark, so an interrupted history resumes where it stopped).
- Catch-up (tick, sensor, CLI): key-based tables copy from ``bookmark - lookback`` to the end, however long
  the outage was; full-table tables copy everything (chunk by chunk).
- One window, key range or chunk: that range. The latest (open-ended) window reaches back to the bookmark,
  so a run of "today" after an outage still closes the gap; with no bookmark it brings the history.
- Everything: the whole table.

Whether a copied range may move the bookmark is decided by the loader inside the destination transaction
(``bookmark_rule``): only a range contiguous with what is already copied moves it, and never backwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from rds_pipeline.engine.core.ranges import KeyRange, coalesce_chunks
from rds_pipeline.engine.core.state import TableState
from rds_pipeline.engine.selection import SelectedTable


class RequestKind(StrEnum):
    CATCH_UP = "catch_up"  # what a tick, a sensor and `rds-pipeline sync` ask for
    RANGE = "range"  # one window, key range or chunk (a UI partition, a backfill's range)
    EVERYTHING = "everything"  # the whole table, ignoring the bookmark (reset, or asked for)


@dataclass(frozen=True)
class Request:
    kind: RequestKind
    key_range: KeyRange = KeyRange()
    latest: bool = False  # the range is open-ended at the top (the window still filling)

    @classmethod
    def catch_up(cls) -> Request:
        return cls(RequestKind.CATCH_UP)

    @classmethod
    def everything(cls) -> Request:
        return cls(RequestKind.EVERYTHING)

    @classmethod
    def range(cls, key_range: KeyRange) -> Request:
        return cls(RequestKind.RANGE, key_range, latest=key_range.upper is None)


@dataclass(frozen=True)
class Step:
    """One range to copy. ``reach_back_to`` (a bookmark) lowers the range's start to ``bookmark - lookback``
    (the sync resolves that on the source, where the key's type does the arithmetic)."""

    key_range: KeyRange
    reach_back_to: str | None = None
    lookback: str | int | None = None


@dataclass(frozen=True)
class Plan:
    steps: list[Step]
    historical: bool
    reason: str
    notes: list[str] = field(default_factory=list)


def plan_sync(table: SelectedTable, state: TableState, request: Request, chunks: list[KeyRange] | None = None) -> Plan:
    """The ranges to copy for ``table``. ``chunks`` is the table's partitioning as key ranges, in key order
    (first open below, last open above), used to chunk a history or a full-table sync."""
    if table.method == "key_based":
        return _plan_key_based(table, state, request, chunks or [])
    return _plan_full_table(state, request, chunks or [])


def _history(chunks: list[KeyRange], column: str | None, reason: str) -> Plan:
    if len(chunks) <= 1:
        return Plan([Step(KeyRange(column, include_nulls=column is not None))], True, reason)
    return Plan([Step(r) for r in coalesce_chunks(chunks)], True, reason)


def _plan_key_based(table: SelectedTable, state: TableState, request: Request, chunks: list[KeyRange]) -> Plan:
    key = table.replication_key
    if request.kind == RequestKind.EVERYTHING:
        return _history(chunks, key, "everything was asked for")
    if request.kind == RequestKind.CATCH_UP or request.latest:
        # the latest (open-ended) window is a catch-up too: it reaches back to the bookmark, or without one
        # brings the history, so automation that asks only for it never leaves a gap (automation.py)
        what = "catch-up" if request.kind == RequestKind.CATCH_UP else "the latest window"
        if not state.table_exists:
            return _history(chunks, key, f"{what}: the destination table is missing: historical sync")
        if state.bookmark is None:
            return _history(chunks, key, f"{what}: no bookmark yet: historical sync")
    if request.kind == RequestKind.CATCH_UP:
        step = Step(KeyRange(key, include_nulls=True), reach_back_to=state.bookmark, lookback=table.lookback)
        return Plan([step], False, f"catch-up from the bookmark {state.bookmark} (minus the lookback) to the end")
    wanted = request.key_range
    if request.latest:
        return Plan(
            [Step(wanted, reach_back_to=state.bookmark, lookback=table.lookback)],
            False,
            "the latest window, reaching back to the bookmark",
        )
    notes = []
    if not state.usable:
        notes.append(
            "no usable bookmark: this range is copied, and the bookmark moves only once every earlier "
            "key has been copied (the next catch-up runs the historical sync)"
        )
    return Plan([Step(wanted)], False, f"the requested range {wanted.describe()}", notes)


def _plan_full_table(state: TableState, request: Request, chunks: list[KeyRange]) -> Plan:
    if request.kind == RequestKind.RANGE:
        return Plan([Step(request.key_range)], False, f"the requested chunk {request.key_range.describe()}")
    reason = "everything was asked for" if request.kind == RequestKind.EVERYTHING else "full table: every chunk"
    if not state.table_exists:
        reason = "the destination table is missing: historical sync"
    plan = (
        _history(chunks, None, reason) if len(chunks) > 1 else Plan([Step(KeyRange())], not state.table_exists, reason)
    )
    return Plan(plan.steps, not state.table_exists, reason)
