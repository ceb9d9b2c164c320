"""Time windows that scale with the key's span: without `granularity:`, a table gets at most about 1,000 windows
(daily, then weekly, then monthly), so a key starting in 1947 does not make 29,000 daily partitions; an explicit
granularity is kept. Then such a table's first sync through Dagster materializes every window."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import dagster as dg

from rds_pipeline.dagster_defs.partitions import MAX_AUTO_WINDOWS, auto_granularity, plan_for
from rds_pipeline.dagster_defs.run import run_sync
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.dagster_defs.project import key, make_project

TODAY = dt.date(2026, 11, 25)


def test_granularity_follows_the_span() -> None:
    assert auto_granularity("2025-01-01 00:00:00+00", TODAY) == "daily"  # 694 days
    assert auto_granularity("2010-03-01", TODAY) == "weekly"  # 874 weeks
    assert auto_granularity("1947-01-01", TODAY) == "monthly"  # 959 months
    assert auto_granularity(None, TODAY) == "daily"  # no statistics: today only


def test_an_old_key_gets_monthly_windows_and_syncs_them_all(pg18: LocalPostgres, tmp_path: Path,
                                                            instance: dg.DagsterInstance) -> None:  # fmt: skip
    ddl = ("CREATE TABLE old (id int PRIMARY KEY, created date NOT NULL, v text); INSERT INTO old VALUES "
           "(1, '1947-03-01', 'a'), (2, '1999-12-31', 'b'), (3, current_date, 'c')")  # fmt: skip
    auto = make_project(pg18, tmp_path / "auto", [{"name": "public.old", "method": "key_based",
                                                   "replication_key": "created"}], ddl=ddl)  # fmt: skip
    [table] = auto.selection()
    plan = plan_for(table)
    keys = plan.partitions_def.get_partition_keys()
    assert isinstance(plan.partitions_def, dg.MonthlyPartitionsDefinition) and len(keys) <= MAX_AUTO_WINDOWS
    explicit = make_project(pg18, tmp_path / "explicit", [{"name": "public.old", "method": "key_based",
                                                           "replication_key": "created", "granularity": "daily"}],
                            database=auto.database)  # fmt: skip
    daily = plan_for(explicit.selection()[0])
    assert isinstance(daily.partitions_def, dg.DailyPartitionsDefinition)  # the user's choice is kept
    assert len(daily.partitions_def.get_partition_keys()) > 29_000

    outcome = run_sync(auto.path, instance=instance, quiet=True)
    assert outcome.success and outcome.rows[0]["rows_inserted"] == 3
    materialized = instance.get_materialized_partitions(key("old"))
    assert materialized == set(keys)  # the first (historical) sync records every window
