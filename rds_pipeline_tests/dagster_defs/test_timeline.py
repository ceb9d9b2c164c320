"""A table's life over time, through Dagster, on real servers and real time ranges relative to now():
a sync, an outage of N windows, late rows, a backfill, a reset, a table dropped by hand, deletions, a failing
table among others. Each ends with the replica compared with the source, row for row."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg
import pytest

from rds_pipeline.cli import main as cli
from rds_pipeline.dagster_defs.run import run_sync
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.dagster_defs.project import Project, key, make_project

WINDOW = {"hourly": "1 hour", "daily": "1 day", "monthly": "1 month"}


def source_rows(project: Project, table: str) -> list[tuple[int, str]]:
    text = project.sql(f"SELECT id, v FROM {table} ORDER BY id")
    return [(int(i), v) for i, v in (line.split("|") for line in text.splitlines() if line)]


def replica_rows(project: Project, table: str) -> list[tuple[int, str]]:
    dest = project.destination()
    try:
        return [
            (int(i), v)
            for i, v in dest.conn.execute(f'SELECT id, v FROM dagster_test."{table}" ORDER BY id').fetchall()
        ]
    finally:
        dest.close()


def replica_columns(project: Project, table: str) -> list[str]:
    """The replica table's columns in order ([] when it does not exist)."""
    dest = project.destination()
    try:
        found = dest.conn.execute(
            "SELECT column_name FROM duckdb_columns() WHERE schema_name = 'dagster_test' AND table_name = ? "
            "ORDER BY column_index",
            [table],
        ).fetchall()
        return [name for (name,) in found]
    finally:
        dest.close()


def whole_rows(project: Project, table: str, columns: str, replica: bool = False) -> list[tuple[str | None, ...]]:
    """``columns`` of every row as text, from the source or the replica, in id order."""
    if not replica:
        query = f"SELECT {columns.replace(', ', '::text, ')}::text FROM {table} ORDER BY {table}.id"
        text = project.server.psql(query, project.database, "-F", "\t")
        return [tuple(v or None for v in line.split("\t")) for line in text.splitlines() if line]
    dest = project.destination()
    try:
        found = dest.conn.execute(f'SELECT {columns} FROM dagster_test."{table}" ORDER BY id').fetchall()
        return [tuple(None if v is None else str(v) for v in row) for row in found]
    finally:
        dest.close()


def tick(project: Project, instance: dg.DagsterInstance) -> dg.ExecuteInProcessResult:
    """What the schedule does: evaluate its tick, then execute the run it asks for."""
    defs = project.defs()
    [schedule] = defs.schedules
    context = dg.build_schedule_context(
        instance=instance, scheduled_execution_time=dt.datetime.now(dt.UTC), repository_def=defs.get_repository_def()
    )
    [request] = schedule.evaluate_tick(context).run_requests
    return defs.resolve_job_def("sync_all").execute_in_process(
        run_config=request.run_config, instance=instance, raise_on_error=False
    )


def materialize(project: Project, instance: dg.DagsterInstance, name: str, partition: str) -> bool:
    defs = project.defs()
    assets = [a for a in defs.assets if isinstance(a, (dg.AssetsDefinition, dg.AssetSpec))]
    return dg.materialize(
        assets, selection=[key(name)], partition_key=partition, instance=instance, resources=defs.resources
    ).success


def bookmark(project: Project, table: str) -> str | None:
    dest = project.destination()
    try:
        return dest.table_state(project.table(f"public.{table}")).bookmark
    finally:
        dest.close()


