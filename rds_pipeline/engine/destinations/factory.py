"""Open the configured destination: the only place that knows every implementation."""

from __future__ import annotations

from rds_pipeline.engine.config import IntegrationConfig
from rds_pipeline.engine.destinations.base import Destination


def open_destination(config: IntegrationConfig, lock_wait_seconds: float | None = None) -> Destination:
    """The configured destination, connected and prepared (schema, state table, integration registry).
    ``lock_wait_seconds``: how long to wait for a DuckDB file another process is writing (default: two minutes)."""
    if config.destination.type == "duckdb":
        from rds_pipeline.engine.destinations.duckdb import DuckDBDestination

        assert config.destination.path is not None
        destination: Destination = DuckDBDestination(
            config.destination.path,
            config.destination_schema,
            **({"lock_wait_seconds": lock_wait_seconds} if lock_wait_seconds is not None else {}),
        )
    else:
        from rds_pipeline.engine.destinations.postgres import PostgresDestination

        destination = PostgresDestination(config.destination, config.destination_schema)
    try:
        destination.prepare(config)
    except BaseException:
        destination.close()
        raise
    return destination
