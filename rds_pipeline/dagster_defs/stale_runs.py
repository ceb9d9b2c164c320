"""Runs whose process is gone, cleaned before anything waits on them, with or without Dagster's daemon.

A run killed with kill -9 (an OOM kill, a reboot, a lost container) never reports its end: it stays STARTED and
keeps its pool slots, and a DuckDB file's pool (limit 1) or a slot's pool would then block every later run for
good. Run monitoring and ``free_slots_after_run_end_seconds`` fix that only in dagster-daemon, which a cron user
of ``rds-pipeline sync`` does not run. So every run we start cleans first: each unfinished run of this host whose
recorded process (``run_process.py``) is gone is marked FAILED, saying why, and its slots are freed; so are the
slots of runs that already ended. A live run, and a run on another host, are never touched.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import dagster as dg

from rds_pipeline.dagster_defs.run_process import RunProcess

log = logging.getLogger(__name__)

CLEANED_TAG = "rds_pipeline/stale_cleaned"  # on a run this module marked failed: when, and by which process
UNFINISHED = [
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


@dataclass(frozen=True)
class CleanedRun:
    run_id: str
    process: str  # RunProcess.describe(), or "" for a run that had already ended
    message: str

    def line(self) -> str:
        """For a person watching another run: which run, and what was done."""
        return self.message if self.message.startswith("freed") else f"run {self.run_id[:8]}: {self.message}"


def clean_stale_runs(instance: dg.DagsterInstance, by: str = "") -> list[CleanedRun]:
    """Fail the unfinished runs whose process is gone and free their slots; free the slots of ended runs.
    ``by`` says who cleans (e.g. ``run 1a2b3c4d``), for the message; the caller reports what was cleaned.
    Never raises: a cleaning that fails must not stop the run that asked for it (the wait that follows says
    what holds the slot)."""
    try:
        return _clean(instance, by)
    except Exception as exc:  # noqa: BLE001 - best effort, reported
        log.warning("could not check for runs left behind by killed processes: %s", exc)
        return []


def _clean(instance: dg.DagsterInstance, by: str) -> list[CleanedRun]:
    cleaned = []
    storage = instance.event_log_storage
    for run in instance.get_runs(dg.RunsFilter(statuses=UNFINISHED)):
        process = RunProcess.from_tags(run.tags)
        if process is None or process.state() != "gone":
            continue
        latest = instance.get_run_by_id(run.run_id)  # another run may have cleaned it meanwhile
        if latest is None or latest.is_finished or CLEANED_TAG in latest.tags:
            continue
        now = dt.datetime.now().astimezone()
        message = (
            f"rds_pipeline: this run's process ({process.describe()}) is gone: it was killed (kill -9, out "
            "of memory) or the machine restarted, before the run ended. Marked failed and its pool slots "
            f"freed{' by ' + by if by else ''} at {now:%Y-%m-%d %H:%M:%S %Z}. The next sync catches up from "
            "the state in the destination; nothing it did not commit was kept."
        )
        instance.add_run_tags(run.run_id, {CLEANED_TAG: f"{now.isoformat(timespec='seconds')} {by}".strip()})
        instance.report_run_failed(run, message)
        if storage.supports_global_concurrency_limits:
            storage.free_concurrency_slots_for_run(run.run_id)
        cleaned.append(CleanedRun(run.run_id, process.describe(), message))
    if storage.supports_global_concurrency_limits:
        cleaned.extend(_free_slots_of_ended_runs(instance))
    return cleaned


def _free_slots_of_ended_runs(instance: dg.DagsterInstance) -> list[CleanedRun]:
    """Slots still held by runs that ended (or were deleted): what the daemon's free_slots_after_run_end does.
    An ended run whose process still runs (a teardown) keeps them until it exits."""
    freed = []
    storage = instance.event_log_storage
    for run_id in storage.get_concurrency_run_ids():
        run = instance.get_run_by_id(run_id)
        if run is not None and not run.is_finished:
            continue
        process = RunProcess.from_tags(run.tags) if run is not None else None
        if process is not None and process.state() == "alive":
            continue
        storage.free_concurrency_slots_for_run(run_id)
        freed.append(
            CleanedRun(
                run_id,
                "",
                f"freed the pool slots of run {run_id[:8]}, which had "
                f"{'ended (' + run.status.value + ')' if run else 'been deleted'}",
            )
        )
    return freed


@dataclass(frozen=True)
class Holder:
    """A run that holds (or waits for) a slot of a pool, and how its process stands."""

    run_id: str
    status: str
    process: RunProcess | None
    since: dt.datetime | None

    def describe(self) -> str:
        """``run 1a2b3c4d (pid 4242, alive, since 12:01)``"""
        parts = []
        if self.process is not None:
            parts.append(f"pid {self.process.pid}")
            state = self.process.state()
            parts.append({"alive": "alive", "gone": "process gone", "elsewhere": f"on {self.process.host}"}[state])
        else:
            parts.append("process not recorded")
        if self.since is not None:  # the storage's clock: UTC, without a zone
            since = self.since if self.since.tzinfo else self.since.replace(tzinfo=dt.UTC)
            parts.append(f"since {since.astimezone():%H:%M}")
        return f"run {self.run_id[:8]} ({', '.join(parts)})"


def slot_holders(instance: dg.DagsterInstance, pool: str) -> list[Holder]:
    """The runs that hold a slot of ``pool`` now."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    info = storage.get_concurrency_info(pool)
    assigned = {(s.run_id, s.step_key): s.assigned_timestamp for s in info.pending_steps}
    holders = []
    for run_id in dict.fromkeys(slot.run_id for slot in info.claimed_slots):
        run = instance.get_run_by_id(run_id)
        since = min((t for (r, _), t in assigned.items() if r == run_id and t is not None), default=None)
        holders.append(
            Holder(
                run_id, run.status.value if run else "DELETED", RunProcess.from_tags(run.tags) if run else None, since
            )
        )
    return holders
