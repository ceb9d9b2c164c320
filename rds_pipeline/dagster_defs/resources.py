"""Resources: the source (tunneled when configured) and the destination, as ConfigurableResources.

Both read ``rds_pipeline.yaml`` at run time; secrets come from the environment (``EnvVar``), so they never sit
in the UI, run config or logs. The source session (and its SSH tunnel) opens lazily on first use, once per run
process, and closes at teardown.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import dagster as dg
from pydantic import PrivateAttr

from rds_pipeline.dagster_defs.storage_pool import hold_storage_connections
from rds_pipeline.engine.config import IntegrationConfig, load_config
from rds_pipeline.engine.destinations.factory import open_destination
from rds_pipeline.engine.secrets import Secret
from rds_pipeline.engine.source.session import SourceSession


class RdsSourceResource(dg.ConfigurableResource):
    """The production source. ``password``/``ssh_passphrase`` (EnvVar) override the YAML's values."""

    config_path: str
    password: str | None = None
    ssh_passphrase: str | None = None
    _session: SourceSession | None = PrivateAttr(default=None)

    def integration(self) -> IntegrationConfig:
        config = load_config(self.config_path)
        source = config.source
        if self.password:
            source = dataclasses.replace(source, password=Secret(self.password))
        if self.ssh_passphrase and source.ssh is not None:
            source = dataclasses.replace(
                source, ssh=dataclasses.replace(source.ssh, passphrase=Secret(self.ssh_passphrase))
            )
        return dataclasses.replace(config, source=source)

    def session(self) -> SourceSession:
        """One session (connection and tunnel) per run process, opened on first use."""
        if self._session is None:
            self._session = SourceSession(self.integration().source)
        return self._session

    def close(self) -> None:
        if self._session is not None:
            self._session.close()
            self._session = None

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()


class RdsDestinationResource(dg.ConfigurableResource):
    """The destination (PostgreSQL or DuckDB), connected and prepared on first use."""

    config_path: str
    password: str | None = None
    _destination: Any = PrivateAttr(default=None)
    _held: Any = PrivateAttr(default=None)

    def integration(self) -> IntegrationConfig:
        config = load_config(self.config_path)
        if self.password:
            config = dataclasses.replace(
                config, destination=dataclasses.replace(config.destination, password=Secret(self.password))
            )
        return config

    def get(self) -> Any:
        if self._destination is None:
            self._destination = open_destination(self.integration())
        return self._destination

    def close(self) -> None:
        if self._destination is not None:
            self._destination.close()
            self._destination = None

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        # the step writes an event or more per table: its process holds Dagster's storage connections meanwhile
        if context.instance is not None:
            self._held = hold_storage_connections(context.instance)

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        self.close()
        if self._held is not None:
            self._held.release()
            self._held = None
