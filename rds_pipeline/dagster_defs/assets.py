"""The asset factory: every selected table becomes a partitioned asset, built from the cached catalog only.

Tables are grouped per source schema into one ``multi_asset(can_subset=True)`` each (specs may carry their
own partitions), so a 2,000-table selection is a handful of definitions, not thousands. Source tables and
views are external assets upstream of their replicas; a source view depends on the relations it reads.
"""

import datetime as dt
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import dagster as dg

from rds_pipeline.dagster_defs.partitions import PartitionPlan, key_range_for, plan_for
from rds_pipeline.dagster_defs.resources import RdsDestinationResource, RdsSourceResource
from rds_pipeline.dagster_defs.translator import (
    POOL,
    SOURCE_GROUP,
    group_name,
    replica_key,
    safe_name,
    source_key,
    source_key_for,
)
from rds_pipeline.engine.config import IntegrationConfig
from rds_pipeline.engine.frequency import Frequency, parse_frequency
from rds_pipeline.engine.replication.extract import KeyRange
from rds_pipeline.engine.replication.sync import SyncResult, sync_table
from rds_pipeline.engine.replication.verify import columns_check, primary_key_check, row_count_check, source_count
from rds_pipeline.engine.selection import SelectedTable
from rds_pipeline.engine.source.catalog import Catalog, Relation

CHECK_PRIMARY_KEY = "primary_key_unique"
CHECK_COLUMNS = "columns_match_catalog"
CHECK_ROW_COUNT = "row_count_matches_source"


@dataclass(frozen=True)
class TableAsset:
    """Everything the Dagster layer knows about one replicated table."""

    table: SelectedTable
    key: dg.AssetKey
    plan: PartitionPlan
    frequency: Frequency
    group: str


def table_assets(config: IntegrationConfig, selection: list[SelectedTable]) -> list[TableAsset]:
    default = parse_frequency(config.schedule)
    found = []
    for table in selection:
        frequency = parse_frequency(table.schedule) if table.schedule is not None else default
        found.append(
            TableAsset(
                table,
                replica_key(config.destination_schema, table),
                plan_for(table),
                frequency,
                group_name(table, config.source.database),
            )  # fmt: skip
        )
    return found


def _column_schema(relation: Relation, names: tuple[str, ...] | None = None) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(c.name, c.type, constraints=dg.TableColumnConstraints(nullable=c.nullable))
            for c in relation.columns
            if names is None or c.name in names
        ]
    )


def replica_spec(asset: TableAsset, config: IntegrationConfig) -> dg.AssetSpec:
    table = asset.table
    relation = table.relation
    dest_table = f"{config.destination_schema}.{table.destination_table}"
    kind = "view" if relation.is_view else relation.kind.replace("_", " ")
    description = relation.comment or f"Replica of the source {kind} {relation.id} ({table.method.replace('_', ' ')})."
    return dg.AssetSpec(
        asset.key,
        deps=[source_key_for(relation)],
        description=description,
        group_name=asset.group,
        kinds={config.destination.type},
        partitions_def=asset.plan.partitions_def,
        freshness_policy=dg.FreshnessPolicy.time_window(
            fail_window=dt.timedelta(minutes=2 * asset.frequency.max_minutes_between_runs + 15),
            warn_window=dt.timedelta(minutes=asset.frequency.max_minutes_between_runs + 15),
        ),
        metadata={
            "dagster/column_schema": _column_schema(relation, table.column_names),
            "dagster/table_name": dest_table,
            "dagster/relation_identifier": dest_table,
            "rds_pipeline/source": relation.id,
            "rds_pipeline/replication_method": table.method,
            "rds_pipeline/replication_key": table.replication_key or "",
            "rds_pipeline/primary_key": ", ".join(table.primary_key),
            "rds_pipeline/partitioning": asset.plan.kind,
            "rds_pipeline/schedule": f"{asset.frequency.description} ({asset.frequency.timezone})",
        },
        tags={"rds_pipeline/method": table.method},
    )


def source_specs(catalog: Catalog, selection: list[SelectedTable]) -> list[dg.AssetSpec]:
    """External assets for every selected relation and, transitively, every relation a selected view reads."""
    by_id = catalog.by_id()
    wanted: list[str] = [t.id for t in selection]
    seen: set[str] = set()
    specs = []
    while wanted:
        relation_id = wanted.pop()
        if relation_id in seen:
            continue
        seen.add(relation_id)
        relation = by_id.get(relation_id)
        if relation is None:
            continue
        reads = [f"{relation.database}.{r}" for r in relation.reads]
        wanted.extend(reads)
        specs.append(
            dg.AssetSpec(
                source_key_for(relation),
                deps=[source_key(r) for r in reads if r in by_id],
                description=relation.comment or f"Source {relation.kind.replace('_', ' ')} {relation.id}",
                group_name=SOURCE_GROUP,
                kinds={"postgres"},
                metadata={
                    "dagster/column_schema": _column_schema(relation),
                    "dagster/table_name": f"{relation.schema}.{relation.name}",
                    "rds_pipeline/row_estimate": relation.row_estimate if relation.row_estimate is not None else -1,
                    "rds_pipeline/size_bytes": relation.size_bytes if relation.size_bytes is not None else -1,
                },
            )
        )
    return sorted(specs, key=lambda s: s.key.to_user_string())


