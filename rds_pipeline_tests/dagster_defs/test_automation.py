"""`automation: declarative`: each table's frequency as an AutomationCondition, evaluated by Dagster's own
evaluator over time: nothing before a cron tick, one request after any number of missed ticks (an outage, a
late start), the latest partition of incremental tables (which reaches back to the bookmark) and every chunk of
full-table ones; materializing what it asks after an outage leaves the replica equal to the source."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg
import pytest
import yaml

from rds_pipeline.dagster_defs.automation import SENSOR
from rds_pipeline.engine.errors import ConfigError
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.dagster_defs.project import Project, key, make_project
from rds_pipeline_tests.dagster_defs.test_timeline import materialize, replica_rows, source_rows

DDL = """
CREATE TABLE ev (id int PRIMARY KEY, ts timestamptz NOT NULL, v text);
INSERT INTO ev SELECT g, now() - interval '10 hours' + g * interval '10 minutes', 'old' FROM generate_series(1, 40) g;
CREATE TABLE seq (id int PRIMARY KEY, v text);
INSERT INTO seq SELECT g, 's' || g FROM generate_series(1, 2500) g;
CREATE TABLE full_t (id int PRIMARY KEY, v text);
INSERT INTO full_t SELECT g, 'f' || g FROM generate_series(1, 3000) g;
ANALYZE;
"""
TABLES = [
    {"name": "public.ev", "method": "key_based", "replication_key": "ts", "granularity": "hourly"},
    {"name": "public.seq", "method": "key_based", "replication_key": "id", "chunk_rows": 1000},
    {"name": "public.full_t", "method": "full_table", "chunk_rows": 1000},
]


def requested(result: dg.EvaluateAutomationConditionsResult) -> dict[str, set[str]]:
    """The partitions the evaluation asked for, per table."""
    asked = {name: result.get_requested_partitions(key(name)) for name in ("ev", "seq", "full_t")}
    return {name: {p for p in partitions if p} for name, partitions in asked.items() if partitions}


def _pdef(defs: dg.Definitions, asset_key: dg.AssetKey) -> dg.PartitionsDefinition:
    return defs.resolve_asset_graph().get(asset_key).partitions_def


def test_declarative_automation_catches_up_after_missed_ticks(
    pg18: LocalPostgres, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    project: Project = make_project(pg18, tmp_path, TABLES, ddl=DDL, automation="declarative")
    defs = project.defs()
    assert not list(defs.schedules or [])  # no schedules: the conditions drive the syncs
    sensor = defs.get_sensor_def(SENSOR)
    assert isinstance(sensor, dg.AutomationConditionSensorDefinition)
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    graph = defs.resolve_asset_graph()
    for name in ("ev", "seq", "full_t"):
        assert graph.get(key(name)).automation_condition is not None
    # the integer key's ranges exist once the key-range sensor has added them
    with dg.build_sensor_context(instance=instance, resources=defs.resources, definitions=defs) as context:
        [add] = defs.get_sensor_def("rds_key_range_sensor")(context).dynamic_partitions_requests
    instance.add_dynamic_partitions(add.partitions_def_name, list(add.partition_keys))

    now = dt.datetime.now(dt.UTC)
    first = dg.evaluate_automation_conditions(defs=defs, instance=instance, evaluation_time=now - dt.timedelta(hours=3))
    assert first.total_requested == 0  # no tick has passed yet
    # three hourly ticks missed (a daemon that was down, a late start): one request, not three
    late = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=first.cursor, evaluation_time=now)
    asked = requested(late)
    # what the daemon stores between evaluations (the cursor, each evaluation) round-trips through serdes
    from dagster._serdes import deserialize_value, serialize_value

    assert deserialize_value(serialize_value(late.cursor)) == late.cursor
    for evaluation in late.results:
        assert serialize_value(evaluation.serializable_evaluation)
    ev_last = _pdef(defs, key("ev")).get_last_partition_key()
    seq_keys = instance.get_dynamic_partitions(add.partitions_def_name)
    assert asked["ev"] == {ev_last} and asked["seq"] == {seq_keys[-1]}
    assert asked["full_t"] == set(_pdef(defs, key("full_t")).get_partition_keys())  # every chunk, each replaced
    for name, partitions in asked.items():
        for partition in sorted(partitions):
            assert materialize(project, instance, name, partition)
    for name in ("ev", "seq", "full_t"):  # never synced: the latest partition brought the whole history
        assert replica_rows(project, name) == source_rows(project, name), name
    # the same moment again: no tick passed, nothing asked
    again = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, cursor=late.cursor, evaluation_time=now + dt.timedelta(seconds=1)
    )
    assert again.total_requested == 0

    # an outage: rows keep arriving, in windows that are no longer the latest one, and past the top key range
    project.sql("INSERT INTO ev SELECT 100 + g, now() - g * interval '25 minutes', 'new' FROM generate_series(0, 5) g")
    project.sql("INSERT INTO seq SELECT g, 'n' || g FROM generate_series(2501, 2600) g")
    project.sql("UPDATE full_t SET v = 'changed' WHERE id % 500 = 0")
    after = dg.evaluate_automation_conditions(
        defs=defs, instance=instance, cursor=again.cursor, evaluation_time=now + dt.timedelta(hours=2, minutes=1)
    )
    asked = requested(after)
    # the latest window at that time (it does not exist yet in real time: we materialize today's latest, the
    # same open-ended window), the latest key range, every chunk
    later = now + dt.timedelta(hours=2, minutes=1)
    assert asked["ev"] == {_pdef(defs, key("ev")).get_partition_key_for_timestamp(later.timestamp())}
    assert asked["seq"] == {seq_keys[-1]} and len(asked["full_t"]) == len(
        _pdef(defs, key("full_t")).get_partition_keys()
    )
    assert materialize(project, instance, "ev", _pdef(defs, key("ev")).get_last_partition_key())
    assert materialize(project, instance, "seq", seq_keys[-1])
    for partition in sorted(asked["full_t"]):
        assert materialize(project, instance, "full_t", partition)
    for name in ("ev", "seq", "full_t"):
        assert replica_rows(project, name) == source_rows(project, name), name
    # every window the catch-up covered is recorded
    windows = {
        _pdef(defs, key("ev")).get_partition_key_for_timestamp(float(t))
        for t in project.sql("SELECT extract(epoch FROM ts) FROM ev WHERE v = 'new'").split()
    }
    assert windows <= instance.get_materialized_partitions(key("ev"))


def test_automation_setting_is_checked(pg18: LocalPostgres, tmp_path: Path) -> None:
    project = make_project(pg18, tmp_path, TABLES[2:], ddl="CREATE TABLE full_t (id int PRIMARY KEY, v text)")
    assert project.defs().schedules  # the default: schedules
    data = yaml.safe_load(project.path.read_text())
    data["automation"] = "cron"
    project.path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=r"automation: 'cron' is not one of schedules, declarative"):
        project.defs()
