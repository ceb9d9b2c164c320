"""The shipped dagster.yaml gives a real Dagster instance whose storage lives in PostgreSQL."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from dagster import DagsterInstance
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

from rds_pipeline.local_postgres import LocalPostgres

REPO = Path(__file__).resolve().parents[1]


def shipped_instance(
    server: LocalPostgres, home: Path, monkeypatch: pytest.MonkeyPatch, database: str
) -> DagsterInstance:
    """The shipped dagster.yaml in ``home``, its storage in a new ``database`` on ``server``."""
    server.psql(f"CREATE DATABASE {database}")
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    for name, value in {
        "HOST": server.host,
        "PORT": str(server.port),
        "USER": server.superuser,
        "PASSWORD": server.password,
        "DB": database,
    }.items():
        monkeypatch.setenv(f"DAGSTER_PG_{name}", value)
    return DagsterInstance.from_config(str(home))


def sessions(server: LocalPostgres, database: str) -> int:
    """Sessions ever opened to ``database``."""
    return int(server.psql(f"SELECT sessions FROM pg_stat_database WHERE datname = '{database}'").strip())


def assert_released(server: LocalPostgres, instance: DagsterInstance, database: str) -> None:
    """Every storage has its own engine back (no pool), and no session to ``database`` is left open."""
    from sqlalchemy.pool import NullPool

    for storage in (instance.event_log_storage, instance.run_storage, instance.schedule_storage):
        assert isinstance(storage._engine.pool, NullPool)  # type: ignore[attr-defined]
    held = server.psql(
        f"SELECT count(*) FROM pg_stat_activity WHERE datname = '{database}' AND pid <> pg_backend_pid()"
    )
    assert held.strip() == "0"


def test_dagster_yaml_stores_runs_events_and_schedules_in_postgres(
    pg18: LocalPostgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    instance = shipped_instance(pg18, tmp_path, monkeypatch, "dagster_storage_test")
    try:
        assert isinstance(instance.run_storage, PostgresRunStorage)
        assert isinstance(instance.event_log_storage, PostgresEventLogStorage)
        assert isinstance(instance.schedule_storage, PostgresScheduleStorage)
        assert instance.get_runs() == []
        # the pool that protects the source defaults to 2 concurrent steps
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 2
        tables = pg18.psql(
            "SELECT count(*) FROM pg_tables WHERE tablename IN ('runs', 'event_logs', 'jobs')", "dagster_storage_test"
        )
        assert tables.strip() == "3"
    finally:
        instance.dispose()


def test_a_tick_holds_its_storage_connections_and_lets_them_go(
    pg18: LocalPostgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dagster-postgres opens a connection per storage call; while the sync step runs it holds one instead
    (``storage_pool.py``). A tick over 20 tables on the shipped dagster.yaml opens a few sessions, not several
    per table; every event reads back; when the step ends the original engines are back and nothing is left
    open."""
    from rds_pipeline_tests.dagster_defs.project import key, make_project
    from rds_pipeline_tests.dagster_defs.test_timeline import tick

    ddl = "".join(
        f"CREATE TABLE t{i:02d} (id int PRIMARY KEY, v text); INSERT INTO t{i:02d} VALUES (1, 'x');" for i in range(20)
    )
    project = make_project(pg18, tmp_path / "project", [{"name": f"public.t{i:02d}"} for i in range(20)], ddl=ddl)
    instance = shipped_instance(pg18, tmp_path, monkeypatch, "dagster_pool_test")

    try:
        before = sessions(pg18, "dagster_pool_test")
        assert tick(project, instance).success
        opened = sessions(pg18, "dagster_pool_test") - before
        # the run's own events (run start, step start, ...) still open one each: about 25, not 20 tables x 5
        assert 0 < opened < 60, opened
        for i in (0, 19):
            latest = instance.get_latest_materialization_event(key(f"t{i:02d}"))
            assert latest is not None and latest.asset_materialization is not None
        assert_released(pg18, instance, "dagster_pool_test")
    finally:
        instance.dispose()


def test_rds_pipeline_sync_holds_one_connection_for_the_whole_run(
    pg18: LocalPostgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI's run holds its storage connection from the run's start to its end (not only in the sync step):
    a run over 20 tables opens a handful of sessions, reads back, and leaves none open."""
    from rds_pipeline.dagster_defs.run import run_sync
    from rds_pipeline_tests.dagster_defs.project import key, make_project

    ddl = "".join(f"CREATE TABLE t{i:02d} (id int PRIMARY KEY); INSERT INTO t{i:02d} VALUES (1);" for i in range(20))
    project = make_project(pg18, tmp_path / "project", [{"name": f"public.t{i:02d}"} for i in range(20)], ddl=ddl)
    instance = shipped_instance(pg18, tmp_path, monkeypatch, "dagster_run_pool_test")

    try:
        before = sessions(pg18, "dagster_run_pool_test")
        outcome = run_sync(project.path, instance=instance, quiet=True)
        assert outcome.success and len(outcome.rows) == 20
        assert (
            sessions(pg18, "dagster_run_pool_test") - before <= 10
        )  # about one per thread that writes (the step's held one, 32 before)
        assert instance.get_latest_materialization_event(key("t07")) is not None
        assert_released(pg18, instance, "dagster_run_pool_test")
    finally:
        instance.dispose()
