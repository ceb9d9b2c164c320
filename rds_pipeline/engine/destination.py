"""What every destination shares: the loading report, the integration registry rule, and errors."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from rds_pipeline.engine.config import IntegrationConfig
from rds_pipeline.engine.errors import RdsPipelineError

STATE_TABLE = "_rds_pipeline_state"
META_SCHEMA = "rds_pipeline_meta"
EXTRACTED_AT = "_rds_extracted_at"
BATCH_ID = "_rds_batch_id"
METADATA_COLUMNS = (EXTRACTED_AT, BATCH_ID)


class LoadError(RdsPipelineError):
    """A load failed permanently for one table (named in the message)."""


class IntegrationRenamed(RdsPipelineError):
    """integration_name changed after data was loaded: the old schema would be orphaned."""


@dataclass
class LoadingReport:
    table: str
    destination_table: str
    mode: str  # full_table, key_based
    rows_inserted: int = 0
    rows_updated: int = 0
    rows_deleted: int = 0
    seconds: float = 0.0
    batch_id: str = ""
    committed_at: dt.datetime | None = None
    warnings: tuple[str, ...] = ()

    @property
    def rows_per_second(self) -> float:
        return (self.rows_inserted + self.rows_updated) / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "destination_table": self.destination_table,
            "mode": self.mode,
            "rows_inserted": self.rows_inserted,
            "rows_updated": self.rows_updated,
            "rows_deleted": self.rows_deleted,
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows_per_second, 1),
            "batch_id": self.batch_id,
            "warnings": list(self.warnings),
        }


def rename_refusal(previous_name: str, previous_schema: str, new_name: str, new_schema: str) -> IntegrationRenamed:
    return IntegrationRenamed(
        f"integration_name changed from '{previous_name}' to '{new_name}', but this source's data is already "
        f"loaded in destination schema '{previous_schema}'. Loading into '{new_schema}' would orphan it and start "
        f"every table over. Fix: set integration_name back to '{previous_name}'; or, to start a new schema on "
        "purpose, set `allow_integration_rename: true` in rds_pipeline.yaml (the old schema is left as it is)"
    )


def open_destination(config: IntegrationConfig) -> Any:
    """The configured destination, connected and prepared (schema, state table, rename check)."""
    if config.destination.type == "duckdb":
        from rds_pipeline.engine.load_duckdb import DuckDBDestination

        assert config.destination.path is not None
        destination: Any = DuckDBDestination(config.destination.path, config.destination_schema)
    else:
        from rds_pipeline.engine.load_postgres import PostgresDestination

        destination = PostgresDestination(config.destination, config.destination_schema)
    try:
        destination.prepare(config)
    except BaseException:
        destination.close()
        raise
    return destination
