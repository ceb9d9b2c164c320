"""A DuckDB file allows one writer process: two runs launched at once into one file both succeed, the second
waiting in the file's pool (limit 1) instead of failing on the file's lock, and their copying steps never overlap."""

from __future__ import annotations

from pathlib import Path

import duckdb

from rds_pipeline.dagster_defs.jobs import PICK_OP
from rds_pipeline.dagster_defs.pools import duckdb_pool
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.dagster_defs.project import make_project
from rds_pipeline_tests.dagster_dev import REPO, dagster_dev
from rds_pipeline_tests.test_webserver import launch, wait

# two views that take a few seconds each to produce their rows
SLOW = ("CREATE VIEW slow_a AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 300) g "
        "WHERE pg_sleep(0.01) IS NOT NULL; "
        "CREATE VIEW slow_b AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 300) g "
        "WHERE pg_sleep(0.01) IS NOT NULL")  # fmt: skip


def test_two_runs_into_one_duckdb_file_wait_for_its_pool(pg18: LocalPostgres, tmp_path: Path) -> None:
    project = make_project(pg18, tmp_path / "project", [{"name": "public.slow_a", "primary_key": ["id"]},
                                                        {"name": "public.slow_b", "primary_key": ["id"]}], ddl=SLOW)  # fmt: skip
    pool = duckdb_pool(project.config)
    assert pool and pool.startswith("rds_duckdb__replica_")
    defs = project.defs()
    assert defs.resolve_job_def("sync_all").graph.node_named("sync_tables").definition.pool == pool
    assert {a.op.pool for a in defs.assets if hasattr(a, "op") and a.op.name.startswith("rds_sync_")} == {pool}

    with dagster_dev(pg18, project.path, tmp_path / "home", (REPO / "dagster.yaml").read_text()) as dev:
        runs = [launch(dev.port, "sync_all", {"ops": {PICK_OP: {"config": {"tables": [f"public.{name}"]}}}})
                for name in ("slow_a", "slow_b")]  # fmt: skip
        assert [wait(dev.port, run_id) for run_id in runs] == ["SUCCESS", "SUCCESS"]
        instance = dev.instance()
        try:
            assert instance.event_log_storage.get_concurrency_info(pool).slot_count == 1  # set by the launcher
            spans = []
            for run_id in runs:
                events = [e for e in instance.all_logs(run_id) if e.step_key and e.step_key.startswith("sync_tables")]
                start = min(e.timestamp for e in events if e.dagster_event_type == "STEP_START")
                end = max(e.timestamp for e in events if e.dagster_event_type == "STEP_SUCCESS")
                spans.append((start, end))
        finally:
            instance.dispose()
    (first_start, first_end), (second_start, second_end) = sorted(spans)
    assert first_end <= second_start, f"the two writers overlapped: {spans}"

    with duckdb.connect(str(project.path.parent / "replica.duckdb"), read_only=True) as replica:
        for name in ("slow_a", "slow_b"):
            assert replica.execute(f"SELECT count(*), count(DISTINCT id) FROM dagster_test.{name}").fetchone() == (300, 300)
