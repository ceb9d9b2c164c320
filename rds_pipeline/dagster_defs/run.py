"""`rds-pipeline sync`: run the sync_all job through Dagster, in the configured instance (visible in the UI)."""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import dagster as dg

from rds_pipeline.dagster_defs.definitions import build_definitions

log = logging.getLogger(__name__)


def instance_for_cli() -> dg.DagsterInstance:
    """The instance in $DAGSTER_HOME (so runs show in the UI); an ephemeral one, with a warning, without it."""
    if os.environ.get("DAGSTER_HOME"):
        return dg.DagsterInstance.get()
    log.warning("DAGSTER_HOME is not set: this run is recorded in a temporary instance, not in your UI")
    return dg.DagsterInstance.ephemeral()


def run_sync(config_path: str | Path | None, tables: list[str] | None = None, group: str = "",
             instance: dg.DagsterInstance | None = None) -> tuple[bool, list[dict[str, Any]]]:  # fmt: skip
    """Execute sync_all; return success and one loading-report row per table (summed over partitions)."""
    defs = build_definitions(config_path)
    job = defs.resolve_job_def("sync_all")
    instance = instance or instance_for_cli()
    result = job.execute_in_process(
        run_config={"ops": {"sync_tables": {"config": {"group": group, "tables": tables or []}}}},
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
    return result.success, rows


def _replica_specs(defs: dg.Definitions) -> list[dg.AssetSpec]:
    graph = defs.resolve_asset_graph()
    return [graph.get(key).to_asset_spec() for key in graph.get_all_asset_keys() if graph.get(key).is_materializable]
