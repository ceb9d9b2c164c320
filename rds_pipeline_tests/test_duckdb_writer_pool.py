"""A DuckDB file allows one writer process: two runs launched at once into one file both succeed, the second
waiting in the file's pool (limit 1) instead of failing on the file's lock, and their copying steps never overlap.
The project uses declarative automation on a one-minute cron: the daemon's automation sensor requests the tables'
partitions on its own, and its runs wait in the same pool."""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
import duckdb

from rds_pipeline.dagster_defs.jobs import PICK_OP
from rds_pipeline.dagster_defs.pools import duckdb_pool
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.dagster_defs.project import make_project
from rds_pipeline_tests.dagster_dev import REPO, dagster_dev
from rds_pipeline_tests.test_webserver import launch, wait

AUTOMATION_WAIT_SECONDS = 180  # a minute's tick, the sensor's 30 s interval, the run itself
# two views that take a few seconds each to produce their rows
SLOW = (
    "CREATE VIEW slow_a AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 300) g "
    "WHERE pg_sleep(0.01) IS NOT NULL; "
    "CREATE VIEW slow_b AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 300) g "
    "WHERE pg_sleep(0.01) IS NOT NULL"
)


def test_two_runs_into_one_duckdb_file_wait_for_its_pool(pg18: LocalPostgres, tmp_path: Path) -> None:
    project = make_project(
        pg18,
        tmp_path / "project",
        [{"name": "public.slow_a", "primary_key": ["id"]}, {"name": "public.slow_b", "primary_key": ["id"]}],
        ddl=SLOW,
        automation="declarative",
        schedule={"cron": "* * * * *", "timezone": "UTC"},
    )
    pool = duckdb_pool(project.config)
    assert pool and pool.startswith("rds_duckdb__replica_")
    defs = project.defs()
    assert defs.resolve_job_def("sync_all").graph.node_named("sync_tables").definition.pool == pool
    assert {a.op.pool for a in defs.assets if hasattr(a, "op") and a.op.name.startswith("rds_sync_")} == {pool}

    with dagster_dev(pg18, project.path, tmp_path / "home", (REPO / "dagster.yaml").read_text()) as dev:
        runs = [
            launch(dev.port, "sync_all", {"ops": {PICK_OP: {"config": {"tables": [f"public.{name}"]}}}})
            for name in ("slow_a", "slow_b")
        ]
        assert [wait(dev.port, run_id) for run_id in runs] == ["SUCCESS", "SUCCESS"]
        instance = dev.instance()
        try:
            assert instance.event_log_storage.get_concurrency_info(pool).slot_count == 1  # set by the launcher
            # the automation sensor (running from the start) asks for both tables once a minute's tick has passed
            deadline = time.monotonic() + AUTOMATION_WAIT_SECONDS
            while not (automated := _automated_successes(instance, runs)):
                assert time.monotonic() < deadline, "the automation sensor never launched a run that succeeded"
                time.sleep(2)
            assert {k.path[-1] for r in automated for k in r.asset_selection or ()} >= {"slow_a", "slow_b"}
            spans = [_copying_span(instance, r) for r in [*runs, *(a.run_id for a in automated)]]
        finally:
            instance.dispose()
    ordered = sorted(spans)
    assert all(earlier[1] <= later[0] for earlier, later in zip(ordered, ordered[1:], strict=False)), (
        f"two writers overlapped: {ordered}"
    )

    with duckdb.connect(str(project.path.parent / "replica.duckdb"), read_only=True) as replica:
        for name in ("slow_a", "slow_b"):
            assert replica.execute(f"SELECT count(*), count(DISTINCT id) FROM dagster_test.{name}").fetchone() == (
                300,
                300,
            )


def _automated_successes(instance: dg.DagsterInstance, manual: list[str]) -> list[dg.DagsterRun]:
    """Runs the automation sensor launched (not ours) that succeeded; none while any of its runs is still going."""
    others = [r for r in instance.get_runs() if r.run_id not in manual]
    if not others or any(not r.is_finished for r in others):
        return []
    return [r for r in others if r.status == dg.DagsterRunStatus.SUCCESS]


def _copying_span(instance: dg.DagsterInstance, run_id: str) -> tuple[float, float]:
    """When the run's copying step (sync_tables, or the group's multi-asset) started and ended."""
    events = [
        e for e in instance.all_logs(run_id) if e.step_key and e.step_key.startswith(("sync_tables", "rds_sync_"))
    ]
    return (
        min(e.timestamp for e in events if e.dagster_event_type == "STEP_START"),
        max(e.timestamp for e in events if e.dagster_event_type == "STEP_SUCCESS"),
    )
