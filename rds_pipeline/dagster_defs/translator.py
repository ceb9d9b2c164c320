"""Names: asset keys, groups and metadata keys for source relations and their replicas."""

from __future__ import annotations

import re

import dagster as dg

from rds_pipeline.engine.selection import SelectedTable
from rds_pipeline.engine.source.catalog import Relation

SOURCE_GROUP = "rds_source"
POOL = "rds_source"


def replica_key(schema: str, table: SelectedTable) -> dg.AssetKey:
    """``[<destination schema>, <destination table>]``."""
    return dg.AssetKey([schema, table.destination_table])


def source_key(relation_id: str) -> dg.AssetKey:
    """``["source", <database>, <schema>, <name>]`` for the external source relation."""
    database, schema, name = relation_id.split(".", 2)
    return dg.AssetKey(["source", database, schema, name])


def source_key_for(relation: Relation) -> dg.AssetKey:
    return dg.AssetKey(["source", relation.database, relation.schema, relation.name])


def safe_name(text: str) -> str:
    """Dagster names allow letters, digits and underscores only."""
    name = re.sub(r"[^0-9A-Za-z_]+", "_", text).strip("_") or "x"
    return name if not name[0].isdigit() else f"_{name}"


def group_name(table: SelectedTable, default_database: str) -> str:
    """One group per source schema (prefixed by the database when it is not the configured one)."""
    relation = table.relation
    base = relation.schema if relation.database == default_database else f"{relation.database}__{relation.schema}"
    return safe_name(base)
