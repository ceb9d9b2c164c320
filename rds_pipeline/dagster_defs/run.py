"""`rds-pipeline sync`: run the sync_all job through Dagster, in the configured instance (visible in the UI).

Before the run claims any pool slot, runs left behind by killed processes are cleaned (``stale_runs.py``); the run
records its own process (``run_process.py``) so that the next one can do the same for it; its waits for slots
are bounded and reported (``slot_wait.py``); and a stop request marks it canceled (``rds_pipeline.stop``).
"""

from __future__ import annotations

import logging
import os
import re
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg
from dagster._core.utils import make_new_run_id

from rds_pipeline.dagster_defs.definitions import build_definitions
from rds_pipeline.dagster_defs.jobs import PICK_OP, SYNC_ALL
from rds_pipeline.dagster_defs.pools import ensure_single_writer_pools
from rds_pipeline.dagster_defs.run_process import RunProcess
from rds_pipeline.dagster_defs.slot_wait import bounded_slot_waits
from rds_pipeline.dagster_defs.stale_runs import clean_stale_runs
from rds_pipeline.dagster_defs.storage_pool import hold_storage_connections
from rds_pipeline.engine.config import find_config_path, load_config
from rds_pipeline.engine.errors import RdsPipelineError
from rds_pipeline.stop import StopState

log = logging.getLogger(__name__)


def instance_for_cli() -> dg.DagsterInstance:
    """The instance in $DAGSTER_HOME (so runs show in the UI); an ephemeral one, with a warning, without it."""
    home = os.environ.get("DAGSTER_HOME")
    if home:
        try:
            return dg.DagsterInstance.get()
        except dg.DagsterInvalidConfigError as exc:
            missing = sorted(set(re.findall(r'environment variable "(\w+)" which is not set', str(exc))))
            if missing:
                raise RdsPipelineError(
                    f"the Dagster instance in DAGSTER_HOME={home} cannot load: its dagster.yaml reads "
                    f"{', '.join(missing)}, not set here. Fix: export {missing[0]}=… (for the demo: source "
                    ".demo/env.sh, which `make demo` writes), or unset DAGSTER_HOME for a temporary instance"
                ) from None
            raise RdsPipelineError(
                f"the Dagster instance in DAGSTER_HOME={home} cannot load: {str(exc).splitlines()[0]}. "
                f"Fix: correct {home}/dagster.yaml, or unset DAGSTER_HOME for a temporary instance"
            ) from None
    log.warning("DAGSTER_HOME is not set: this run is recorded in a temporary instance, not in your UI")
    return dg.DagsterInstance.ephemeral()


@dataclass
class SyncOutcome:
    success: bool
    rows: list[dict[str, Any]]  # the loading report: one row per table, summed over partitions
    failures: list[dict[str, str]] = field(default_factory=list)  # {"table", "error"} per failed table
    errors: list[str] = field(default_factory=list)  # failures outside any table (e.g. a bad config)
    run_id: str = ""
    cleaned: list[str] = field(default_factory=list)  # runs left behind by killed processes, cleaned first


def run_sync(
    config_path: str | Path | None,
    tables: list[str] | None = None,
    group: str = "",
    instance: dg.DagsterInstance | None = None,
    quiet: bool = False,
    parallel: int | None = None,
    report: Callable[[str], None] | None = None,
    stop: StopState | None = None,
) -> SyncOutcome:
    """Execute sync_all (each table catches up) and collect the loading report and the failed tables.
    ``report`` hears what the run waits for; ``stop`` (the CLI's) learns how to mark the run if it must quit."""
    config = load_config(find_config_path(config_path))
    defs = build_definitions(config_path)
    job = defs.resolve_job_def(SYNC_ALL)
    instance = instance or instance_for_cli()
    held = hold_storage_connections(instance)  # the whole run's storage calls, not only the sync step's
    try:
        run_id, process = make_new_run_id(), RunProcess.of()
        cleaned = [c.line() for c in clean_stale_runs(instance, by=f"run {run_id[:8]} ({process.describe()})")]
        for message in cleaned:
            (report or log.warning)(message)
        ensure_single_writer_pools(
            instance, {pool for node in job.graph.nodes if (pool := getattr(node.definition, "pool", None))}
        )
        if stop is not None:
            stop.on_stop.append(lambda: _mark_canceling(instance, run_id, stop))
            stop.on_exit.append(lambda: _end_run(instance, run_id, stop))
        with bounded_slot_waits(config.pool_wait_seconds, report):
            result = _execute(job, instance, run_id, process, group, tables, parallel, quiet)
        return _outcome(defs, instance, run_id, result, cleaned)
    finally:
        held.release()


