"""What the Dagster layer knows about each replicated table: its key, partitions, frequency and group."""

from __future__ import annotations

from dataclasses import dataclass

import dagster as dg

from rds_pipeline.dagster_defs.partitions import PartitionPlan, plan_for
from rds_pipeline.dagster_defs.translator import group_name, replica_key
from rds_pipeline.engine.config import IntegrationConfig
from rds_pipeline.engine.errors import RdsPipelineError
from rds_pipeline.engine.frequency import Frequency, parse_frequency
from rds_pipeline.engine.selection import SelectedTable

# one check per table, in parts: columns (against the catalog), primary_key (unique), row_count (full table)
CHECK_REPLICA = "replica_matches_source"
PART_COLUMNS, PART_PRIMARY_KEY, PART_ROW_COUNT = "columns", "primary_key", "row_count"


@dataclass(frozen=True)
class TableAsset:
    table: SelectedTable
    key: dg.AssetKey
    plan: PartitionPlan
    frequency: Frequency
    group: str


def table_assets(config: IntegrationConfig, selection: list[SelectedTable]) -> list[TableAsset]:
    default = parse_frequency(config.schedule)
    found: list[TableAsset] = []
    owners: dict[dg.AssetKey, str] = {}
    for table in selection:
        frequency = parse_frequency(table.schedule) if table.schedule is not None else default
        key = replica_key(config.destination_schema, table)
        if key in owners:  # destination names are unique, and key_part keeps them apart: a safety net
            raise RdsPipelineError(
                f"{table.id} and {owners[key]} map to the same asset key {key.to_user_string()}. "
                "Fix: give one of them `destination_table:` in rds_pipeline.yaml"
            )
        owners[key] = table.id
        found.append(TableAsset(table, key, plan_for(table), frequency, group_name(table, config.source.database)))
    return found
