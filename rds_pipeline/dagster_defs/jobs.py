"""Jobs: sync everything (what a schedule tick does), sync a group, and reset a table then re-materialize all
its partitions. Schedules and sensors launch sync_all with the tables they pick, so a 2,000-table selection
needs three jobs, not one per partitioning. (Single partitions and backfills are launched from the UI.)"""

from collections.abc import Iterator

import dagster as dg

from rds_pipeline.dagster_defs.assets import TableAsset
from rds_pipeline.dagster_defs.resources import RdsDestinationResource, RdsSourceResource
from rds_pipeline.dagster_defs.ticks import (
    PartitionSpan,
    partition_keys,
    span_key_range,
    span_keys,
    tick_spans,
)
from rds_pipeline.dagster_defs.translator import POOL
from rds_pipeline.engine.replication.sync import sync_table

SYNC_ALL = "sync_all"


def tick_run_request(tables: list[TableAsset], run_key: str | None, reason: str) -> dg.RunRequest:
    """One run of sync_all over ``tables``: what a tick does for each of them."""
    return dg.RunRequest(
        run_key=run_key,
        job_name=SYNC_ALL,
        run_config={"ops": {"sync_tables": {"config": {"tables": [a.table.id for a in tables]}}}},
        tags={"rds_pipeline/reason": reason, "rds_pipeline/tables": str(len(tables))},
    )


def sync_spans(
    context: dg.OpExecutionContext,
    asset: TableAsset,
    spans: list[PartitionSpan],
    source: RdsSourceResource,
    destination: RdsDestinationResource,
) -> Iterator[dg.AssetMaterialization]:
    """Run the engine over each span and record one materialization per partition covered."""
    keys = partition_keys(asset, context.instance)
    for span in spans:
        key_range = span_key_range(asset, span, keys) if asset.plan.kind != "whole" else None
        result = sync_table(source.session(), destination.get(), asset.table, key_range, lookback=asset.table.lookback)
        report = result.report
        context.log.info(f"{asset.table.id} [{span.first}..{span.last}]: {report.rows_inserted} inserted, "
                         f"{report.rows_updated} updated, {report.rows_deleted} deleted")  # fmt: skip
        covered = span_keys(keys, span)
        for index, partition in enumerate(covered):
            metadata: dict[str, object] = {"batch_id": report.batch_id, "key_range": result.key_range.describe()}
            if index == len(covered) - 1:  # the counts belong to the whole span: report them once
                metadata.update({
                    "dagster/row_count": result.extraction.rows, "rows_inserted": report.rows_inserted,
                    "rows_updated": report.rows_updated, "rows_deleted": report.rows_deleted,
                    "bytes": result.extraction.bytes, "duration_seconds": round(report.seconds, 3),
                    "bookmark": result.extraction.bookmark_after or "",
                    "query": dg.MetadataValue.md(f"```sql\n{result.extraction.query}\n```"),
                })  # fmt: skip
            yield dg.AssetMaterialization(asset_key=asset.key, partition=partition, metadata=metadata)


def add_key_ranges(instance: dg.DagsterInstance, dynamic: list[TableAsset], source: RdsSourceResource) -> int:
    """Add the key-range partitions integer-keyed tables need up to their current max(key)."""
    if not dynamic:
        return 0
    from rds_pipeline.dagster_defs.partitions import dynamic_partitions_name, integer_range_keys
    from rds_pipeline.engine.source.probe import probe_max_keys

    added = 0
    for asset in dynamic:
        conn = source.session().connection(asset.table.relation.database)
        probe = probe_max_keys(conn, [asset.table], {}).get(asset.table.id)
        if probe is None or probe.max_key is None:
            continue
        name = dynamic_partitions_name(asset.table)
        keys = integer_range_keys(
            list(instance.get_dynamic_partitions(name)), int(probe.max_key), asset.table.chunk_rows
        )
        if keys:
            instance.add_dynamic_partitions(name, keys)
            added += len(keys)
    return added


class GroupConfig(dg.Config):
    group: str = ""  # empty: every group
    tables: list[str] = []  # empty: every table (of the group)


class ResetConfig(dg.Config):
    table: str  # schema.table, database.schema.table, or the destination table name


def build_op_jobs(assets: list[TableAsset]) -> list[dg.JobDefinition]:
    by_id = {a.table.id: a for a in assets}

    def find(name: str) -> TableAsset:
        for asset in assets:
            relation = asset.table.relation
            if name in (asset.table.id, relation.qualified_name, asset.table.destination_table):
                return asset
        raise dg.Failure(f"{name} is not a selected table. Selected: {', '.join(sorted(by_id))}")

    @dg.op(pool=POOL, out=dg.Out(dg.Nothing))
    def sync_tables(context: dg.OpExecutionContext, config: GroupConfig, rds_source: RdsSourceResource,
                    rds_destination: RdsDestinationResource) -> Iterator[dg.AssetMaterialization]:  # fmt: skip
        """What one schedule tick does, for every table (or one group): historical first, then incremental."""
        chosen = [a for a in assets if not config.group or a.group == config.group]
        if config.group and not chosen:
            raise dg.Failure(f"no group {config.group!r}; groups: {', '.join(sorted({a.group for a in assets}))}")
        if config.tables:
            chosen = [find(name) for name in config.tables]
        add_key_ranges(context.instance, [a for a in chosen if a.plan.kind == "dynamic"], rds_source)
        for asset in chosen:
            yield from sync_spans(context, asset, tick_spans(asset, context.instance), rds_source, rds_destination)

    @dg.op(pool=POOL, out=dg.Out(dg.Nothing))
    def reset_and_resync(context: dg.OpExecutionContext, config: ResetConfig, rds_source: RdsSourceResource,
                         rds_destination: RdsDestinationResource) -> Iterator[dg.AssetMaterialization]:  # fmt: skip
        """Clear the bookmark and data, then re-materialize every partition as one historical sync."""
        asset = find(config.table)
        rds_destination.get().reset(asset.table)
        context.log.info(f"{asset.table.id}: bookmark cleared and destination table dropped")
        yield from sync_spans(context, asset, tick_spans(asset, context.instance, history=True), rds_source,
                              rds_destination)  # fmt: skip

    @dg.job(name=SYNC_ALL, description="Replicate every selected table (what a schedule tick does).")
    def sync_all() -> None:
        sync_tables()

    @dg.job(name="sync_group", description="Replicate one group (source schema); config: group.")
    def sync_group() -> None:
        sync_tables()

    @dg.job(name="reset_table", description="Reset one table (bookmark and data), then re-materialize it.")
    def reset_table() -> None:
        reset_and_resync()

    return [sync_all, sync_group, reset_table]
