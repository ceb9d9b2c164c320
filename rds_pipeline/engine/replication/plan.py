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
- xmin: no bookmark (or the destination table is missing): everything, and the bookmark becomes the source's
  snapshot xmin read before the copy; with one: the row versions written since it (``age(xmin)``), merged by
  key, and the bookmark moves to this sync's snapshot xmin with the last step. A bookmark more than ~2^31
  transactions old cannot be compared in 32 bits: everything again. Large tables go in chunks of pages.
- A full-table table without key chunks, bigger than one chunk, on PostgreSQL 14+: chunks of pages (CTID
  ranges) copied into a new generation that readers do not see, then swapped in whole. A generation under way
  resumes at its next chunk; a table with a primary key is then swept for rows changed since it began.

Whether a copied range may move the bookmark is decided by the loader inside the destination transaction
(``bookmark_rule``): only a range contiguous with what is already copied moves it, and never backwards.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from rds_pipeline.engine.core.ranges import (
    KeyRange,
    PageSource,
    XidHorizon,
    coalesce_chunks,
    page_range,
    page_spans,
    xmin_wrapped,
)
from rds_pipeline.engine.core.state import Generation, GenerationStep, TableState
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
    generation: GenerationStep | None = None  # a chunk of pages of a full-table generation
    changed_since: str | None = None  # only row versions written by this transaction (64-bit) or later
    sets_bookmark: str | None = None  # the bookmark this step commits (xmin: the source's snapshot xmin)


@dataclass(frozen=True)
class Plan:
    steps: list[Step]
    historical: bool
    reason: str
    notes: list[str] = field(default_factory=list)

    @property
    def generation(self) -> bool:
        """The steps build a new generation of the table (chunks of pages, swapped in by the last)."""
        return any(step.generation is not None for step in self.steps)


def plan_sync(
    table: SelectedTable,
    state: TableState,
    request: Request,
    chunks: list[KeyRange] | None = None,
    pages: PageSource | None = None,
    horizon: XidHorizon | None = None,
) -> Plan:
    """The ranges to copy for ``table``. ``chunks`` is the table's partitioning as key ranges, in key order
    (first open below, last open above), used to chunk a history or a full-table sync. ``pages``: the source's
    pages of a full-table or xmin table (None where chunks of pages do not apply); ``horizon``: the source's
    transaction ids, for an xmin table (required there)."""
    if table.method == "key_based":
        return _plan_key_based(table, state, request, chunks or [])
    if table.method == "xmin":
        if horizon is None:
            raise ValueError(f"{table.id}: an xmin sync is planned from the source's transaction ids")
        return _plan_xmin(state, request, pages, horizon)
    if (
        pages is not None
        and wants_pages(table, request, chunks or [])
        and (state.generation is not None or pages.pages > pages.per_chunk)
    ):
        return _plan_generation(table, state, pages)
    return _plan_full_table(state, request, chunks or [])


def wants_pages(table: SelectedTable, request: Request, chunks: list[KeyRange]) -> bool:
    """Whether a sync of ``table`` may copy it in chunks of pages: a full-table sync of the whole table, which
    has no key chunks of its own."""
    whole = request.kind != RequestKind.RANGE or request.key_range.predicate() is None
    return table.method in ("full_table", "xmin") and whole and len(chunks) <= 1


def _plan_xmin(state: TableState, request: Request, pages: PageSource | None, horizon: XidHorizon) -> Plan:
    """Row versions written since the bookmark (or everything), in chunks of pages when the table is big; the
    last step moves the bookmark to this sync's snapshot xmin."""
    since = state.bookmark if state.usable else None
    notes = []
    if since is not None and xmin_wrapped(since, horizon):
        notes.append(
            f"the bookmark (transaction {since}) is more than 2^31 transactions old, past what a 32-bit xmin "
            "can be compared with: every row is read again (upserted), and the bookmark starts over"
        )
        since = None
    if request.kind == RequestKind.EVERYTHING:
        since = None
    spans = page_spans(0, pages.pages, pages.per_chunk) if pages is not None else [(0, None)]
    steps = [
        Step(
            page_range(lower, upper) if len(spans) > 1 else KeyRange(),
            changed_since=since,
            sets_bookmark=horizon.snapshot_xmin if upper is None else None,
        )
        for lower, upper in spans
    ]
    if since is None:
        reason = "xmin: no bookmark yet: every row" if not notes else "xmin: every row again"
        if not state.table_exists:
            reason = "xmin: the destination table is missing: every row"
    else:
        reason = f"xmin: the row versions written since transaction {since}"
    if len(steps) > 1:
        reason += f", in {len(steps)} chunks of pages"
    return Plan(steps, not state.table_exists, reason, notes)


def _plan_generation(table: SelectedTable, state: TableState, pages: PageSource) -> Plan:
    """Chunks of pages into the next generation (from where one under way stopped), then, with a primary key,
    the sweep of rows changed since it began; the last step swaps it in."""
    current = state.generation
    resumed = current is not None
    gen = current or Generation(pages.since, pages.pages, 0, False, 0, 0)
    keyed = bool(table.primary_key)
    steps: list[Step] = []
    if not gen.copy_done:
        for lower, upper in page_spans(gen.copied, max(gen.pages, pages.pages), pages.per_chunk):
            done = upper is None
            step = GenerationStep(
                gen.since,
                gen.pages,
                not resumed and not steps,
                lower,
                False,
                upper or lower,
                0,
                done,
                done and not keyed,
            )
            steps.append(Step(page_range(lower, upper), generation=step))
    if keyed:
        for lower, upper in page_spans(gen.swept, pages.pages, pages.per_chunk):
            step = GenerationStep(
                gen.since, gen.pages, False, lower, True, gen.pages, upper or lower, True, upper is None
            )
            steps.append(Step(page_range(lower, upper), generation=step, changed_since=gen.since))
    copies = sum(1 for s in steps if s.generation and not s.generation.sweep)
    sweeps = len(steps) - copies
    where = f"resumed at page {gen.copied if not gen.copy_done else gen.swept}" if resumed else "a new generation"
    reason = (
        f"full table in chunks of {pages.per_chunk} page(s) ({where}): {copies} chunk(s) to copy"
        + (f", then {sweeps} to sweep for rows changed since it began" if sweeps else "")
        + "; readers see the previous copy until the last swaps it in"
    )
    notes = []
    if not keyed:
        notes.append(
            "no primary key: a row updated while the chunks are copied can be read twice or missed (it may move "
            "to a page already copied) until the next sync; a key lets the sweep fix it"
        )
    return Plan(steps, not state.table_exists, reason, notes)


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