def _execute(
    job: dg.JobDefinition,
    instance: dg.DagsterInstance,
    run_id: str,
    process: RunProcess,
    group: str,
    tables: list[str] | None,
    parallel: int | None,
    quiet: bool,
) -> dg.ExecuteInProcessResult:
    """sync_all, in this process."""
    return job.execute_in_process(
        run_config={
            "ops": {
                PICK_OP: {
                    "config": {
                        "group": group,
                        "tables": tables or [],
                        **({"parallel": parallel} if parallel else {}),
                    }
                }
            },
            # the CLI prints its own report and failure list; tracebacks only with -v
            **({"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}} if quiet else {}),
        },
        instance=instance,
        raise_on_error=False,
        run_id=run_id,
        tags=process.tags(),
    )


def _outcome(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    run_id: str,
    result: dg.ExecuteInProcessResult,
    cleaned: list[str],
) -> SyncOutcome:
    """The loading report and the failed tables, from the run's events."""
    if instance.event_log_storage.supports_global_concurrency_limits:
        instance.event_log_storage.free_concurrency_slots_for_run(run_id)  # the run ended: whatever it held
    totals: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"rows_inserted": 0, "rows_updated": 0, "rows_deleted": 0, "seconds": 0.0, "mode": ""}
    )
    modes = {spec.key: spec.metadata.get("rds_pipeline/replication_method", "") for spec in _replica_specs(defs)}
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization  # type: ignore[union-attr]
        meta = materialization.metadata
        if "rows_inserted" not in meta:
            continue
        row = totals[materialization.asset_key.to_user_string()]
        row["mode"] = modes.get(materialization.asset_key, "")
        for name in ("rows_inserted", "rows_updated", "rows_deleted"):
            row[name] += int(meta[name].value)  # type: ignore[arg-type]
        row["seconds"] += float(meta["duration_seconds"].value)  # type: ignore[arg-type]
    rows = []
    for table, row in sorted(totals.items()):
        moved = row["rows_inserted"] + row["rows_updated"]
        rows.append(
            {"destination_table": table, **row, "rows_per_second": moved / row["seconds"] if row["seconds"] else 0.0}
        )
    outcome = SyncOutcome(result.success, rows, run_id=run_id, cleaned=cleaned)
    for event in result.all_events:
        if event.event_type_value == "PIPELINE_FAILURE" and not outcome.failures and not outcome.errors:
            error = getattr(event.event_specific_data, "error", None)
            if error is not None and error.cls_name not in ("DagsterExecutionInterruptedError", "KeyboardInterrupt"):
                outcome.errors.append(error.message.strip().splitlines()[0])
        if event.event_type_value != "STEP_FAILURE":
            continue
        data = event.step_failure_data
        user = data.user_failure_data if data else None
        failed = user.metadata.get("failed_tables") if user else None
        if failed is not None:
            outcome.failures.extend(failed.value)  # type: ignore[arg-type]
        elif data and data.error:
            outcome.errors.append(data.error.message.strip().splitlines()[0])
    return outcome


def _mark_canceling(instance: dg.DagsterInstance, run_id: str, stop: StopState) -> None:
    """At the first stop signal: the run will end CANCELED (not "interrupted unexpectedly")."""
    run = instance.get_run_by_id(run_id)
    if run is not None and not run.is_finished:
        instance.report_run_canceling(run, f"rds-pipeline sync received {stop.name}: stopping")


def _end_run(instance: dg.DagsterInstance, run_id: str, stop: StopState) -> None:
    """At a forced exit (a second signal, or the deadline): the run is canceled and its slots are freed."""
    run = instance.get_run_by_id(run_id)
    if run is not None and not run.is_finished:
        instance.report_run_canceled(
            run,
            f"rds-pipeline sync quit on {stop.name} before the run could end; nothing it had not committed was kept",
        )
    if instance.event_log_storage.supports_global_concurrency_limits:
        instance.event_log_storage.free_concurrency_slots_for_run(run_id)


def _replica_specs(defs: dg.Definitions) -> list[dg.AssetSpec]:
    graph = defs.resolve_asset_graph()
    return [graph.get(key).to_asset_spec() for key in graph.get_all_asset_keys() if graph.get(key).is_materializable]
