"""Which module applies log-based changes to a destination: ``postgres_apply`` or ``duckdb_apply``, each with
the same functions (applied_lsn, record_lsn, snapshot_lsns, record_snapshot, forget_table, forget_slot,
slot_age_seconds, apply_batch)."""

from __future__ import annotations

from types import ModuleType
from typing import Any


def applier(destination: Any) -> ModuleType:
    if getattr(destination, "kind", None) == "duckdb":
        from rds_pipeline.engine.destinations import duckdb_apply

        return duckdb_apply
    from rds_pipeline.engine.destinations import postgres_apply

    return postgres_apply
