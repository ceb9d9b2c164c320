"""rds_pipeline: replicate Amazon RDS for PostgreSQL (and any PostgreSQL 12+) into PostgreSQL or DuckDB.

``rds_pipeline.RdsReplicationComponent`` is the Dagster Component (``dg scaffold defs
rds_pipeline.RdsReplicationComponent <name>``). It is loaded on first use, so that importing the engine never
imports Dagster.
"""

from typing import Any

__all__ = ["RdsReplicationComponent"]


def __getattr__(name: str) -> Any:
    if name == "RdsReplicationComponent":
        from rds_pipeline.dagster_defs.component import RdsReplicationComponent

        return RdsReplicationComponent
    raise AttributeError(f"module 'rds_pipeline' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
