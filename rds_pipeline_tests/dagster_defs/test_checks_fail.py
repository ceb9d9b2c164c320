"""The asset checks fail when the replica is wrong: fewer rows, duplicated keys, missing columns."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from rds_pipeline.engine.replication.extract import KeyRange
from rds_pipeline.engine.replication.sync import sync_table
from rds_pipeline.engine.replication.verify import columns_check, primary_key_check, row_count_check, source_count
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.dagster_defs.project import key
from rds_pipeline_tests.engine.sync_helpers import make_scratch


def test_checks_fail_on_a_damaged_replica(pg18: LocalPostgres) -> None:
    scratch = make_scratch(pg18)
    scratch.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' FROM generate_series(1, 100) g"
    )
    table = scratch.one({"name": "public.t"})
    dest = scratch.destination()
    everything = KeyRange()
    with scratch.session() as session:
        sync_table(session, dest, table)
        conn = session.connection()
        assert row_count_check(
            source_count(conn, table, everything), dest.count_rows(table, everything), everything
        ).passed
        assert primary_key_check(dest.duplicate_keys(table), table).passed
        assert dest.primary_key_enforced(table)  # the constraint guarantees it: the asset check scans nothing
        assert columns_check(dest.column_names(table), table).passed

        scratch.sql("DELETE FROM test_replica.t WHERE id = 7", scratch.dest_db)
        outcome = row_count_check(source_count(conn, table, everything), dest.count_rows(table, everything), everything)
        assert not outcome.passed and outcome.description.startswith("99 rows in the destination, 100 at the source")

        scratch.sql("ALTER TABLE test_replica.t DROP CONSTRAINT t_pkey; INSERT INTO test_replica.t (id, v) VALUES (1, 'dup')",
                    scratch.dest_db)  # fmt: skip
        assert not dest.primary_key_enforced(table)  # the constraint is gone: the check scans, and fails
        outcome = primary_key_check(dest.duplicate_keys(table), table)
        assert not outcome.passed and outcome.metadata == {"duplicate_keys": 1}

        scratch.sql("ALTER TABLE test_replica.t DROP COLUMN v", scratch.dest_db)
        outcome = columns_check(dest.column_names(table), table)
        assert not outcome.passed and outcome.metadata["missing_columns"] == "v"
    dest.close()


def test_freshness_follows_the_schedule(pg18: LocalPostgres, tmp_path: Path) -> None:
    from rds_pipeline_tests.dagster_defs.project import make_project

    project = make_project(pg18, tmp_path, [{"name": "public.film"},
                                            {"name": "public.actor", "schedule": {"every_hours": 6, "anchor": "03:15"}}],
                           database="pagila", schedule="30min")  # fmt: skip
    defs = project.defs()
    graph = defs.resolve_asset_graph()
    film = graph.get(key("film")).to_asset_spec().freshness_policy
    actor = graph.get(key("actor")).to_asset_spec().freshness_policy
    assert film.fail_window.to_timedelta().total_seconds() == (2 * 30 + 15) * 60
    assert actor.fail_window.to_timedelta().total_seconds() == (2 * 360 + 15) * 60
    crons = {s.cron_schedule for s in defs.schedules}
    assert crons == {"*/30 * * * *", "15 3,9,15,21 * * *"}
    assert isinstance(defs.schedules[0], dg.ScheduleDefinition)
