"""Time windows that scale with the key's span: without `granularity:`, a table gets at most about 1,000 windows
(daily, then weekly, then monthly), so a key starting in 1947 does not make 29,000 daily partitions; an explicit
granularity is kept. Then such a table's first sync through Dagster materializes every window."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import dagster as dg
import pytest

from rds_pipeline.dagster_defs.partitions import MAX_AUTO_WINDOWS, auto_granularity, plan_for
from rds_pipeline.dagster_defs.run import run_sync
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.dagster_defs.project import key, make_project

TODAY = dt.date(2026, 11, 25)
REPO = Path(__file__).resolve().parents[2]


def test_granularity_follows_the_span() -> None:
    assert auto_granularity("2025-01-01 00:00:00+00", TODAY) == "daily"  # 694 days
    assert auto_granularity("2010-03-01", TODAY) == "weekly"  # 874 weeks
    assert auto_granularity("1947-01-01", TODAY) == "monthly"  # 959 months
    assert auto_granularity(None, TODAY) == "daily"  # no statistics: today only


def test_an_old_key_gets_monthly_windows_and_syncs_them_all(
    pg18: LocalPostgres, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    ddl = (
        "CREATE TABLE old (id int PRIMARY KEY, created date NOT NULL, v text); INSERT INTO old VALUES "
        "(1, '1947-03-01', 'a'), (2, '1999-12-31', 'b'), (3, current_date, 'c')"
    )
    auto = make_project(
        pg18, tmp_path / "auto", [{"name": "public.old", "method": "key_based", "replication_key": "created"}], ddl=ddl
    )
    [table] = auto.selection()
    plan = plan_for(table)
    keys = plan.partitions_def.get_partition_keys()
    assert isinstance(plan.partitions_def, dg.MonthlyPartitionsDefinition) and len(keys) <= MAX_AUTO_WINDOWS
    explicit = make_project(
        pg18,
        tmp_path / "explicit",
        [{"name": "public.old", "method": "key_based", "replication_key": "created", "granularity": "daily"}],
        database=auto.database,
    )
    daily = plan_for(explicit.selection()[0])
    assert isinstance(daily.partitions_def, dg.DailyPartitionsDefinition)  # the user's choice is kept
    assert len(daily.partitions_def.get_partition_keys()) > 29_000

    outcome = run_sync(auto.path, instance=instance, quiet=True)
    assert outcome.success and outcome.rows[0]["rows_inserted"] == 3
    materialized = instance.get_materialized_partitions(key("old"))
    assert materialized == set(keys)  # the first (historical) sync records every window


def test_the_first_sync_records_its_windows_in_one_write_on_postgres_storage(
    pg18: LocalPostgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On the shipped dagster.yaml (dagster-postgres), a first sync's ~1,000 windows go to the event log in one
    batch: every row of that run's materializations carries one transaction id. A second sync, a day later in
    the table's life (a new row), records only the window it touched, and every window stays materialized."""
    ddl = (
        "CREATE TABLE aged (id int PRIMARY KEY, created date NOT NULL, v text); INSERT INTO aged VALUES "
        "(1, '1947-03-01', 'a'), (2, '1999-12-31', 'b'), (3, current_date - 1, 'c')"
    )
    project = make_project(
        pg18, tmp_path / "aged", [{"name": "public.aged", "method": "key_based", "replication_key": "created"}], ddl=ddl
    )
    storage_db = "dagster_batch_events"
    pg18.psql(f"CREATE DATABASE {storage_db}")
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    for name, value in {
        "HOST": pg18.host,
        "PORT": str(pg18.port),
        "USER": pg18.superuser,
        "PASSWORD": pg18.password,
        "DB": storage_db,
    }.items():
        monkeypatch.setenv(f"DAGSTER_PG_{name}", value)
    instance = dg.DagsterInstance.from_config(str(home))
    try:
        keys = plan_for(project.selection()[0]).partitions_def.get_partition_keys()
        first = run_sync(project.path, instance=instance, quiet=True)
        assert first.success and first.rows[0]["rows_inserted"] == 3
        assert instance.get_materialized_partitions(key("aged")) == set(keys)
        writes = pg18.psql(
            "SELECT count(*) || ' ' || count(DISTINCT xmin::text) FROM event_logs "
            "WHERE dagster_event_type = 'ASSET_MATERIALIZATION'",
            storage_db,
        ).split()
        assert writes == [str(len(keys)), "1"], writes  # len(keys) events, one transaction

        pg18.psql("INSERT INTO aged VALUES (4, current_date, 'd')", project.database)
        second = run_sync(project.path, instance=instance, quiet=True)
        assert second.success and second.rows[0]["rows_inserted"] >= 1
        assert instance.get_materialized_partitions(key("aged")) == set(keys)
        total = pg18.psql(
            "SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'", storage_db
        )
        assert 1 <= int(total) - len(keys) <= 2  # this month's window (and last month's, within the lookback)
    finally:
        instance.dispose()
