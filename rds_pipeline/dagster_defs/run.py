"""`rds-pipeline sync`: run the sync_all job through Dagster, in the configured instance (visible in the UI)."""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from rds_pipeline.dagster_defs.definitions import build_definitions
from rds_pipeline.dagster_defs.jobs import PICK_OP, SYNC_ALL
from rds_pipeline.dagster_defs.pools import ensure_single_writer_pools

log = logging.getLogger(__name__)


def instance_for_cli() -> dg.DagsterInstance:
    """The instance in $DAGSTER_HOME (so runs show in the UI); an ephemeral one, with a warning, without it."""
    if os.environ.get("DAGSTER_HOME"):
        return dg.DagsterInstance.get()
    log.warning("DAGSTER_HOME is not set: this run is recorded in a temporary instance, not in your UI")
    return dg.DagsterInstance.ephemeral()


@dataclass
class SyncOutcome:
    success: bool
    rows: list[dict[str, Any]]  # the loading report: one row per table, summed over partitions
    failures: list[dict[str, str]] = field(default_factory=list)  # {"table", "error"} per failed table
    errors: list[str] = field(default_factory=list)  # failures outside any table (e.g. a bad config)


def run_sync(config_path: str | Path | None, tables: list[str] | None = None, group: str = "",
             instance: dg.DagsterInstance | None = None, quiet: bool = False,
             parallel: int | None = None) -> SyncOutcome:  # fmt: skip
    """Execute sync_all (each table catches up) and collect the loading report and the failed tables."""
    defs = build_definitions(config_path)
    job = defs.resolve_job_def(SYNC_ALL)
    instance = instance or instance_for_cli()
    ensure_single_writer_pools(instance, {node.definition.pool for node in job.graph.nodes if node.definition.pool})
    result = job.execute_in_process(
        run_config={"ops": {PICK_OP: {"config": {"group": group, "tables": tables or [],
                                                  **({"parallel": parallel} if parallel else {})}}},
                    # the CLI prints its own report and failure list; tracebacks only with -v
                    **({"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}} if quiet else {})},
        instance=instance,
        raise_on_error=False,
    )
    totals: dict[str, dict[str, Any]] = defaultdict(lambda: {"rows_inserted": 0, "rows_updated": 0,
                                                             "rows_deleted": 0, "seconds": 0.0, "mode": ""})  # fmt: skip
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
        rows.append({"destination_table": table, **row,
                     "rows_per_second": moved / row["seconds"] if row["seconds"] else 0.0})  # fmt: skip
    outcome = SyncOutcome(result.success, rows)
    for event in result.all_events:
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


def _replica_specs(defs: dg.Definitions) -> list[dg.AssetSpec]:
    graph = defs.resolve_asset_graph()
    return [graph.get(key).to_asset_spec() for key in graph.get_all_asset_keys() if graph.get(key).is_materializable]
