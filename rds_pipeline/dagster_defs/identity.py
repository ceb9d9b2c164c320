"""Where each table lives, as catalogs and lineage tools read it: fully qualified names (``database.schema.
table``), URIs without credentials, and 1:1 column lineage from a replica to its source relation."""

from __future__ import annotations

from urllib.parse import quote

import dagster as dg

from rds_pipeline.engine.config import IntegrationConfig
from rds_pipeline.engine.selection import SelectedTable
from rds_pipeline.engine.source.catalog import Relation


def _part(name: str) -> str:
    """Percent-encoded, dots too: the one unencoded dot then separates the schema from the table."""
    return quote(name, safe="").replace(".", "%2E")


def _uri(scheme_and_place: str, schema: str, name: str) -> str:
    return f"{scheme_and_place}?table={_part(schema)}.{_part(name)}"


def replica_table_name(config: IntegrationConfig, table: SelectedTable) -> str:
    """``<database>.<schema>.<table>``; for DuckDB the database is the file's catalog (its name without suffix)."""
    destination = config.destination
    database = destination.path.stem if destination.type == "duckdb" and destination.path else destination.database
    return f"{database}.{config.destination_schema}.{table.destination_table}"


def replica_uri(config: IntegrationConfig, table: SelectedTable) -> str:
    """``postgresql://host:port/database?table=schema.table`` or ``duckdb:///abs/path.duckdb?table=…``."""
    destination = config.destination
    if destination.type == "duckdb" and destination.path is not None:
        place = f"duckdb://{quote(str(destination.path.resolve()))}"
    else:
        place = f"postgresql://{destination.host}:{destination.port}/{quote(destination.database or '', safe='')}"
    return _uri(place, config.destination_schema, table.destination_table)


def source_table_name(relation: Relation) -> str:
    return f"{relation.database}.{relation.schema}.{relation.name}"


def source_uri(config: IntegrationConfig, relation: Relation) -> str:
    """The source as the rds_pipeline host reaches it (through a bastion, the address the bastion sees)."""
    place = f"postgresql://{config.source.host}:{config.source.port}/{quote(relation.database, safe='')}"
    return _uri(place, relation.schema, relation.name)


def column_lineage(table: SelectedTable, source: dg.AssetKey) -> dg.TableColumnLineage:
    """Each replicated column comes from the column of the same name in the source relation (a view's own
    columns for a replicated view; the view's asset carries its dependencies on the tables it reads)."""
    return dg.TableColumnLineage(
        deps_by_column={name: [dg.TableColumnDep(asset_key=source, column_name=name)] for name in table.column_names}
    )
