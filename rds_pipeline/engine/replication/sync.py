"""Sync one table: plan from the destination's state, then copy each range; retry transient failures.

The planner (``plan.py``) decides the ranges; this module runs them: for each step, resolve its start on the
source (``bookmark - lookback``), stream ``COPY`` from source to destination, and let the destination commit
the rows with the bookmark. Every trigger (UI, backfill, tick, sensor, CLI) comes through ``sync_table``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

from rds_pipeline.engine import interrupts
from rds_pipeline.engine.core.copy_out import CopyOut, ExtractionLog, source_in_recovery
from rds_pipeline.engine.core.ranges import KeyRange
from rds_pipeline.engine.core.rows import one
from rds_pipeline.engine.core.types import postgres_type
from rds_pipeline.engine.destinations.base import Destination, LoadingReport
from rds_pipeline.engine.errors import ConnectionProblem, LoadError
from rds_pipeline.engine.progress import table_done
from rds_pipeline.engine.replication.compare import detect_deletes
from rds_pipeline.engine.replication.extract import binary_copy, select_query
from rds_pipeline.engine.replication.plan import Plan, Request, RequestKind, Step, plan_sync, wants_pages
from rds_pipeline.engine.selection import SelectedTable
from rds_pipeline.engine.source.pages import read_pages
from rds_pipeline.engine.source.session import SourceSession
from rds_pipeline.engine.source.xids import read_horizon

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_TIMESTAMP_LOOKBACK = "5 minutes"
# SQLSTATEs worth retrying: serialization failure (includes "conflict with recovery" on a hot standby),
# deadlock, lock timeout (lock_timeout on the destination), admin shutdown, crash shutdown, cannot connect now.
TRANSIENT_SQLSTATES = {
    "40001",
    "40P01",
    "55P03",
    "57P01",
    "57P02",
    "57P03",
    "08000",
    "08003",
    "08006",
    # two first loads that both create the table (its creator rolled back while they
    # waited): the loser's retry sees the table and upserts through the stage
    "23505",
    "42P07",
}
PERMANENT_SQLSTATES = {
    "42501": "permission denied",
    "42703": "a column is missing",
    "42P01": "the table is missing",
    "55000": "the materialized view has not been populated",
}


@dataclass
class StepResult:
    """One copied range: what was read, what was loaded, and how many attempts it took."""

    key_range: KeyRange
    extraction: ExtractionLog
    report: LoadingReport
    attempts: int
    sweep: bool = False  # a generation's chunk of rows changed since it began (``plan.py``)


@dataclass
class SyncResult:
    """One table's sync: the plan and each step. Counts are summed over the steps."""

    table: SelectedTable
    plan: Plan
    steps: list[StepResult]
    gone: int = 0  # rows gone at the source, deleted (or marked) after the copy (``deletes: detect``)

    @property
    def report(self) -> LoadingReport:
        first = self.steps[0].report
        total = LoadingReport(first.table, first.destination_table, first.mode, batch_id=first.batch_id)
        for step in self.steps:
            total.rows_inserted += step.report.rows_inserted
            total.rows_updated += step.report.rows_updated
            total.rows_deleted += step.report.rows_deleted
            total.seconds += step.report.seconds
            total.warnings += step.report.warnings
            total.committed_at = step.report.committed_at
        total.rows_deleted += self.gone
        return total

    @property
    def extraction(self) -> ExtractionLog:
        """The last step's extraction log (``rows`` and ``bytes`` on this result sum every step)."""
        return self.steps[-1].extraction

    @property
    def rows(self) -> int:
        return sum(s.extraction.rows for s in self.steps)

    @property
    def bytes(self) -> int:
        return sum(s.extraction.bytes for s in self.steps)

    @property
    def null_key_rows(self) -> int:
        return max((s.extraction.null_key_rows for s in self.steps), default=0)

    @property
    def bookmark(self) -> str | None:
        return self.steps[-1].extraction.bookmark_after

    @property
    def rows_copied(self) -> int:
        """The rows the source gave for what this sync made whole: a generation's chunks count across runs (a
        resumed one began in an earlier run), less the rows read twice; else the rows read."""
        last = self.steps[-1].report.source_rows
        return self.rows if last is None else last

    @property
    def rows_at_commit(self) -> int | None:
        """The replica's rows over ``key_range`` as the steps committed them, when every step knows it."""
        if self.plan.generation:  # the swap's count of the whole new generation
            return self.steps[-1].report.rows_at_commit
        counts = [s.report.rows_at_commit for s in self.steps]
        return None if any(c is None for c in counts) else sum(counts)  # type: ignore[arg-type]

    @property
    def attempts(self) -> int:
        return max(s.attempts for s in self.steps)

    @property
    def key_range(self) -> KeyRange:
        """The span of every step: from the lowest start to the highest end."""
        ranges = [s.key_range for s in self.steps]
        if self.plan.generation:  # chunks of pages: the whole table
            return KeyRange()
        if len(ranges) == 1:
            return ranges[0]
        first, last = ranges[0], ranges[-1]
        return KeyRange(first.column, lower=first.lower, upper=last.upper, include_nulls=first.include_nulls)


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionProblem):
        return exc.kind in ("refused", "timeout", "ssh_connect", "ssh_timeout", "ssh_target_unreachable", "connect")
    if isinstance(exc, psycopg2.Error):
        code = getattr(exc, "pgcode", None)
        if code in TRANSIENT_SQLSTATES:
            return True
        if code is None:
            return True  # every server-side error carries a SQLSTATE; none means the connection broke

    return isinstance(exc, (ConnectionError, TimeoutError, EOFError))