@pytest.mark.parametrize("granularity,outage", [("hourly", 5), ("daily", 3), ("monthly", 2)])
def test_an_outage_of_n_windows_then_late_rows(
    pg18: LocalPostgres, tmp_path: Path, instance: dg.DagsterInstance, granularity: str, outage: int
) -> None:
    window = WINDOW[granularity]
    ddl = f"""
    CREATE TABLE ev (id int PRIMARY KEY, ts timestamptz NOT NULL, v text);
    CREATE INDEX ON ev (ts);
    INSERT INTO ev SELECT g, now() - {outage + 2} * interval '{window}' + g * interval '1 minute', 'old'
    FROM generate_series(1, 20) g;
    -- an hour older than the rest, so the first window starts before the 'too late' row below whatever the time
    -- of day (that row is 11 minutes older than the first of the rest, which may open its window by minutes)
    INSERT INTO ev VALUES (0, now() - {outage + 2} * interval '{window}' - interval '1 hour', 'oldest');
    ANALYZE;
    """
    project = make_project(
        pg18,
        tmp_path,
        [{"name": "public.ev", "method": "key_based", "replication_key": "ts", "granularity": granularity}],
        ddl=ddl,
    )
    assert tick(project, instance).success
    assert replica_rows(project, "ev") == source_rows(project, "ev")
    synced_to = bookmark(project, "ev")
    # the outage: no sync for N windows while rows keep arriving (one every half window, up to now) ...
    project.sql(
        f"INSERT INTO ev SELECT 100 + g, now() - g * interval '{window}' / 2, 'new' "
        f"FROM generate_series(0, {2 * outage + 1}) g"
    )
    # ... plus a late commit inside the lookback (5 minutes) and one older than it
    project.sql(
        f"INSERT INTO ev VALUES (500, '{synced_to}'::timestamptz - interval '2 minutes', 'late'), "
        f"(501, '{synced_to}'::timestamptz - interval '30 minutes', 'too late')"
    )
    keys = project.defs().resolve_asset_graph().get(key("ev")).partitions_def.get_partition_keys()
    result = tick(project, instance)
    assert result.success
    replica = dict(replica_rows(project, "ev"))
    expected = dict(source_rows(project, "ev"))
    expected.pop(501)  # older than the lookback: a catch-up cannot see it (documented); a backfill can
    assert replica == expected
    # every window the catch-up covered shows as materialized, from the bookmark's window to now (keys read
    # before the tick: a window that opens while it runs is covered too, and must not make this flaky)
    assert instance.get_materialized_partitions(key("ev")) >= set(keys)
    assert {e.event_specific_data.materialization.partition for e in result.get_asset_materialization_events()} >= set(
        keys[-outage - 1 :]
    )
    after_outage = bookmark(project, "ev")
    # a re-run of the older window (a backfill) brings the too-late row, and never moves the bookmark back
    pdef = project.defs().resolve_asset_graph().get(key("ev")).partitions_def
    late_ts = float(project.sql("SELECT extract(epoch FROM ts) FROM ev WHERE id = 501"))
    late_window = pdef.get_partition_key_for_timestamp(late_ts)
    assert late_window != keys[-1] and materialize(project, instance, "ev", late_window)
    assert dict(replica_rows(project, "ev")) == dict(source_rows(project, "ev"))
    assert bookmark(project, "ev") == after_outage


