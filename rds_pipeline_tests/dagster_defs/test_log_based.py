"""Log-based tables through Dagster, as a timeline: the first sync (a snapshot, every partition materialized),
changes streamed by `rds-pipeline sync` (the latest partition, with the changes per kind and the LSN range),
a backfill of one partition that copies its range again consistently with the stream, a reset, and the slot
check. The replica is compared with the source after each step."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import psycopg2

from rds_pipeline.dagster_defs.run import run_sync
from rds_pipeline.dagster_defs.status import as_json, collect_status
from rds_pipeline.engine.report import format_status
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.dagster_defs.project import Project, key, make_project


def rows(server: LocalPostgres, database: str, relation: str) -> list[tuple[int, str]]:
    with psycopg2.connect(**server.dsn(database)) as conn, conn.cursor() as cur:
        cur.execute(f"SELECT id, v FROM {relation} ORDER BY id")
        found = cur.fetchall()
    conn.close()
    return found


def materializations(instance: dg.DagsterInstance, name: str) -> list[dg.AssetMaterialization]:
    records = instance.fetch_materializations(key(name), limit=1000).records
    return [r.asset_materialization for r in records if r.asset_materialization is not None]


def test_log_based_tables_in_dagster(logical18: LocalPostgres, tmp_path: Path, instance: dg.DagsterInstance) -> None:
    server = logical18
    server.psql("CREATE DATABASE dg_log_dest")
    project: Project = make_project(
        server,
        tmp_path,
        [{"name": "public.t", "method": "log_based", "chunk_rows": 1000}, {"name": "public.f", "method": "full_table"}],
        ddl="CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM "
        "generate_series(1, 3000) g; CREATE TABLE f (id int PRIMARY KEY, v text); INSERT INTO f VALUES (1, 'f'); "
        "ANALYZE",
        destination={
            "type": "postgres",
            "host": server.host,
            "port": server.port,
            "user": server.superuser,
            "password": server.password,
            "database": "dg_log_dest",
        },
    )
    replica = "dagster_test.t"

    # one reader per slot: the stream's steps (the asset's and sync_all's) are in the slot's own pool
    defs = project.defs()
    pool = "rds_slot__rds_pipeline_dagster_test"
    assert defs.resolve_job_def("sync_all").graph.node_named("stream_tables").definition.pool == pool
    assert defs.resolve_assets_def(key("t")).op.pool == pool
    assert defs.resolve_assets_def(key("f")).op.pool == "rds_source"
    first = run_sync(project.path, instance=instance, quiet=True)
    assert first.success, first.failures or first.errors
    assert rows(server, "dg_log_dest", replica) == rows(server, project.database, "t")
    assert {m.partition for m in materializations(instance, "t")} == {"..1001", "1001..2001", "2001.."}
    report = {r["destination_table"]: r for r in first.rows}
    assert report["dagster_test/t"]["rows_inserted"] == 3000 and report["dagster_test/t"]["mode"] == "log_based"

    project.sql(
        "UPDATE t SET v = 'changed' WHERE id <= 10; DELETE FROM t WHERE id > 2990; INSERT INTO t VALUES (5000, 'new')"
    )
    second = run_sync(project.path, instance=instance, quiet=True)
    assert second.success
    assert rows(server, "dg_log_dest", replica) == rows(server, project.database, "t")
    latest = materializations(instance, "t")[0]
    assert latest.partition == "2001.."  # a stream run materializes the latest partition
    meta = latest.metadata
    assert (meta["rows_updated"].value, meta["rows_deleted"].value, meta["rows_inserted"].value) == (10, 10, 1)
    assert meta["lsn_end"].value and meta["wal_status"].value == "reserved"
    checks = instance.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(key("t"), "slot_lag")]
    )
    assert checks[dg.AssetCheckKey(key("t"), "slot_lag")].status.value == "SUCCEEDED"
    # status: the LSN the destination applied, and the WAL behind it once the source moves on
    standing = {r.table.rsplit(".", 1)[-1]: r for r in collect_status(project.path, instance)}
    assert standing["t"].position == meta["lsn_end"].value and standing["t"].outcome == "ok"
    project.sql("INSERT INTO t SELECT g, 'pending' FROM generate_series(7000, 7999) g")
    pending = {r.table.rsplit(".", 1)[-1]: r for r in collect_status(project.path, instance)}["t"]
    assert pending.position == standing["t"].position and pending.lag_unit == "bytes"
    assert pending.lag_amount > 30_000 and pending.lag.endswith("of WAL")  # 1,000 rows not yet applied
    assert run_sync(project.path, instance=instance, quiet=True).success

    # the replica's first range damaged by hand: a backfill of that partition copies it again, and the changes
    # made meanwhile stream in after it
    server.psql(f"DELETE FROM {replica} WHERE id < 500", "dg_log_dest")
    project.sql("UPDATE t SET v = 'during' WHERE id IN (1, 1500)")
    defs = project.defs()
    assets = [a for a in defs.assets if isinstance(a, (dg.AssetsDefinition, dg.AssetSpec))]
    result = dg.materialize(
        assets, selection=[key("t")], partition_key="..1001", instance=instance, resources=defs.resources
    )
    assert result.success
    assert rows(server, "dg_log_dest", replica) == rows(server, project.database, "t")
    # the backfill leaves the table's log-based state as it was: the next sync streams, it copies nothing again
    with psycopg2.connect(**server.dsn("dg_log_dest")) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT replication_key, bookmark IS NOT NULL FROM dagster_test._rds_pipeline_state "
            "WHERE table_id LIKE '%.public.t'"
        )
        assert cur.fetchall() == [(f"slot:{project.config.slot_name}", True)]
    conn.close()
    project.sql("UPDATE t SET v = 'after backfill' WHERE id = 2")
    after = run_sync(project.path, instance=instance, quiet=True)
    assert after.success
    latest = materializations(instance, "t")[0].metadata
    assert (latest["plan"].value, latest["snapshot_rows"].value, latest["rows_updated"].value) == ("stream", 0, 1)
    assert rows(server, "dg_log_dest", replica) == rows(server, project.database, "t")

    # a reset: the table is copied again from a new snapshot; f, the full-table one, is untouched by the stream
    project.sql("INSERT INTO t VALUES (6000, 'after reset')")
    job = defs.resolve_job_def("reset_table")
    assert job.execute_in_process(
        run_config={"ops": {"reset_and_resync": {"config": {"table": "public.t"}}}}, instance=instance
    ).success
    assert rows(server, "dg_log_dest", replica) == rows(server, project.database, "t")
    assert materializations(instance, "t")[0].metadata["snapshot_rows"].value == len(
        rows(server, project.database, "t")
    )

    # the slot lost behind our back (dropped, or a failover to a server without it): the run re-creates it and
    # copies the table again; the materialization, the failed check and `status` say so; the next run streams
    project.sql(f"SELECT pg_drop_replication_slot('{project.config.slot_name}')")
    project.sql("UPDATE t SET v = 'while lost' WHERE id = 3")
    lost = run_sync(project.path, instance=instance, quiet=True)
    assert lost.success
    assert rows(server, "dg_log_dest", replica) == rows(server, project.database, "t")
    meta = materializations(instance, "t")[0].metadata
    assert "is gone from the source" in meta["slot_recovered"].value and meta["snapshot_rows"].value > 0
    slot_check = dg.AssetCheckKey(key("t"), "slot_lag")
    assert (
        instance.event_log_storage.get_latest_asset_check_execution_by_key([slot_check])[slot_check].status.value
        == "FAILED"
    )
    (row,) = [r for r in collect_status(project.path, instance) if r.table.endswith(".t")]
    assert row.slot_lost and "is gone from the source" in row.slot_lost
    assert "LOST slot lost at" in format_status(as_json(collect_status(project.path, instance)))
    project.sql("UPDATE t SET v = 'found' WHERE id = 4")
    assert run_sync(project.path, instance=instance, quiet=True).success
    meta = materializations(instance, "t")[0].metadata
    assert meta["plan"].value == "stream" and meta["slot_recovered"].value == ""
    assert (
        instance.event_log_storage.get_latest_asset_check_execution_by_key([slot_check])[slot_check].status.value
        == "SUCCEEDED"
    )
    project.sql(f"SELECT pg_drop_replication_slot('{project.config.slot_name}')")