def _permanent_message(table: SelectedTable, exc: psycopg2.Error) -> str | None:
    reason = PERMANENT_SQLSTATES.get(getattr(exc, "pgcode", None) or "")
    detail = (exc.pgerror or str(exc)).strip().splitlines()[0] if reason else ""
    if reason is None or (reason.startswith("the materialized view") and "has not been populated" not in detail):
        return None
    fix = {
        "permission denied": f"run `rds-pipeline check` and apply its GRANT for {table.relation.qualified_name}",
        "a column is missing": "run `rds-pipeline discover --check` and update the selection",
        "the table is missing": "run `rds-pipeline discover` and update the selection",
        "the materialized view has not been populated": "run REFRESH MATERIALIZED VIEW on it at the source, "
        "or deselect it",
    }[reason]
    return f"{table.id}: {reason} ({detail}). Fix: {fix}"


def sync_table(
    session: SourceSession,
    destination: Destination,
    table: SelectedTable,
    request: Request | KeyRange | None = None,
    *,
    chunks: list[KeyRange] | None = None,
    lookback: str | int | None = None,
    max_attempts: int = 4,
    backoff_seconds: float = 1.0,
) -> SyncResult:
    """Replicate ``table`` as ``request`` asks (default: catch up; a KeyRange: that range). The plan comes
    from the destination's state; each step commits on its own, with its bookmark."""
    if isinstance(request, KeyRange):
        request = Request.range(request)
    request = request or Request.catch_up()
    if lookback is not None:
        table = dataclasses.replace(table, lookback=lookback)
    state = _with_retries(
        table, session, destination, max_attempts, backoff_seconds, lambda: destination.table_state(table)
    )
    pages = None
    if wants_pages(table, request, chunks or []):
        pages = _with_retries(
            table,
            session,
            destination,
            max_attempts,
            backoff_seconds,
            lambda: read_pages(session.connection(table.relation.database), table),
        )
    horizon = None
    if table.method == "xmin":  # after the pages: the bookmark it leaves is never later than the chunks' reads
        horizon = _with_retries(
            table,
            session,
            destination,
            max_attempts,
            backoff_seconds,
            lambda: read_horizon(session.connection(table.relation.database)),
        )
    plan = plan_sync(table, state, request, chunks, pages, horizon)
    log.info("%s: %s (%d step(s))", table.id, plan.reason, len(plan.steps))
    source_max: list[str | None] = []  # read once per sync, and only for bounded key-based ranges

    def max_key() -> str | None:
        if not source_max:
            source_max.append(_source_max_key(session.connection(table.relation.database), table))
        return source_max[0]

    def run_step(
        step: Step, on: SourceSession, into: Destination, turn: Callable[[], None] | None = None
    ) -> StepResult:
        return _with_retries(
            table,
            on,
            into,
            max_attempts,
            backoff_seconds,
            lambda attempt: _copy_step(on, into, table, step, attempt, max_key, turn),
            pass_attempt=True,
        )

    parallel = min(session.config.parallel_chunks, len(plan.steps) - 1)
    # an xmin sync's last step moves the bookmark past every chunk: its chunks run in order, and stop at a failure
    in_parallel = (plan.historical or plan.generation) and table.method != "xmin"
    if in_parallel and parallel > 1 and destination.parallel_loads:
        if table.method == "key_based":
            max_key()  # read once, before the workers share it
        steps = _in_parallel(plan.steps, parallel, session, destination, run_step)
    else:
        steps = [run_step(step, session, destination) for step in plan.steps]
    result = SyncResult(table, plan, steps)
    # after the copy (a key it just brought is not taken for gone); on a catch-up, not for each window of a
    # backfill, nor after a history (which copied every key there is)
    catching_up = request.kind == RequestKind.CATCH_UP or request.latest
    if table.deletes == "detect" and catching_up and not plan.historical:
        result.gone = _with_retries(
            table,
            session,
            destination,
            max_attempts,
            backoff_seconds,
            lambda: detect_deletes(session, destination, table, table.soft_deletes),
        )
    report = result.report
    table_done(table.id, report.rows_inserted, report.rows_updated, report.rows_deleted, report.seconds, plan.reason)
    return result


