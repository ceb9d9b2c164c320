"""A run killed with kill -9 does not stay STARTED: under `dagster dev` (webserver, daemon, code server) and the
shipped dagster.yaml (storage in PostgreSQL, run monitoring on), the run ends FAILURE within the monitoring
interval, its source backend does not outlive it, its pool slot comes back, and the next run succeeds. The
shipped ops and assets carry a RetryPolicy."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import dagster as dg
import yaml

from rds_pipeline.dagster_defs.run_process import PID_TAG
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.dagster_defs.project import make_project
from rds_pipeline_tests.dagster_dev import dagster_dev
from rds_pipeline_tests.test_webserver import graphql, launch, wait

REPO = Path(__file__).resolve().parents[1]
# a view that takes about a minute to produce its rows: the run is still copying when it is killed
SLOW_VIEW = (
    "CREATE VIEW slow AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 3000) g "
    "WHERE pg_sleep(0.02) IS NOT NULL"
)


def _copying_process(server: LocalPostgres, database: str) -> int | None:
    """The pid of the process whose connection runs our COPY on the source: the run's worker (found through
    the backend's client port, /proc/net/tcp and the process's sockets)."""
    port = server.psql(
        "SELECT client_port FROM pg_stat_activity WHERE application_name = 'rds_pipeline' "
        "AND query LIKE 'COPY%' AND datname = current_database() LIMIT 1",
        database,
    ).strip()
    if not port:
        return None
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[1].split(":")[1], 16) == int(port):  # local address of the client's end
            inodes.add(fields[9])
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                links = {os.readlink(fd) for fd in (entry / "fd").iterdir()}
            except OSError:
                continue
            if any(f"socket:[{inode}]" in links for inode in inodes):
                return int(entry.name)
    return None


def test_a_run_killed_with_kill_9_ends_failed(pg18: LocalPostgres, tmp_path: Path) -> None:
    project = make_project(pg18, tmp_path / "project", [{"name": "public.slow", "primary_key": ["id"]}], ddl=SLOW_VIEW)
    defs = project.defs()
    policies = [
        a.op.retry_policy
        for a in defs.assets
        if isinstance(a, dg.AssetsDefinition) and a.op.name.startswith(("rds_sync_", "rds_stream_"))
    ]
    policies += [defs.resolve_job_def("sync_all").graph.node_named("sync_tables").definition.retry_policy]
    assert policies and all(p is not None and p.max_retries >= 1 and p.backoff is not None for p in policies)

    shipped = (REPO / "dagster.yaml").read_text()
    monitoring = yaml.safe_load(shipped)["run_monitoring"]
    assert monitoring["enabled"] is True
    with dagster_dev(pg18, project.path, tmp_path / "home", shipped) as dev:
        port = dev.port
        run_id = launch(port, "sync_all", tags={"dagster/max_retries": "0"})  # this run is not retried
        deadline = time.monotonic() + 90
        while _copying_process(pg18, project.database) is None:
            assert time.monotonic() < deadline, "the run never started copying"
            time.sleep(0.5)
        tags = graphql(
            port, "query($id: ID!) { runOrError(runId: $id) { ... on Run { tags { key value } } } }", {"id": run_id}
        )["runOrError"]["tags"]
        pid = int(next(t["value"] for t in tags if t["key"] == PID_TAG))  # the launcher's run process
        assert _copying_process(pg18, project.database) in {pid, *_children(pid)}  # it (or its step) copies
        os.killpg(pid, signal.SIGKILL)  # the run process and its step processes, as a container kill would
        killed = time.monotonic()
        status = ""
        while time.monotonic() - killed < monitoring["poll_interval_seconds"] + 30:
            status = graphql(
                port, "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }", {"id": run_id}
            )["runOrError"]["status"]
            if status != "STARTED":
                break
            time.sleep(1)
        assert status == "FAILURE", f"the killed run is {status} {time.monotonic() - killed:.0f} s later"
        deadline = time.monotonic() + 30
        while _copying(pg18, project.database) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _copying(pg18, project.database) == 0, "the killed run's COPY is still on the source"
        # its slot in the DuckDB file's pool (limit 1) comes back, so the next run is not blocked for good
        instance = dev.instance()
        try:
            deadline = (
                time.monotonic()
                + monitoring["free_slots_after_run_end_seconds"]
                + monitoring["poll_interval_seconds"]
                + 30
            )
            while run_id in instance.event_log_storage.get_concurrency_run_ids():
                assert time.monotonic() < deadline, "the killed run still holds its pool slot"
                time.sleep(1)
        finally:
            instance.dispose()
        pg18.psql(
            "CREATE OR REPLACE VIEW slow AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 30) g",
            project.database,
        )
        assert wait(port, launch(port, "sync_all")) == "SUCCESS"  # the next run gets the slot and catches up


def _children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found |= {int(entry.name), *_children(int(entry.name))}
            except (OSError, IndexError, ValueError):
                continue
    return found


def _copying(server: LocalPostgres, database: str) -> int:
    return int(
        server.psql(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'rds_pipeline' "
            "AND query LIKE 'COPY%' AND datname = current_database()",
            database,
        ).strip()
    )
