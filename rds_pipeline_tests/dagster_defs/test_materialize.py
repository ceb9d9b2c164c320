"""Materializations, schedules, sensors and jobs against real servers and a real Dagster instance."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg
import pytest

from rds_pipeline.dagster_defs.pools import duckdb_pool
from rds_pipeline.engine.replication.sync import sync_table
from rds_pipeline.engine.source.session import SourceSession
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.dagster_defs.project import Project, key, make_project

TODAY = dt.datetime.now(dt.UTC).date()
DDL = f"""
CREATE TABLE events (id int PRIMARY KEY, ts timestamptz NOT NULL, v text);
INSERT INTO events SELECT g, timestamptz '{TODAY - dt.timedelta(days=3)} 00:00+00' + g * interval '1 hour', 'e' || g
FROM generate_series(0, 71) g;
CREATE INDEX ON events (ts);
CREATE TABLE seq_items (id int PRIMARY KEY, v text);
INSERT INTO seq_items SELECT g, 's' || g FROM generate_series(1, 2500) g;
CREATE TABLE chunky (id int PRIMARY KEY, v text);
INSERT INTO chunky SELECT g, 'c' || g FROM generate_series(1, 3000) g;
CREATE VIEW recent AS SELECT id, v FROM events WHERE id < 10;
ANALYZE;
"""
TABLES = [
    {"name": "public.events", "method": "key_based", "replication_key": "ts"},
    {"name": "public.seq_items", "method": "key_based", "replication_key": "id", "chunk_rows": 1000},
    {"name": "public.chunky", "method": "full_table", "chunk_rows": 1000},
    {"name": "public.recent"},
]


@pytest.fixture
def project(pg18: LocalPostgres, tmp_path: Path) -> Project:
    return make_project(pg18, tmp_path, TABLES, ddl=DDL)


def materialize(
    project: Project,
    instance: dg.DagsterInstance,
    name: str,
    partition: str | None = None,
    tags: dict[str, str] | None = None,
) -> dg.ExecuteInProcessResult:
    defs = project.defs()
    assets = [a for a in defs.assets if isinstance(a, (dg.AssetsDefinition, dg.AssetSpec))]
    return dg.materialize(
        assets, selection=[key(name)], partition_key=partition, instance=instance, resources=defs.resources, tags=tags
    )


def replica_ids(project: Project, table: str) -> list[int]:
    dest = project.destination()
    try:
        return [r[0] for r in dest.conn.execute(f'SELECT id FROM dagster_test."{table}" ORDER BY id').fetchall()]
    finally:
        dest.close()


def test_each_partition_kind_materializes_its_range(project: Project, instance: dg.DagsterInstance) -> None:
    defs = project.defs()
    graph = defs.resolve_asset_graph()
    # time windows (daily, from the discovered minimum): the middle day holds exactly its 24 hours
    day_keys = graph.get(key("events")).partitions_def.get_partition_keys()
    assert day_keys[0] == str(TODAY - dt.timedelta(days=3)) and day_keys[-1] == str(TODAY)
    result = materialize(project, instance, "events", day_keys[1])
    assert result.success
    assert replica_ids(project, "events") == list(range(24, 48))
    event = result.get_asset_materialization_events()[0].event_specific_data.materialization
    assert event.metadata["dagster/row_count"].value == 24 and event.metadata["rows_inserted"].value == 24
    # a middle window of a table never synced: copied, but the bookmark waits for the earlier keys (a gap)
    assert "ts" in event.metadata["query"].value and event.metadata["bookmark"].value == ""
    [check] = result.get_asset_check_evaluations()  # one check per table, in parts
    assert (check.check_name, check.passed) == ("replica_matches_source", True)
    assert check.metadata["failed"].value == "none" and check.metadata["primary_key/duplicate_keys"].value == 0
    assert "primary_key/enforced_by" not in check.metadata  # a DuckDB replica has no key index: it was scanned
    assert check.description.startswith("columns: ") and "; primary_key: 0 duplicated" in check.description

    # integer key ranges: the sensor adds them as max(key) grows, then one range materializes
    sensor = defs.get_sensor_def("rds_key_range_sensor")
    with dg.build_sensor_context(instance=instance, resources=defs.resources, definitions=defs) as context:
        sensor_result = sensor(context)
    [request] = sensor_result.dynamic_partitions_requests
    assert request.partition_keys == ["0..1000", "1000..2000", "2000..3000"]
    instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    assert materialize(project, instance, "seq_items", "1000..2000").success
    assert replica_ids(project, "seq_items") == list(range(1000, 2000))

    # full-table chunks from discovery statistics: a middle chunk is replaced alone
    chunk_keys = graph.get(key("chunky")).partitions_def.get_partition_keys()
    assert chunk_keys == ["..1001", "1001..2001", "2001.."]
    result = materialize(project, instance, "chunky", "1001..2001")
    assert replica_ids(project, "chunky") == list(range(1001, 2001))
    checks = {
        e.check_name: (e.passed, e.metadata["row_count/source_rows"].value)
        for e in result.get_asset_check_evaluations()
    }
    assert checks == {"replica_matches_source": (True, 1000)}

    # a view: one partition
    assert materialize(project, instance, "recent", "all").success
    assert replica_ids(project, "recent") == list(range(10))


def test_backfill_of_time_windows_equals_a_full_sync(project: Project, instance: dg.DagsterInstance) -> None:
    graph = project.defs().resolve_asset_graph()
    for partition in graph.get(key("events")).partitions_def.get_partition_keys():
        assert materialize(project, instance, "events", partition).success
    backfilled = replica_ids(project, "events")
    # a range run (the backfill policy's unit) over all windows gives the same
    keys = graph.get(key("events")).partitions_def.get_partition_keys()
    assert materialize(
        project,
        instance,
        "events",
        tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]},
    ).success
    # the engine's unpartitioned full sync, into a second destination, is the reference
    table = project.table("public.events")
    full = make_project(project.server, project.path.parent / "full", TABLES, database=project.database)
    dest = full.destination()
    with SourceSession(full.config.source) as session:
        sync_table(session, dest, table)
    dest.close()
    assert backfilled == replica_ids(full, "events") == list(range(72)) == replica_ids(project, "events")


def tables_of(request: dg.RunRequest) -> list[str]:
    return request.run_config["ops"]["pick_tables"]["config"]["tables"]


def test_schedule_tick_launches_sync_all_for_its_tables(project: Project, instance: dg.DagsterInstance) -> None:
    defs = project.defs()
    [schedule] = defs.schedules
    assert schedule.name == "rds_sync_every_1h_utc" and schedule.cron_schedule == "0 * * * *"
    assert schedule.execution_timezone == "UTC" and schedule.job_name == "sync_all"
    context = dg.build_schedule_context(
        instance=instance, scheduled_execution_time=dt.datetime.now(dt.UTC), repository_def=defs.get_repository_def()
    )
    [request] = schedule.evaluate_tick(context).run_requests
    assert sorted(tables_of(request)) == sorted(
        f"{project.database}.public.{t}" for t in ("events", "seq_items", "chunky", "recent")
    )
    # the tick's run, executed: every table catches up (never synced: its whole history), with its checks
    keys = defs.resolve_asset_graph().get(key("events")).partitions_def.get_partition_keys()  # before: see below
    job = defs.resolve_job_def("sync_all")
    result = job.execute_in_process(run_config=request.run_config, instance=instance)
    assert result.success
    # the tables went in two buckets, one step each, each step in a slot of the DuckDB file's writer pool
    steps = {e.step_key for e in result.all_events if e.event_type_value == "STEP_SUCCESS"}
    assert {"sync_tables[bucket_0]", "sync_tables[bucket_1]"} <= steps
    assert job.graph.node_named("sync_tables").definition.pool == duckdb_pool(project.config)
    assert replica_ids(project, "events") == list(range(72)) and replica_ids(project, "chunky") == list(range(1, 3001))
    # every covered window shows (a day that starts while the run goes is covered too: hence >=)
    assert instance.get_materialized_partitions(key("events")) >= set(keys)
    assert instance.get_materialized_partitions(key("chunky")) == {"..1001", "1001..2001", "2001.."}
    checks = {e.asset_key.path[-1]: e for e in result.get_asset_check_evaluations()}
    assert all(e.passed and e.check_name == "replica_matches_source" for e in checks.values()) and len(checks) == 4
    assert "row_count/destination_rows" in checks["chunky"].metadata
    assert "primary_key/duplicate_keys" in checks["events"].metadata
    assert checks["recent"].metadata["columns/missing_columns"].value == "none"
    # the same table materialized from the UI gets the same checks and the same metadata keys
    ui = materialize(project, instance, "chunky", "1001..2001")
    tick_meta = {
        e.event_specific_data.materialization.partition: e.event_specific_data.materialization.metadata
        for e in result.get_asset_materialization_events()
        if e.asset_key == key("chunky")
    }
    ui_meta = ui.get_asset_materialization_events()[0].event_specific_data.materialization.metadata
    assert set(tick_meta["2001.."]) == set(ui_meta)
    [ui_check] = ui.get_asset_check_evaluations()
    assert ui_check.check_name == "replica_matches_source"
    assert set(ui_check.metadata) == set(checks["chunky"].metadata)  # the same parts, whoever triggers it


def test_new_data_sensor_asks_only_for_tables_with_new_rows(project: Project, instance: dg.DagsterInstance) -> None:
    defs = project.defs()
    keys = defs.resolve_asset_graph().get(key("events")).partitions_def.get_partition_keys()
    materialize(
        project,
        instance,
        "events",
        tags={"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]},
    )
    sensor = defs.get_sensor_def("rds_new_data_sensor")

    def evaluate(cursor: str | None = None) -> dg.SensorResult:
        with dg.build_sensor_context(
            instance=instance, resources=defs.resources, definitions=defs, cursor=cursor
        ) as context:
            return sensor(context)

    first = evaluate()
    [request] = first.run_requests
    assert tables_of(request) == [f"{project.database}.public.seq_items"]  # events is up to date
    project.sql(f"INSERT INTO events VALUES (1000, '{TODAY} 23:00+00', 'new')")
    second = evaluate(first.cursor)
    [request] = second.run_requests
    assert tables_of(request) == [f"{project.database}.public.events"]
    assert request.job_name == "sync_all"
    third = evaluate(second.cursor)  # nothing new since: no duplicate request
    assert not third.run_requests


def test_drift_sensor_fails_the_column_check(project: Project, instance: dg.DagsterInstance) -> None:
    defs = project.defs()
    project.sql("ALTER TABLE chunky ADD COLUMN added_later int")
    with dg.build_sensor_context(instance=instance, resources=defs.resources, definitions=defs) as context:
        result = defs.get_sensor_def("rds_drift_sensor")(context)
    evaluations = {e.asset_key.path[-1]: e for e in result.asset_events}
    assert evaluations["chunky"].passed is False
    assert "column 'added_later' (integer) added" in evaluations["chunky"].metadata["drift"].value
    assert "events" not in evaluations  # no drift: the next sync evaluates its check whole


def test_reset_job_resets_then_rematerializes(project: Project, instance: dg.DagsterInstance) -> None:
    defs = project.defs()
    job = defs.resolve_job_def("reset_table")
    assert materialize(project, instance, "chunky", "1001..2001").success
    project.sql("DELETE FROM chunky WHERE id > 2990")
    result = job.execute_in_process(
        run_config={"ops": {"reset_and_resync": {"config": {"table": "public.chunky"}}}}, instance=instance
    )
    assert result.success
    assert replica_ids(project, "chunky") == list(range(1, 2991))
    partitions = {e.event_specific_data.materialization.partition for e in result.get_asset_materialization_events()}
    assert partitions == {"..1001", "1001..2001", "2001.."}


def test_sync_all_job_runs_what_a_tick_would(project: Project, instance: dg.DagsterInstance) -> None:
    from rds_pipeline.dagster_defs.run import run_sync

    outcome = run_sync(project.path, instance=instance)
    assert outcome.success and not outcome.failures
    assert {r["destination_table"]: r["rows_inserted"] for r in outcome.rows} == {
        "dagster_test/events": 72,
        "dagster_test/seq_items": 2500,
        "dagster_test/chunky": 3000,
        "dagster_test/recent": 10,
    }
    outcome = run_sync(project.path, instance=instance)  # a second tick: from the bookmarks, chunks again
    rows = {r["destination_table"]: r for r in outcome.rows}
    assert outcome.success and rows["dagster_test/chunky"]["rows_inserted"] == 3000
    assert rows["dagster_test/events"]["rows_inserted"] == 0 and rows["dagster_test/events"]["rows_updated"] == 1
