"""``rds_pipeline.RdsReplicationComponent``: the integration as a Dagster Component, for ``dg`` projects.

``defs.yaml`` points at the integration's ``rds_pipeline.yaml`` (``dg scaffold defs
rds_pipeline.RdsReplicationComponent <name>`` writes both). The discovered catalog is the component's state:
``dg utils refresh-defs-state`` runs discovery on the source and writes the catalog, in its reviewable JSON form,
both as the state and as the config's catalog file (what ``rds-pipeline discover`` writes, and what a review
diffs). Loading reads the state (or, without one yet, the catalog file) and never touches the source: a source
that is down, or was never reached, cannot take the deployment's definitions down (dagster-io/dagster#25415).
The definitions are those of ``rds_pipeline/definitions.py``, built by the same function.
"""

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import dagster as dg
import yaml
from dagster.components import DefsStateConfig, DefsStateConfigArgs, ResolvedDefsStateConfig
from dagster_shared.serdes.objects.models.defs_state_info import DefsStateManagementType

from rds_pipeline.dagster_defs.definitions import build_definitions

log = logging.getLogger(__name__)
CONFIG_TEMPLATE = Path(__file__).resolve().parents[1] / "data" / "component_config.yaml"


def _no_refresh_on_load() -> DefsStateConfigArgs:
    """State on the local filesystem, refreshed only on request (`dg utils refresh-defs-state`), never by
    loading: `dagster dev` would otherwise run discovery against the source at every start."""
    return DefsStateConfigArgs(management_type=DefsStateManagementType.LOCAL_FILESYSTEM, refresh_if_dev=False)


class RdsReplicationScaffolder(dg.Scaffolder):
    """Writes ``defs.yaml`` pointing at ``rds_pipeline.yaml``, and a commented ``rds_pipeline.yaml`` to fill in."""

    def scaffold(self, request: dg.ScaffoldRequest) -> None:
        request.target_path.mkdir(parents=True, exist_ok=True)
        config = request.target_path / "rds_pipeline.yaml"
        if not config.exists():
            config.write_text(CONFIG_TEMPLATE.read_text(encoding="utf-8"), encoding="utf-8")
        (request.target_path / "defs.yaml").write_text(
            f"type: {request.type_name}\n\nattributes:\n  config: rds_pipeline.yaml  # source, destination and tables\n",
            encoding="utf-8",
        )


@dg.scaffold_with(RdsReplicationScaffolder)
@dataclass
class RdsReplicationComponent(dg.StateBackedComponent, dg.Resolvable):
    """Replicates PostgreSQL (Amazon RDS or any 12+) tables into PostgreSQL or DuckDB: one partitioned asset per
    selected table, with lineage from the source, checks, schedules or declarative automation, and sensors.

    The discovered catalog is this component's state: refresh it with ``dg utils refresh-defs-state``.
    """

    config: Annotated[
        Path, dg.Resolver(lambda context, value: context.resolve_source_relative_path(value), model_field_type=str)
    ]
    defs_state: ResolvedDefsStateConfig = field(default_factory=_no_refresh_on_load)

    @property
    def defs_state_config(self) -> DefsStateConfig:
        return DefsStateConfig.from_args(self.defs_state, default_key=f"RdsReplicationComponent[{self._name()}]")

    def _name(self) -> str:
        """The integration's name (unique per destination schema), read without validating the config."""
        try:
            raw = yaml.safe_load(self.config.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError):
            raw = {}
        name = raw.get("integration_name") if isinstance(raw, dict) else None
        return str(name) if name else str(self.config)

    def write_state_to_path(self, state_path: Path) -> None:
        """Discover the selected tables' source (statistics for the partitions included), then write the catalog
        to the state and to the config's catalog file, as ``rds-pipeline discover`` does."""
        from rds_pipeline.engine.config import load_config
        from rds_pipeline.engine.selection import stats_wanted
        from rds_pipeline.engine.source.discovery import discover

        config = load_config(self.config)
        catalog = discover(config.source, stats_for=stats_wanted(config.tables, config.source.database))
        catalog.save(config.catalog_path)
        state_path.parent.mkdir(parents=True, exist_ok=True)
        catalog.save(state_path)

    def build_defs_from_state(self, context: dg.ComponentLoadContext, state_path: Path | None) -> dg.Definitions:
        if state_path is not None and state_path.exists():
            return build_definitions(self.config, catalog_path=state_path)
        from rds_pipeline.engine.config import load_config

        if load_config(self.config).catalog_path.is_file():  # discovered with `rds-pipeline discover`
            return build_definitions(self.config)
        log.warning(
            "rds_pipeline: %s has no catalog yet, so no assets: run `dg utils refresh-defs-state` (or "
            "`rds-pipeline discover`)",
            self.config,
        )
        return dg.Definitions()
