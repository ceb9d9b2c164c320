"""`rds-pipeline status` over a table's life: never synced, synced (one table failing), time passing while rows
arrive on the source (lag grows, nothing is written), the fix and the next sync; text and --json."""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path

import dagster as dg
import pytest

from rds_pipeline.cli import main as cli
from rds_pipeline.dagster_defs.run import run_sync
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.dagster_defs.project import Project, make_project

DDL = """
CREATE TABLE ev (id int PRIMARY KEY, ts timestamptz NOT NULL, v text);
INSERT INTO ev SELECT g, timestamptz '2026-11-01 00:00+00' + g * interval '1 hour', 'e' FROM generate_series(1, 48) g;
CREATE TABLE items (id bigint PRIMARY KEY, v text);
INSERT INTO items SELECT g, 'i' FROM generate_series(1, 500) g;
CREATE TABLE dims (id int PRIMARY KEY, v text);
INSERT INTO dims SELECT g, 'd' FROM generate_series(1, 30) g;
CREATE TABLE switch (broken boolean); INSERT INTO switch VALUES (true);
CREATE VIEW flaky AS SELECT g AS id, 1 / (CASE WHEN (SELECT broken FROM switch) THEN 0 ELSE 1 END) AS v
FROM generate_series(1, 5) g;
ANALYZE;
"""
TABLES = [
    {"name": "public.ev", "method": "key_based", "replication_key": "ts", "granularity": "daily"},
    {"name": "public.items", "method": "key_based", "replication_key": "id"},
    {"name": "public.dims", "method": "full_table"},
    {"name": "public.flaky", "method": "full_table", "primary_key": ["id"]},
]


def status(project: Project, capsys: pytest.CaptureFixture[str], *extra: str) -> tuple[int, str]:
    capsys.readouterr()
    code = cli(["status", "--config", str(project.path), *extra])
    return code, capsys.readouterr().out


def by_table(text: str) -> dict[str, dict]:
    return {row["table"].rsplit(".", 1)[-1]: row for row in json.loads(text)["tables"]}


def test_status_over_a_tables_life(
    pg18: LocalPostgres, tmp_path: Path, instance: dg.DagsterInstance, capsys: pytest.CaptureFixture[str]
) -> None:
    assert os.environ.get("DAGSTER_HOME")  # the CLI reads the same instance as the runs below
    pg18.psql("CREATE DATABASE status_dst")
    project = make_project(
        pg18,
        tmp_path,
        TABLES,
        ddl=DDL,
        destination={
            "type": "postgres",
            "host": pg18.host,
            "port": pg18.port,
            "user": pg18.superuser,
            "password": pg18.password,
            "database": "status_dst",
        },
    )

    code, out = status(project, capsys, "--json")
    rows = by_table(out)
    assert code == 0 and set(rows) == {"ev", "items", "dims", "flaky"}
    assert all(
        r["outcome"] == "never run" and r["lag"] == "not synced yet" and r["last_sync"] is None for r in rows.values()
    )
    next_tick = dt.datetime.fromisoformat(rows["ev"]["next_tick"])
    assert dt.timedelta(0) < next_tick - dt.datetime.now(dt.UTC) <= dt.timedelta(hours=1)  # hourly by default
    assert rows["ev"]["automation"].startswith("schedule rds_sync_every_1h_utc stopped")

    first = run_sync(project.path, instance=instance, quiet=True)
    assert not first.success and [f["table"] for f in first.failures] == [f"{project.database}.public.flaky"]
    code, out = status(project, capsys, "--json")
    rows = by_table(out)
    assert code == 1  # a table failed: scripts can tell
    assert rows["ev"]["outcome"] == "ok" and rows["ev"]["position"].startswith("2026-11-03 00:00:00")
    assert rows["ev"]["lag"] == "up to date" and rows["ev"]["rows_loaded"] == 48
    assert rows["items"]["position"] == "500" and rows["items"]["lag_amount"] == 0
    assert rows["dims"]["outcome"] == "ok" and rows["dims"]["lag"] == "full copy each sync"
    assert rows["dims"]["rows_loaded"] == 30 and rows["dims"]["last_sync"] is not None
    assert rows["flaky"]["outcome"] == "failed" and "division by zero" in rows["flaky"]["error"]
    assert "Fix:" in rows["flaky"]["error"]

    # time passes: rows arrive on the source; status reports the lag and writes nothing
    project.sql(
        "INSERT INTO ev SELECT 100 + g, timestamptz '2026-11-03 00:00+00' + g * interval '30 minutes', 'n' "
        "FROM generate_series(1, 5) g"
    )
    project.sql("INSERT INTO items SELECT g, 'n' FROM generate_series(501, 620) g")
    before = pg18.psql(
        "SELECT table_id, bookmark, updated_at FROM dagster_test._rds_pipeline_state ORDER BY 1", "status_dst"
    )
    code, out = status(project, capsys)
    assert "2 h 30 min of keys" in out and "120 keys" in out and "FAILED" in out and "division by zero" in out
    assert "ticks: schedule rds_sync_every_1h_utc stopped" in out
    rows = by_table(status(project, capsys, "--json")[1])
    assert rows["ev"]["lag_amount"] == 9000 and rows["ev"]["lag_unit"] == "seconds"
    assert rows["items"]["source_position"] == "620" and rows["items"]["lag_amount"] == 120
    assert (
        pg18.psql(
            "SELECT table_id, bookmark, updated_at FROM dagster_test._rds_pipeline_state ORDER BY 1", "status_dst"
        )
        == before
    )

    # the fix, and the next sync: every table ok and up to date
    project.sql("UPDATE switch SET broken = false")
    assert run_sync(project.path, instance=instance, quiet=True).success
    code, out = status(project, capsys, "--json")
    rows = by_table(out)
    assert code == 0 and all(r["outcome"] == "ok" and r["error"] is None for r in rows.values())
    assert rows["items"]["lag"] == rows["ev"]["lag"] == "up to date" and rows["items"]["position"] == "620"
