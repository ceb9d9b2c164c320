"""Sensors: new data (max key past the bookmark), integer key ranges (dynamic partitions), and drift."""

import json
from collections import defaultdict

import dagster as dg

from rds_pipeline.dagster_defs.jobs import tick_run_request
from rds_pipeline.dagster_defs.partitions import integer_range_keys
from rds_pipeline.dagster_defs.resources import RdsDestinationResource, RdsSourceResource
from rds_pipeline.dagster_defs.tables import CHECK_REPLICA, TableAsset
from rds_pipeline.dagster_defs.translator import dynamic_partitions_name
from rds_pipeline.engine.source.catalog import Catalog
from rds_pipeline.engine.source.drift import check_drift
from rds_pipeline.engine.source.probe import KeyProbe, probe_max_keys


def _probe(
    assets: list[TableAsset], source: RdsSourceResource, bookmarks: dict[str, str | None]
) -> dict[str, KeyProbe]:
    """One source session per tick, one statement per database."""
    by_database: dict[str, list[TableAsset]] = defaultdict(list)
    for asset in assets:
        by_database[asset.table.relation.database].append(asset)
    try:
        found: dict[str, KeyProbe] = {}
        for database, members in by_database.items():
            conn = source.session().connection(database)
            found.update(probe_max_keys(conn, [a.table for a in members], bookmarks))
        return found
    finally:
        source.close()


def build_sensors(assets: list[TableAsset], sync_all: dg.JobDefinition, catalog: Catalog) -> list[dg.SensorDefinition]:
    """New data for key-based tables, key ranges for integer keys (when there are any), and drift."""
    key_based = [a for a in assets if a.table.method == "key_based"]
    dynamic = [a for a in key_based if a.plan.kind == "dynamic"]
    return [
        _new_data_sensor(key_based, sync_all),
        *([_key_range_sensor(dynamic)] if dynamic else []),
        _drift_sensor(assets, catalog),
    ]


def _new_data_sensor(key_based: list[TableAsset], sync_all: dg.JobDefinition) -> dg.SensorDefinition:
    @dg.sensor(
        name="rds_new_data_sensor",
        job=sync_all,
        minimum_interval_seconds=300,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description="Requests runs only for key-based tables whose max(replication key) passed the bookmark.",
    )
    def new_data(
        context: dg.SensorEvaluationContext, rds_source: RdsSourceResource, rds_destination: RdsDestinationResource
    ) -> dg.SensorResult:
        seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        try:
            bookmarks = rds_destination.get().read_bookmarks()
        finally:
            rds_destination.close()
        probes = _probe(key_based, rds_source, bookmarks)
        fresh = []
        for asset in key_based:
            probe = probes.get(asset.table.id)
            if probe is None or not probe.newer or probe.max_key is None or seen.get(asset.table.id) == probe.max_key:
                continue
            seen[asset.table.id] = probe.max_key
            fresh.append(asset)
        cursor = json.dumps(seen, sort_keys=True)
        if not fresh:
            return dg.SensorResult(skip_reason="no table has rows past its bookmark", cursor=cursor)
        run_key = "new-data:" + ",".join(f"{a.table.id}={seen[a.table.id]}" for a in fresh)
        return dg.SensorResult(run_requests=[tick_run_request(fresh, run_key, "new data")], cursor=cursor)

    return new_data


def _key_range_sensor(dynamic: list[TableAsset]) -> dg.SensorDefinition:
    @dg.sensor(
        name="rds_key_range_sensor",
        minimum_interval_seconds=300,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Adds key-range partitions to integer-keyed tables as max(key) grows.",
    )
    def key_ranges(context: dg.SensorEvaluationContext, rds_source: RdsSourceResource) -> dg.SensorResult:
        probes = _probe(dynamic, rds_source, {})
        adds = []
        for asset in dynamic:
            probe = probes.get(asset.table.id)
            if probe is None or probe.max_key is None:
                continue
            name = dynamic_partitions_name(asset.table)
            existing = list(context.instance.get_dynamic_partitions(name))
            new_keys = integer_range_keys(existing, int(probe.max_key), asset.table.chunk_rows)
            if new_keys:
                adds.append(dg.AddDynamicPartitionsRequest(name, new_keys))
        if not adds:
            return dg.SensorResult(skip_reason="no new key ranges")
        return dg.SensorResult(dynamic_partitions_requests=adds)

    return key_ranges


def _drift_sensor(assets: list[TableAsset], catalog: Catalog) -> dg.SensorDefinition:
    @dg.sensor(
        name="rds_drift_sensor",
        minimum_interval_seconds=6 * 3600,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description="Compares the live source with the catalog; reports drift as a failed replica check. "
        "It never changes definitions: run `rds-pipeline discover` to accept a change.",
    )
    def drift(context: dg.SensorEvaluationContext, rds_source: RdsSourceResource) -> dg.SensorResult:
        config = rds_source.integration()
        report = check_drift(config.source, catalog, only=[a.table.id for a in assets])
        events = []
        for asset in assets:
            changes = report.for_relation(asset.table.id)
            if not changes:  # no drift says nothing of the rest of the check: the next sync evaluates it whole
                continue
            events.append(
                dg.AssetCheckEvaluation(
                    asset_key=asset.key,
                    check_name=CHECK_REPLICA,
                    passed=False,
                    description="FAILED columns: the source changed since discovery",
                    metadata={
                        "drift": "; ".join(c.detail for c in changes),
                        "fix": "run `rds-pipeline discover`, review the catalog diff, redeploy",
                    },
                )
            )
        for change in report.changes:
            context.log.warning(f"drift: {change}")
        return dg.SensorResult(asset_events=events)

    return drift
