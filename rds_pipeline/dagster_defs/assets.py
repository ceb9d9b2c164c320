"""The asset factory: every selected table becomes a partitioned asset, built from the cached catalog only.

Tables are grouped per source schema into one ``multi_asset(can_subset=True)`` each (specs may carry their
own partitions), so a 2,000-table selection is a handful of definitions, not thousands. Source tables and
views are external assets upstream of their replicas; a source view depends on the relations it reads.
"""

import datetime as dt
from collections import defaultdict
from collections.abc import Iterator

import dagster as dg

from rds_pipeline.dagster_defs.automation import automation_condition
from rds_pipeline.dagster_defs.execute import (
    TableFailure,
    check_names,
    describe_failure,
    failure,
    partition_keys,
    run_table,
    stops_without_retry,
)
from rds_pipeline.dagster_defs.identity import (
    column_lineage,
    replica_table_name,
    replica_uri,
    source_table_name,
    source_uri,
)
from rds_pipeline.dagster_defs.log_based import CHECK_SLOT, emit_stream, stream, stream_failures
from rds_pipeline.dagster_defs.materializations import record_partitions
from rds_pipeline.dagster_defs.partitions import range_for_keys
from rds_pipeline.dagster_defs.pools import slot_step_pool, source_step_pool
from rds_pipeline.dagster_defs.resources import RdsDestinationResource, RdsSourceResource
from rds_pipeline.dagster_defs.tables import CHECK_REPLICA, TableAsset
from rds_pipeline.dagster_defs.translator import RETRY_POLICY, SOURCE_GROUP, key_part, source_key_for
from rds_pipeline.engine import interrupts
from rds_pipeline.engine.config import IntegrationConfig
from rds_pipeline.engine.replication.plan import Request
from rds_pipeline.engine.selection import SelectedTable
from rds_pipeline.engine.source.catalog import Catalog, Relation


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
        skippable=True,  # a failed table yields nothing; the run reports it and fails after the others
        freshness_policy=dg.FreshnessPolicy.time_window(
            fail_window=dt.timedelta(minutes=2 * asset.frequency.max_minutes_between_runs + 15),
            warn_window=dt.timedelta(minutes=asset.frequency.max_minutes_between_runs + 15),
        ),
        metadata={
            "dagster/column_schema": _column_schema(relation, table.column_names),
            "dagster/table_name": replica_table_name(config, table),
            "dagster/relation_identifier": dest_table,
            "dagster/uri": replica_uri(config, table),
            "dagster/column_lineage": column_lineage(table, source_key_for(relation)),
            "rds_pipeline/source": relation.id,
            "rds_pipeline/replication_method": table.method,
            "rds_pipeline/replication_key": table.replication_key or "",
            "rds_pipeline/primary_key": ", ".join(table.primary_key),
            "rds_pipeline/partitioning": asset.plan.kind,
            "rds_pipeline/schedule": f"{asset.frequency.description} ({asset.frequency.timezone})",
        },
        automation_condition=automation_condition(asset) if config.automation == "declarative" else None,
        owners=list(table.owners if table.owners is not None else config.owners),
        tags={**config.tags, **table.tags, "rds_pipeline/method": table.method},
    )


def source_specs(catalog: Catalog, selection: list[SelectedTable], config: IntegrationConfig) -> list[dg.AssetSpec]:
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
                deps=[source_key_for(by_id[r]) for r in reads if r in by_id],
                description=relation.comment or f"Source {relation.kind.replace('_', ' ')} {relation.id}",
                group_name=SOURCE_GROUP,
                kinds={"postgres"},
                metadata={
                    "dagster/column_schema": _column_schema(relation),
                    "dagster/table_name": source_table_name(relation),
                    "dagster/uri": source_uri(config, relation),
                    "rds_pipeline/source": relation.id,
                    "rds_pipeline/row_estimate": relation.row_estimate if relation.row_estimate is not None else -1,
                    "rds_pipeline/size_bytes": relation.size_bytes if relation.size_bytes is not None else -1,
                },
            )
        )
    return sorted(specs, key=lambda s: s.key.to_user_string())


def check_specs(asset: TableAsset) -> list[dg.AssetCheckSpec]:
    if asset.table.method == "log_based":
        return [
            dg.AssetCheckSpec(
                CHECK_REPLICA,
                asset=asset.key,
                description="The replica matches the source: its columns match the catalog, its primary key is unique",
            ),
            dg.AssetCheckSpec(
                CHECK_SLOT,
                asset=asset.key,
                description="The slot's retained WAL and lag are within the thresholds of `log_based:`",
            ),
        ]
    return [dg.AssetCheckSpec(name, asset=asset.key, description=text) for name, text in check_names(asset)]


def request_for_context(context: dg.AssetExecutionContext, asset: TableAsset, keys: list[str]) -> Request:
    """A UI partition or a backfill's range asks for that range; a table with one partition (``all``) asks
    to catch up (full table: everything; key-based: from the bookmark)."""
    if asset.plan.kind == "whole":
        return Request.catch_up()
    if context.has_partition_key_range:
        first, last = context.partition_key_range.start, context.partition_key_range.end
    else:
        first = last = context.partition_key
    return Request.range(range_for_keys(asset.plan, first, last, keys))


