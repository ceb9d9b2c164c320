"""The asset checks fail when the replica is wrong: fewer rows, duplicated keys, missing columns."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from rds_pipeline.engine.core.ranges import KeyRange
from rds_pipeline.engine.replication.sync import sync_table
from rds_pipeline.engine.replication.verify import (
    columns_check,
    combined,
    primary_key_check,
    row_count_check,
    source_count,
)
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

        scratch.sql(
            "ALTER TABLE test_replica.t DROP CONSTRAINT t_pkey; INSERT INTO test_replica.t (id, v) VALUES (1, 'dup')",
            scratch.dest_db,
        )
        assert not dest.primary_key_enforced(table)  # the constraint is gone: the check scans, and fails
        outcome = primary_key_check(dest.duplicate_keys(table), table)
        assert not outcome.passed and outcome.metadata == {"duplicate_keys": 1}

        scratch.sql("ALTER TABLE test_replica.t DROP COLUMN v", scratch.dest_db)
        outcome = columns_check(dest.column_names(table), table)
        assert not outcome.passed and outcome.metadata["missing_columns"] == "v"

        # the table's one check: any failing part fails it, named first, each part's figures kept
        whole = combined(
            [
                ("columns", outcome),
                ("primary_key", primary_key_check(dest.duplicate_keys(table), table)),
                ("row_count", row_count_check(5, 5, everything)),
            ]
        )
        assert not whole.passed and whole.metadata["failed"] == "columns, primary_key"
        assert (
            whole.description.startswith("FAILED columns: missing ['v']") and "row_count: 5 rows" in whole.description
        )
        assert whole.metadata["primary_key/duplicate_keys"] == 1 and whole.metadata["columns/missing_columns"] == "v"
        assert combined([("row_count", row_count_check(5, 5, everything))]).passed
    dest.close()


def test_freshness_follows_the_schedule(pg18: LocalPostgres, tmp_path: Path) -> None:
    from rds_pipeline_tests.dagster_defs.project import make_project

    project = make_project(
        pg18,
        tmp_path,
        [{"name": "public.film"}, {"name": "public.actor", "schedule": {"every_hours": 6, "anchor": "03:15"}}],
        database="pagila",
        schedule="30min",
    )
    defs = project.defs()
    graph = defs.resolve_asset_graph()
    film = graph.get(key("film")).to_asset_spec().freshness_policy
    actor = graph.get(key("actor")).to_asset_spec().freshness_policy
    assert film.fail_window.to_timedelta().total_seconds() == (2 * 30 + 15) * 60
    assert actor.fail_window.to_timedelta().total_seconds() == (2 * 360 + 15) * 60
    crons = {s.cron_schedule for s in defs.schedules}
    assert crons == {"*/30 * * * *", "15 3,9,15,21 * * *"}
    assert isinstance(defs.schedules[0], dg.ScheduleDefinition)


def test_row_count_check_catches_rows_lost_in_the_destination(
    pg18: LocalPostgres, tmp_path: Path, instance: dg.DagsterInstance
) -> None:
    """replica_matches_source's row_count part compares the rows this sync's COPY read with the destination's rows in the range
    (no second scan of production): a destination that drops a row on the way fails it."""
    from rds_pipeline_tests.dagster_defs.project import make_project

    project = make_project(
        pg18,
        tmp_path,
        [{"name": "public.t"}],
        ddl="CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' FROM generate_series(1, 100) g",
        destination={
            "type": "postgres",
            "host": pg18.host,
            "port": pg18.port,
            "user": pg18.superuser,
            "password": pg18.password,
            "database": "checks_dest",
        },
    )
    pg18.psql("CREATE DATABASE checks_dest")
    defs = project.defs()
    assets = [a for a in defs.assets if isinstance(a, (dg.AssetsDefinition, dg.AssetSpec))]

    def row_count() -> dg.AssetCheckEvaluation:
        result = dg.materialize(
            assets,
            selection=[key("t")],
            partition_key="all",
            instance=instance,
            resources=defs.resources,
            raise_on_error=False,
        )
        return next(e for e in result.get_asset_check_evaluations() if e.check_name == "replica_matches_source")

    assert row_count().passed
    # the destination silently drops one row on insert (a trigger someone added)
    pg18.psql(
        "CREATE FUNCTION dagster_test.drop_seven() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        "IF NEW.id = 7 THEN RETURN NULL; END IF; RETURN NEW; END $$; CREATE TRIGGER lose BEFORE INSERT ON "
        "dagster_test.t FOR EACH ROW EXECUTE FUNCTION dagster_test.drop_seven()",
        "checks_dest",
    )
    failed = row_count()
    assert not failed.passed
    assert failed.description.startswith(
        "FAILED row_count: 99 rows in the destination, 100 copied from the source by this sync"
    )  # the failing part first
    assert failed.metadata["failed"].value == "row_count"
