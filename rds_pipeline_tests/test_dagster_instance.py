"""The shipped dagster.yaml gives a real Dagster instance whose storage lives in PostgreSQL."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from dagster import DagsterInstance
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

from rds_pipeline.local_postgres import LocalPostgres

REPO = Path(__file__).resolve().parents[1]


def test_dagster_yaml_stores_runs_events_and_schedules_in_postgres(
    pg18: LocalPostgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pg18.psql("CREATE DATABASE dagster_storage_test")
    shutil.copy(REPO / "dagster.yaml", tmp_path / "dagster.yaml")
    for name, value in {
        "HOST": pg18.host,
        "PORT": str(pg18.port),
        "USER": pg18.superuser,
        "PASSWORD": pg18.password,
        "DB": "dagster_storage_test",
    }.items():
        monkeypatch.setenv(f"DAGSTER_PG_{name}", value)
    instance = DagsterInstance.from_config(str(tmp_path))
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