def _in_parallel(
    steps: list[Step],
    parallel: int,
    session: SourceSession,
    destination: Destination,
    run_step: Callable[..., StepResult],
) -> list[StepResult]:
    """A history's chunks, ``parallel`` at a time. The first runs alone (it creates the table, and builds its key
    once, after its rows); then each worker copies the next chunk on its own source and destination
    connections. The copies overlap; the commits keep key order (a chunk whose rows are in waits for the
    chunk before it), so each finds its bookmark contiguous and moves it. The first failure stops the workers
    taking new chunks; the chunks already committed stay, and the next sync copies the rest."""
    first = run_step(steps[0], session, destination)
    pending = list(enumerate(steps[1:], start=1))
    done: dict[int, StepResult] = {0: first}
    lock = threading.Lock()
    errors: list[BaseException] = []
    settled = [threading.Event() for _ in steps]  # set when a chunk committed or failed for good
    settled[0].set()

    def worker() -> None:
        try:
            with SourceSession(session.config) as own, destination.fresh() as into:
                while True:
                    with lock:
                        if errors or not pending:
                            return
                        index, step = pending.pop(0)
                    try:
                        result = run_step(step, own, into, settled[index - 1].wait)
                    finally:
                        settled[index].set()  # a failed chunk releases the next too (its bookmark then stays put)
                    with lock:
                        done[index] = result
        except BaseException as exc:  # noqa: BLE001 - re-raised below, after the other workers stop
            with lock:
                errors.append(exc)

    threads = [threading.Thread(target=worker, name=f"rds-chunk-{n}", daemon=True) for n in range(parallel)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return [done[i] for i in range(len(steps))]


def _with_retries(
    table: SelectedTable,
    session: SourceSession,
    destination: Destination,
    max_attempts: int,
    backoff_seconds: float,
    action: Callable[..., T],
    pass_attempt: bool = False,
) -> T:
    """Run ``action``; retry transient failures with exponential backoff; fail permanent ones at once."""
    attempt = 0
    while True:
        attempt += 1
        interrupts.checkpoint()  # a stop request starts no attempt (an error it caused is not retried)
        try:
            return action(attempt) if pass_attempt else action()
        except psycopg2.Error as exc:
            if interrupts.stop_requested():  # the stop cancelled it (or ended its backend): stop, do not retry
                raise interrupts.Stopped(f"{table.id}: stopped; nothing of the range in flight was committed") from exc
            message = _permanent_message(table, exc)
            if message:
                raise LoadError(message) from None
            if not is_transient(exc) or attempt >= max_attempts:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                hint = (
                    "check that the source and destination are reachable"
                    if getattr(exc, "pgcode", None) is None
                    else "resolve the error above"
                )
                raise LoadError(
                    f"{table.id}: sync failed after {attempt} attempt(s): {first}. Fix: {hint}, then "
                    "sync again (nothing was committed for the failed range)"
                ) from exc
            error: BaseException = exc
        except ConnectionProblem as exc:
            if interrupts.stop_requested():
                raise interrupts.Stopped(f"{table.id}: stopped") from exc
            if not is_transient(exc) or attempt >= max_attempts:
                raise
            error = exc
        delay = backoff_seconds * 2 ** (attempt - 1)
        log.warning(
            "%s: transient error (attempt %d/%d), retrying in %.1fs: %s",
            table.id,
            attempt,
            max_attempts,
            delay,
            str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__,
        )
        session.reset()
        try:
            destination.reconnect()
        except Exception as exc:  # noqa: BLE001 - the destination may still be down: the next attempt says so
            log.warning("%s: destination reconnect failed: %s", table.id, exc)
        time.sleep(delay)


def resolve_start(conn: psycopg2.extensions.connection, table: SelectedTable, step: Step) -> KeyRange:
    """Lower the step's start to ``bookmark - lookback`` (inclusive: rows sharing the boundary are re-read,
    never missed), computed on the source with the key's own type."""
    key_range = step.key_range
    if step.reach_back_to is None:
        return key_range
    column = next(c for c in table.columns if c.name == table.replication_key)
    lookback = step.lookback
    if lookback is None:
        lookback = DEFAULT_TIMESTAMP_LOOKBACK if column.category == "D" else 0
    kind = sql.SQL(postgres_type(column))
    if column.category == "D":
        start = sql.SQL("(%(b)s::{t} - %(l)s::interval)::{t}").format(t=kind)
        params: dict[str, object] = {"b": step.reach_back_to, "l": str(lookback or "0 seconds")}
    else:
        start = sql.SQL("(%(b)s::{t} - %(l)s::bigint)").format(t=kind)
        params = {"b": step.reach_back_to, "l": int(lookback or 0)}
    if key_range.lower is not None:
        start = sql.SQL("least({}, %(w)s::{})").format(start, kind)
        params["w"] = key_range.lower
    with conn.cursor() as cur:
        cur.execute(sql.SQL("SELECT {}::text").format(start), params)
        lower = one(cur.fetchone())[0]
    conn.commit()
    return dataclasses.replace(key_range, column=table.replication_key, lower=lower)


def _source_max_key(conn: psycopg2.extensions.connection, table: SelectedTable) -> str | None:
    """max(replication key), read before the COPYs: how far a bounded window may claim to be complete. An
    earlier snapshot can only make the claim smaller (safer); rows committed later are the lookback's job."""
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL("SELECT max({})::text FROM {}").format(
                sql.Identifier(table.replication_key or ""), sql.Identifier(table.relation.schema, table.relation.name)
            )
        )
        value: str | None = one(cur.fetchone())[0]
    conn.commit()
    return value