def check_specs(asset: TableAsset) -> list[dg.AssetCheckSpec]:
    specs = [dg.AssetCheckSpec(CHECK_COLUMNS, asset=asset.key, description="Destination columns match the catalog")]
    if asset.table.primary_key:
        specs.append(dg.AssetCheckSpec(CHECK_PRIMARY_KEY, asset=asset.key, description="The primary key is unique"))
    if asset.table.method == "full_table":
        specs.append(
            dg.AssetCheckSpec(CHECK_ROW_COUNT, asset=asset.key, description="Destination rows equal source rows")
        )
    return specs


def key_range_for_context(context: dg.AssetExecutionContext, asset: TableAsset) -> KeyRange:
    """The engine range for this run's partition, or range of partitions (a backfill in one run)."""
    plan = asset.plan
    if plan.kind == "whole":
        return KeyRange()
    keys = plan.partitions_def.get_partition_keys(dynamic_partitions_store=context.instance)
    if context.has_partition_key_range:
        first, last = context.partition_key_range.start, context.partition_key_range.end
    else:
        first = last = context.partition_key
    window = context.partition_time_window if plan.kind == "time" else None
    return key_range_for(plan, first, last, list(keys), window)


def materialize_table(
    context: dg.AssetExecutionContext, asset: TableAsset, source: RdsSourceResource, destination: RdsDestinationResource
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """Sync one table's partition(s) through the engine; report metadata and run its checks."""
    key_range = key_range_for_context(context, asset)
    table = asset.table
    dest = destination.get()
    lookback = table.lookback
    # "whole" partitions have no range: full-table syncs replace everything, key-based ones use the bookmark
    explicit = key_range if asset.plan.kind != "whole" else None
    result: SyncResult = sync_table(source.session(), dest, table, explicit, lookback=lookback)
    extraction, report = result.extraction, result.report
    context.log.info(f"{table.id}: {report.rows_inserted} inserted, {report.rows_updated} updated, "
                     f"{report.rows_deleted} deleted in {report.seconds:.2f}s ({result.key_range.describe()})")  # fmt: skip
    for warning in report.warnings:
        context.log.warning(f"{table.id}: {warning}")
    yield dg.MaterializeResult(
        asset_key=asset.key,
        metadata={
            "dagster/row_count": extraction.rows,
            "rows_inserted": report.rows_inserted,
            "rows_updated": report.rows_updated,
            "rows_deleted": report.rows_deleted,
            "bytes": extraction.bytes,
            "duration_seconds": round(report.seconds, 3),
            "rows_per_second": round(report.rows_per_second, 1),
            "bookmark": extraction.bookmark_after or "",
            "null_key_rows": extraction.null_key_rows,
            "source_in_recovery": extraction.source_in_recovery,
            "key_range": result.key_range.describe(),
            "query": dg.MetadataValue.md(f"```sql\n{extraction.query}\n```"),
            "extraction_log": dg.MetadataValue.json(extraction.as_dict()),
            "loading_report": dg.MetadataValue.json(report.as_dict()),
            "batch_id": report.batch_id,
            "attempts": result.attempts,
        },
    )
    selected_checks = {k.name for k in context.selected_asset_check_keys if k.asset_key == asset.key}
    for name, outcome in _run_checks(selected_checks, asset, source, dest, result.key_range):
        yield dg.AssetCheckResult(asset_key=asset.key, check_name=name, passed=outcome.passed,
                                  description=outcome.description, metadata=outcome.metadata)  # fmt: skip


def _run_checks(selected: set[str], asset: TableAsset, source: RdsSourceResource, dest: object,
                key_range: KeyRange) -> Iterator[tuple[str, object]]:  # fmt: skip
    table = asset.table
    if CHECK_COLUMNS in selected:
        yield CHECK_COLUMNS, columns_check(dest.column_names(table), table)  # type: ignore[attr-defined]
    if CHECK_PRIMARY_KEY in selected and table.primary_key:
        yield CHECK_PRIMARY_KEY, primary_key_check(dest.duplicate_keys(table), table)  # type: ignore[attr-defined]
    if CHECK_ROW_COUNT in selected and table.method == "full_table":
        conn = source.session().connection(table.relation.database)
        yield CHECK_ROW_COUNT, row_count_check(source_count(conn, table, key_range),
                                               dest.count_rows(table, key_range), key_range)  # type: ignore[attr-defined]  # fmt: skip


def build_replica_assets(config: IntegrationConfig, assets: list[TableAsset]) -> list[dg.AssetsDefinition]:
    """One multi_asset per group (source schema); each can run any subset of its tables."""
    by_group: dict[str, list[TableAsset]] = defaultdict(list)
    for asset in assets:
        by_group[asset.group].append(asset)
    definitions = []
    for group, members in sorted(by_group.items()):
        definitions.append(_group_multi_asset(config, group, members))
    return definitions


def _group_multi_asset(config: IntegrationConfig, group: str, members: list[TableAsset]) -> dg.AssetsDefinition:
    by_key = {a.key: a for a in members}

    @dg.multi_asset(
        name=f"rds_sync_{safe_name(group)}",
        specs=[replica_spec(a, config) for a in members],
        check_specs=[spec for a in members for spec in check_specs(a)],
        can_subset=True,
        pool=POOL,
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=31),
        op_tags={"rds_pipeline/group": group},
    )
    def _sync(
        context: dg.AssetExecutionContext, rds_source: RdsSourceResource, rds_destination: RdsDestinationResource
    ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        for key in sorted(context.selected_asset_keys, key=lambda k: k.to_user_string()):
            yield from materialize_table(context, by_key[key], rds_source, rds_destination)

    return _sync
