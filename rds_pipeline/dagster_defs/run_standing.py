"""The runs ``rds-pipeline status`` shows: those that hold or wait for a pool slot, those whose process is gone,
and those the last cleanings marked failed (``stale_runs.py``)."""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from typing import Any

import dagster as dg

from rds_pipeline.dagster_defs.run_process import RunProcess
from rds_pipeline.dagster_defs.stale_runs import CLEANED_TAG, UNFINISHED, slot_holders

CLEANED_SHOWN = 5  # the newest runs a cleaning marked failed
FAILED_SCANNED = 50


@dataclass(frozen=True)
class RunStanding:
    run_id: str
    status: str
    process: str  # "pid 4242, alive" / "pid 4242, process gone" / "" when not recorded
    state: str  # holding, waiting, running, stale (process gone, not cleaned yet), cleaned
    pools: list[str]  # the pools it holds or waits for
    since: str | None  # ISO time it started waiting, or the cleaning's time
    detail: str  # what a person needs: who holds the slot, what the cleaning said


def collect_runs(instance: dg.DagsterInstance) -> list[RunStanding]:
    found: list[RunStanding] = []
    storage = instance.event_log_storage
    holding: dict[str, list[str]] = {}
    waiting: dict[str, list[tuple[str, dt.datetime]]] = {}
    if storage.supports_global_concurrency_limits:
        for pool in sorted(storage.get_concurrency_keys()):
            info = storage.get_concurrency_info(pool)
            for run_id in info.active_run_ids:
                holding.setdefault(run_id, []).append(pool)
            for step in info.pending_steps:
                if step.assigned_timestamp is None:
                    waiting.setdefault(step.run_id, []).append((pool, step.enqueued_timestamp))
    for run in instance.get_runs(dg.RunsFilter(statuses=UNFINISHED)):
        process = RunProcess.from_tags(run.tags)
        state = process.state() if process else None
        described = (
            f"pid {process.pid}, "
            + {"alive": "alive", "gone": "process gone", "elsewhere": f"on {process.host}"}[state]
            if process and state
            else ""
        )
        if state == "gone":
            found.append(
                RunStanding(
                    run.run_id,
                    run.status.value,
                    described,
                    "stale",
                    holding.get(run.run_id, []),
                    None,
                    "its process is gone (killed, or the machine restarted): the next sync "
                    "marks it failed and frees its slots",
                )
            )
        elif run.run_id in waiting:
            pools = [pool for pool, _ in waiting[run.run_id]]
            since = min(t for _, t in waiting[run.run_id])
            held = "; ".join(
                f"{pool} held by {', '.join(h.describe() for h in slot_holders(instance, pool)) or 'no run'}"
                for pool in pools
            )
            found.append(
                RunStanding(
                    run.run_id, run.status.value, described, "waiting", pools, _iso(since), f"waiting for pool {held}"
                )
            )
        elif run.run_id in holding:
            found.append(
                RunStanding(
                    run.run_id,
                    run.status.value,
                    described,
                    "holding",
                    holding[run.run_id],
                    None,
                    f"holds pool {', '.join(holding[run.run_id])}",
                )
            )
        else:
            found.append(RunStanding(run.run_id, run.status.value, described, "running", [], None, ""))
    cleaned = [
        r
        for r in instance.get_runs(dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE]), limit=FAILED_SCANNED)
        if CLEANED_TAG in r.tags
    ][:CLEANED_SHOWN]
    for run in cleaned:
        process = RunProcess.from_tags(run.tags)
        when, _, by = run.tags[CLEANED_TAG].partition(" ")
        found.append(
            RunStanding(
                run.run_id,
                run.status.value,
                f"pid {process.pid}, process gone" if process else "",
                "cleaned",
                [],
                when,
                f"its process was gone: marked failed and its slots freed{' by ' + by if by else ''}",
            )
        )
    return found


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).astimezone(dt.UTC).isoformat(timespec="seconds")


def runs_as_json(runs: list[RunStanding]) -> list[dict[str, Any]]:
    return [asdict(r) for r in runs]
