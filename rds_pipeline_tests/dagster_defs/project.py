"""A real rds_pipeline project on disk for the Dagster tests: config file, catalog with stats, DuckDB replica."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from rds_pipeline.dagster_defs.definitions import build_definitions
from rds_pipeline.engine.config import IntegrationConfig, load_config
from rds_pipeline.engine.destinations.factory import open_destination
from rds_pipeline.engine.selection import SelectedTable, resolve_selection, stats_wanted
from rds_pipeline.engine.source.discovery import discover
from rds_pipeline.local_postgres import LocalPostgres

_counter = itertools.count()
PASSWORD_ENV = "TEST_DAGSTER_SOURCE_PASSWORD"


@dataclass
class Project:
    server: LocalPostgres
    database: str
    path: Path

    @property
    def config(self) -> IntegrationConfig:
        return load_config(self.path)

    def discover(self) -> None:
        config = self.config
        catalog = discover(
            config.source, databases=[self.database], stats_for=stats_wanted(config.tables, self.database)
        )
        catalog.save(config.catalog_path)

    def defs(self) -> dg.Definitions:
        return build_definitions(self.path)

    def selection(self) -> list[SelectedTable]:
        from rds_pipeline.engine.source.catalog import Catalog

        config = self.config
        return resolve_selection(config.tables, Catalog.load(config.catalog_path), self.database)

    def table(self, name: str) -> SelectedTable:
        return next(t for t in self.selection() if t.relation.qualified_name == name)

    def destination(self) -> Any:
        return open_destination(self.config)

    def sql(self, statement: str) -> str:
        return self.server.psql(statement, self.database)


def make_project(
    server: LocalPostgres,
    directory: Path,
    tables: list[dict[str, Any]],
    ddl: str | None = None,
    database: str | None = None,
    **top: Any,
) -> Project:
    """A source database (created with ``ddl`` unless ``database`` is given), config and discovered catalog."""
    os.environ[PASSWORD_ENV] = server.password
    if database is None:
        database = f"dg_src_{next(_counter)}"
        server.psql(f"CREATE DATABASE {database}")
        if ddl:
            server.psql(ddl, database)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "rds_pipeline.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "integration_name": "Dagster Test",
                "source": {
                    "host": server.host,
                    "port": server.port,
                    "user": server.superuser,
                    "password": "${" + PASSWORD_ENV + "}",
                    "database": database,
                },
                "destination": {"type": "duckdb", "path": "replica.duckdb"},
                "tables": tables,
                **top,
            },
            sort_keys=False,
        )
    )
    project = Project(server, database, path)
    project.discover()
    return project


def key(name: str) -> dg.AssetKey:
    """The asset key of a replica in the test projects' schema."""
    return dg.AssetKey(["dagster_test", name])