def _copy_step(
    session: SourceSession,
    destination: Destination,
    table: SelectedTable,
    step: Step,
    attempt: int,
    max_key: Callable[[], str | None],
    turn: Callable[[], None] | None = None,
) -> StepResult:
    conn = session.connection(table.relation.database)
    in_recovery = source_in_recovery(conn)
    key_range = resolve_start(conn, table, step)
    source_max = max_key() if table.method == "key_based" and key_range.upper is not None else None
    binary, copy_format = binary_copy(destination, table, session.config.copy_format, session.config.ssh is not None)
    generation = step.generation
    query = select_query(
        table,
        key_range,
        csv=destination.copy_csv,
        array_as_json=destination.array_as_json,
        binary=binary,
        changed_since=step.changed_since,
    )
    extraction = ExtractionLog(
        table=table.id,
        query=query.as_string(conn),
        parameters={
            "range": key_range.describe(),
            "lower": key_range.lower,
            "upper": key_range.upper,
            "format": copy_format,
        },
        started_at=dt.datetime.now(dt.UTC),
        source_in_recovery=in_recovery,
    )
    whole = key_range.lower is None and key_range.upper is None  # the catalog's size speaks of the whole table
    copy = CopyOut(
        conn,
        query,
        table.id,
        extraction,
        stall_seconds=session.config.stall_seconds,
        binary=binary,
        expected_bytes=table.relation.size_bytes if whole else None,
        expected_rows=table.relation.row_estimate if whole else None,
    )
    batch_id = uuid.uuid4().hex
    try:
        report, outcome = destination.load(
            table, key_range, copy, batch_id, source_max, turn, generation, step.sets_bookmark
        )
    except BaseException as exc:
        session.abandon(stuck=copy.stuck)  # bounded; ends the source backend if it is still there
        if isinstance(copy.error, psycopg2.Error) and isinstance(exc, Exception):
            raise copy.error from exc  # the source's error is the cause; the destination's is its echo
        raise
    session.end_transaction()
    extraction.ended_at = dt.datetime.now(dt.UTC)
    extraction.bookmark_before = outcome.bookmark_before
    extraction.bookmark_after = outcome.bookmark_after
    extraction.null_key_rows = outcome.null_keys
    if outcome.null_keys:
        log.warning(
            "%s: %d row(s) have a NULL %s; they were loaded and are counted here",
            table.id,
            outcome.null_keys,
            table.replication_key,
        )
    return StepResult(key_range, extraction, report, attempt, generation is not None and generation.sweep)
