"""Build the Definitions from rds_pipeline.yaml and the cached catalog, without touching the source."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import dagster as dg
from ruamel.yaml import YAML

from rds_pipeline.dagster_defs.assets import build_replica_assets, source_specs
from rds_pipeline.dagster_defs.automation import automation_sensor
from rds_pipeline.dagster_defs.executor import recovering_executor
from rds_pipeline.dagster_defs.jobs import SYNC_ALL, build_op_jobs
from rds_pipeline.dagster_defs.pools import slot_step_pool, source_step_pool
from rds_pipeline.dagster_defs.resources import RdsDestinationResource, RdsSourceResource
from rds_pipeline.dagster_defs.schedules import build_schedules
from rds_pipeline.dagster_defs.sensors import build_sensors
from rds_pipeline.dagster_defs.tables import table_assets
from rds_pipeline.dagster_defs.usage import build_usage_asset
from rds_pipeline.dagster_defs.verify import build_verify_checks, build_verify_jobs
from rds_pipeline.engine.config import find_config_path, load_config, quote_env_refs
from rds_pipeline.engine.selection import resolve_selection
from rds_pipeline.engine.source.catalog import Catalog

log = logging.getLogger(__name__)
_ENV_ONLY = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")


def _env_var(raw: object) -> dg.EnvVar | None:
    match = _ENV_ONLY.match(raw) if isinstance(raw, str) else None
    return dg.EnvVar(match.group(1)) if match else None


def build_definitions(config_path: str | Path | None = None, catalog_path: Path | None = None) -> dg.Definitions:
    """Every definition of one integration, for both entry points: ``rds_pipeline/definitions.py`` (the catalog
    file) and ``RdsReplicationComponent`` (its state, the same catalog)."""
    path = find_config_path(config_path)
    config = load_config(path)
    catalog = Catalog.load(catalog_path or config.catalog_path)
    selection = resolve_selection(config.tables, catalog, config.source.database)
    assets = table_assets(config, selection)
    raw = YAML(typ="safe").load(quote_env_refs(path.read_text(encoding="utf-8"))) or {}
    source_raw, dest_raw = raw.get("source") or {}, raw.get("destination") or {}
    ssh_raw = source_raw.get("ssh") or {}
    resources = {
        "rds_source": RdsSourceResource(
            config_path=str(path.resolve()),
            password=_env_var(source_raw.get("password")),
            ssh_passphrase=_env_var(ssh_raw.get("passphrase")),
        ),
        "rds_destination": RdsDestinationResource(
            config_path=str(path.resolve()), password=_env_var(dest_raw.get("password"))
        ),
    }
    jobs = build_op_jobs(assets, source_step_pool(config), slot_step_pool(config))
    sync_all = next(job for job in jobs if job.name == SYNC_ALL)
    verify_jobs, verify_schedules = build_verify_jobs(assets, config)
    return dg.Definitions(
        assets=[
            *source_specs(catalog, selection, config),
            *build_replica_assets(config, assets),
            build_usage_asset(assets),
        ],
        asset_checks=build_verify_checks(assets),
        jobs=[*jobs, *verify_jobs],
        schedules=[
            *(build_schedules(assets, sync_all) if config.automation == "schedules" else []),
            *verify_schedules,
        ],
        sensors=[
            *build_sensors(assets, sync_all, catalog),
            *([automation_sensor(assets)] if config.automation == "declarative" and assets else []),
        ],
        resources=resources,
        executor=recovering_executor,  # a run first cleans the runs killed without a trace (executor.py)
    )


def definitions_or_empty() -> dg.Definitions:
    """For the code location: without a config there is nothing to load yet (say so, and load empty)."""
    path = find_config_path()
    if not path.is_file():
        log.warning("rds_pipeline: no config at %s (set RDS_PIPELINE_CONFIG); loading no assets", path)
        return dg.Definitions()
    return build_definitions(path)