def materialize_table(
    context: dg.AssetExecutionContext, asset: TableAsset, source: RdsSourceResource, destination: RdsDestinationResource
) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
    """Sync one table's partition(s) through the shared path; report metadata and run the selected checks."""
    keys = partition_keys(asset, context.instance)
    selected = {k.name for k in context.selected_asset_check_keys if k.asset_key == asset.key}
    run = run_table(
        asset, request_for_context(context, asset, keys), source, destination, context.instance, checks=selected
    )
    report = run.result.report
    context.log.info(
        f"{asset.table.id}: {report.rows_inserted} inserted, {report.rows_updated} updated, "
        f"{report.rows_deleted} deleted in {report.seconds:.2f}s ({run.result.key_range.describe()}; "
        f"{run.result.plan.reason})"
    )
    for warning in report.warnings:
        context.log.warning(f"{asset.table.id}: {warning}")
    own = set(context.partition_keys) if context.has_partition_key or context.has_partition_key_range else set()
    extra = [p for p in run.partitions if p not in own]
    if extra:  # the latest window reached back to the bookmark: record what else it brought up to date
        record_partitions(context, asset.key, extra, run.metadata, with_counts=False)
    yield dg.MaterializeResult(asset_key=asset.key, metadata=run.metadata)
    for name, outcome in run.checks:
        yield dg.AssetCheckResult(
            asset_key=asset.key,
            check_name=name,
            passed=outcome.passed,
            description=outcome.description,
            metadata=outcome.metadata,
        )


def build_replica_assets(config: IntegrationConfig, assets: list[TableAsset]) -> list[dg.AssetsDefinition]:
    """One multi_asset per group (source schema); each can run any subset of its tables. Log-based tables share
    one more, reading their slot (see ``log_based.py``)."""
    by_group: dict[str, list[TableAsset]] = defaultdict(list)
    for asset in assets:
        if asset.table.method != "log_based":
            by_group[asset.group].append(asset)
    logged = [a for a in assets if a.table.method == "log_based"]
    definitions = [stream_multi_asset(config, logged)] if logged else []
    for group, members in sorted(by_group.items()):
        definitions.append(_group_multi_asset(config, group, members))
    return definitions


def stream_multi_asset(config: IntegrationConfig, members: list[TableAsset]) -> dg.AssetsDefinition:
    """Every log-based table: a run of any of them reads the slot once and brings them all up to date (the
    others are recorded as materialized too). One step per slot at a time (its own pool)."""
    by_key = {a.key: a for a in members}

    @dg.multi_asset(
        name=f"rds_stream_{key_part(config.slot_name)}",
        specs=[replica_spec(a, config) for a in members],
        check_specs=[spec for a in members for spec in check_specs(a)],
        can_subset=True,
        pool=slot_step_pool(config),
        retry_policy=RETRY_POLICY,
        backfill_policy=dg.BackfillPolicy.single_run(),
        op_tags={"rds_pipeline/slot": config.slot_name},
    )
    def _stream(
        context: dg.AssetExecutionContext, rds_source: RdsSourceResource, rds_destination: RdsDestinationResource
    ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        selected = [by_key[k] for k in context.selected_asset_keys]
        ranges = {}
        if context.has_partition_key or context.has_partition_key_range:
            for asset in selected:
                keys = partition_keys(asset, context.instance)
                first, last = context.partition_key_range.start, context.partition_key_range.end
                if asset.plan.kind != "whole" and (first, last) != (keys[-1], keys[-1]):
                    ranges[asset.table.id] = range_for_keys(asset.plan, first, last, keys)  # copy them again
        with stops_without_retry():
            run = stream(members, ranges, rds_source, rds_destination, context.instance)
        yield from emit_stream(context, run, {a.key for a in selected})
        failures = stream_failures(context, run)
        if failures:
            raise failure(failures, len(run.runs))

    return _stream


def _group_multi_asset(config: IntegrationConfig, group: str, members: list[TableAsset]) -> dg.AssetsDefinition:
    by_key = {a.key: a for a in members}

    @dg.multi_asset(
        name=f"rds_sync_{group}",
        specs=[replica_spec(a, config) for a in members],
        check_specs=[spec for a in members for spec in check_specs(a)],
        can_subset=True,
        pool=source_step_pool(config),
        retry_policy=RETRY_POLICY,
        backfill_policy=dg.BackfillPolicy.multi_run(max_partitions_per_run=31),
        op_tags={"rds_pipeline/group": group},
    )
    def _sync(
        context: dg.AssetExecutionContext, rds_source: RdsSourceResource, rds_destination: RdsDestinationResource
    ) -> Iterator[dg.MaterializeResult | dg.AssetCheckResult]:
        failures: list[TableFailure] = []
        synced = 0
        with stops_without_retry():
            for key in sorted(context.selected_asset_keys, key=lambda k: k.to_user_string()):
                asset = by_key[key]
                try:
                    yield from materialize_table(context, asset, rds_source, rds_destination)
                    synced += 1
                except Exception as exc:  # noqa: BLE001 - one table's failure never stops another
                    interrupts.checkpoint()  # unless it was a stop request's doing: then no other table starts
                    failures.append(describe_failure(asset, exc))
                    context.log.error(f"FAILED {failures[-1].line()}")
        if failures:
            raise failure(failures, synced)

    return _sync
