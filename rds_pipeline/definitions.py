"""The Dagster code location (`workspace.yaml`, `[tool.dagster]`). It reads rds_pipeline.yaml and the cached
catalog file only: loading never touches the source database."""

from __future__ import annotations

from rds_pipeline.dagster_defs.definitions import definitions_or_empty

defs = definitions_or_empty()
