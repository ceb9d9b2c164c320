"""Pools: which concurrency pool each replication step claims, and the limits those pools must hold.

- ``rds_source`` (``concurrency: pools: default_limit`` in dagster.yaml): steps that read the source, so a
  backfill of thousands of partitions never runs more than that many source queries at once.
- ``rds_slot__<slot>`` (limit 1): the step that reads a log-based table's replication slot.
- ``rds_duckdb__<file>`` (limit 1): every step that writes to one DuckDB file, which allows a single writer
  process. Concurrent runs and backfills wait for the pool (the UI shows them waiting) instead of failing on the
  file's lock; the pool also caps that integration's source queries at one.

Dagster's instance config has one default limit for every pool, so the pools that must be 1 are set before a run
starts (``ensure_single_writer_pools``): by ``ProcessRunLauncher`` for launched runs, by ``rds-pipeline sync``
for its own. With another launcher, set them once: ``dagster instance concurrency set <pool> 1``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import dagster as dg

from rds_pipeline.dagster_defs.translator import POOL, key_part
from rds_pipeline.engine.config import IntegrationConfig

SLOT_PREFIX = "rds_slot__"
DUCKDB_PREFIX = "rds_duckdb__"
SINGLE_PREFIXES = (SLOT_PREFIX, DUCKDB_PREFIX)


def slot_pool(config: IntegrationConfig) -> str:
    return f"{SLOT_PREFIX}{key_part(config.slot_name)}"


def duckdb_pool(config: IntegrationConfig) -> str | None:
    """One pool per DuckDB file (its absolute path), named after the file; None for a PostgreSQL destination."""
    if config.destination.type != "duckdb" or config.destination.path is None:
        return None
    path = config.destination.path.resolve()
    digest = hashlib.sha256(str(path).encode("utf-8")).hexdigest()[:8]
    return f"{DUCKDB_PREFIX}{key_part(path.stem)[:40]}_{digest}"


def source_step_pool(config: IntegrationConfig) -> str:
    """The pool of a step that reads the source and writes the replica."""
    return duckdb_pool(config) or POOL


def slot_step_pool(config: IntegrationConfig) -> str:
    """The pool of the step that reads the slot: a DuckDB file's writer pool is one step at a time already."""
    return duckdb_pool(config) or slot_pool(config)


def ensure_single_writer_pools(instance: dg.DagsterInstance, pools: Iterable[str]) -> list[str]:
    """Give each single-writer pool that has no limit yet a limit of 1 (a limit the user set is kept); returns
    the pools it set."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return []
    configured = storage.get_concurrency_keys()
    added = []
    for pool in sorted(set(pools)):
        if pool.startswith(SINGLE_PREFIXES) and pool not in configured:
            storage.set_concurrency_slots(pool, 1)
            added.append(pool)
    return added