def test_reset_and_a_dropped_table_bring_the_whole_history_back(
    pg18: LocalPostgres, tmp_path: Path, instance: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    ddl = """
    CREATE TABLE hist (id int PRIMARY KEY, ts timestamptz NOT NULL, v text);
    INSERT INTO hist SELECT g, now() - interval '400 days' + g * interval '1 hour', 'h' || g
    FROM generate_series(1, 9600) g;
    ANALYZE;
    """
    project = make_project(
        pg18, tmp_path, [{"name": "public.hist", "method": "key_based", "replication_key": "ts"}], ddl=ddl
    )
    assert run_sync(project.path, instance=instance).success
    assert len(replica_rows(project, "hist")) == 9600
    # the CLI: reset, then sync: every row comes back (not only the last windows)
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    assert cli(["reset", "public.hist", "--config", str(project.path)]) == 0
    assert bookmark(project, "hist") is None and replica_columns(project, "hist") == []  # the table went too
    assert cli(["sync", "--config", str(project.path)]) == 0
    assert replica_rows(project, "hist") == source_rows(project, "hist")
    # the reset_table job: the same, and every window shows as materialized again
    project.sql("UPDATE hist SET v = 'changed' WHERE id % 100 = 0")
    keys = project.defs().resolve_asset_graph().get(key("hist")).partitions_def.get_partition_keys()
    job = project.defs().resolve_job_def("reset_table")
    result = job.execute_in_process(
        run_config={"ops": {"reset_and_resync": {"config": {"table": "public.hist"}}}}, instance=instance
    )
    assert result.success and replica_rows(project, "hist") == source_rows(project, "hist")
    assert {e.event_specific_data.materialization.partition for e in result.get_asset_materialization_events()} >= set(
        keys
    )  # every window (one that opened meanwhile too)
    # dropped by hand: the bookmark no longer counts, the next tick is a historical sync
    dest = project.destination()
    dest.conn.execute('DROP TABLE dagster_test."hist"')
    dest.close()
    defs = project.defs()  # the new-data sensor sees it too: no usable bookmark, so the table is asked for
    with dg.build_sensor_context(instance=instance, resources=defs.resources, definitions=defs) as context:
        [request] = defs.get_sensor_def("rds_new_data_sensor")(context).run_requests
    assert request.run_config["ops"]["pick_tables"]["config"]["tables"] == [f"{project.database}.public.hist"]
    assert tick(project, instance).success
    assert replica_rows(project, "hist") == source_rows(project, "hist")


def test_full_table_deletions_and_a_failing_table_among_others(
    pg18: LocalPostgres, tmp_path: Path, instance: dg.DagsterInstance, capsys: pytest.CaptureFixture[str]
) -> None:
    ddl = """
    CREATE TABLE a (id int PRIMARY KEY, v text); INSERT INTO a SELECT g, 'a' || g FROM generate_series(1, 50) g;
    CREATE TABLE b (id int PRIMARY KEY, v text); INSERT INTO b SELECT g, 'b' || g FROM generate_series(1, 50) g;
    CREATE TABLE c (id int PRIMARY KEY, v text, gone text);
    INSERT INTO c SELECT g, 'c' || g, 'x' FROM generate_series(1, 50) g;
    ANALYZE;
    """
    project = make_project(pg18, tmp_path, [{"name": f"public.{t}"} for t in "abc"], ddl=ddl)
    role = f"limited_{project.database}"
    project.sql(f"CREATE ROLE {role} LOGIN PASSWORD '{pg18.password}'; GRANT SELECT ON a, b, c TO {role}")
    project.path.write_text(project.path.read_text().replace(f"user: {pg18.superuser}", f"user: {role}"))
    assert run_sync(project.path, instance=instance).success
    # deletions under full table disappear; SELECT revoked on one table; a column dropped on another
    project.sql(
        f"DELETE FROM a WHERE id > 40; REVOKE SELECT ON b FROM {role}; ALTER TABLE c DROP COLUMN gone;"
        "INSERT INTO c VALUES (51, 'c51'); ALTER TABLE a ADD COLUMN added int DEFAULT 7"
    )
    # (a column added without re-discovery is safe to ignore until `rds-pipeline discover` selects it)
    outcome = run_sync(project.path, instance=instance)
    assert not outcome.success
    assert replica_rows(project, "a") == source_rows(project, "a")  # the other table was synced
    failures = {f["table"]: f["error"] for f in outcome.failures}
    assert set(failures) == {f"{project.database}.public.b", f"{project.database}.public.c"}
    assert (
        "permission denied" in failures[f"{project.database}.public.b"]
        and "GRANT" not in failures[f"{project.database}.public.c"]
    )
    assert "rds-pipeline check" in failures[f"{project.database}.public.b"]
    assert "rds-pipeline discover" in failures[f"{project.database}.public.c"]
    # the CLI: the loading report, then the short list of failed tables, and no traceback without -v
    assert cli(["sync", "--config", str(project.path)]) == 1
    err = capsys.readouterr().err
    assert "2 table(s) FAILED" in err and "public.b: permission denied" in err
    assert "Traceback" not in err
    # fixed: the next sync converges
    project.sql(f"GRANT SELECT ON b TO {role}")
    project.discover()
    outcome = run_sync(project.path, instance=instance)
    assert outcome.success
    for table in "abc":
        assert replica_rows(project, table) == source_rows(project, table)
    # every column, not only id and v: the added one arrives with its values; the dropped one stays in the
    # replica (no data is dropped for the user), NULL in every row the full copy replaced
    assert whole_rows(project, "a", "id, v, added") == whole_rows(project, "a", "id, v, added", replica=True)
    assert {r[2] for r in whole_rows(project, "a", "id, v, added", replica=True)} == {"7"}
    assert [c for c in replica_columns(project, "c") if not c.startswith("_rds_")] == ["id", "v", "gone"]
    kept = whole_rows(project, "c", "id, v, gone", replica=True)
    assert [r[:2] for r in kept] == whole_rows(project, "c", "id, v") and {r[2] for r in kept} == {None}
