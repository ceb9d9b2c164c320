"""The Dagster code location (`workspace.yaml`, `[tool.dagster]`). It reads rds_pipeline.yaml and the cached
catalog file only: loading never touches the source database."""

from __future__ import annotations

import dagster as dg

from rds_pipeline.dagster_defs.definitions import definitions_or_empty

defs = definitions_or_empty()


def sync_all_job() -> dg.JobDefinition:
    """sync_all, reconstructable in another process (``dg.reconstructable(sync_all_job)``): a run launched
    with the multiprocess executor, each bucket a step in a slot of the ``rds_source`` pool."""
    return defs.resolve_job_def("sync_all")
