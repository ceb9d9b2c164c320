"""deploy/helm/values.yaml on one machine: its run queue (QueuedRunCoordinator), pools, run monitoring and retries
rendered into dagster.yaml as the chart does, with a run launcher that starts each run in its own process in place
of K8sRunLauncher. dagster-daemon runs a 40-partition backfill of a large table: every partition is materialized,
the replica equals the source, and pg_stat_activity, sampled throughout, never shows more of our COPYs on the
source than the pool allows, while the backfill's runs are in progress at the same time."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg2
import yaml

from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.dagster_defs.project import make_project
from rds_pipeline_tests.dagster_dev import REPO, dagster_dev
from rds_pipeline_tests.test_webserver import graphql

VALUES = REPO / "deploy" / "helm" / "values.yaml"
ROWS = 200_000
LIMIT = 1  # the test's pool limit, set as a user would (`dagster instance concurrency set`): fewer slots than runs


def _snake(values: dict[str, Any]) -> dict[str, Any]:
    return {re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower(): value for key, value in values.items()}


def instance_yaml(values: dict[str, Any]) -> str:
    """The dagster.yaml the chart renders from ``values`` (its run coordinator, monitoring, retries and pools),
    with storage in PostgreSQL as in the shipped dagster.yaml and runs launched as processes."""
    daemon = values["dagsterDaemon"]
    queue = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert (
        daemon["runCoordinator"]["type"] == "QueuedRunCoordinator" and values["runLauncher"]["type"] == "K8sRunLauncher"
    )
    shipped = yaml.safe_load((REPO / "dagster.yaml").read_text())
    instance = {
        "storage": shipped["storage"],
        "run_coordinator": {
            "module": "dagster.core.run_coordinator",
            "class": "QueuedRunCoordinator",
            "config": {"dequeue_interval_seconds": min(queue["dequeueIntervalSeconds"], 1)},
        },
        "run_launcher": shipped["run_launcher"],  # each run in its own process, as a Kubernetes Job would be
        "run_monitoring": _snake(daemon["runMonitoring"]),
        "run_retries": _snake(daemon["runRetries"]),
        "concurrency": {"runs": _snake(values["concurrency"]["runs"]), "pools": _snake(values["concurrency"]["pools"])},
        "telemetry": values["telemetry"],
    }
    return yaml.safe_dump(instance, sort_keys=False)


class ActivitySampler(threading.Thread):
    """Samples our active queries on the source (COPYs and a step's other reads), and the runs queued or in
    progress, until stopped."""

    def __init__(self, server: LocalPostgres, database: str, port: int) -> None:
        super().__init__(daemon=True)
        self.server, self.database, self.port = server, database, port
        self.queries: list[int] = []  # ours active on the source, per sample
        self.runs_in_progress: list[int] = []  # queued or started
        self.stop = threading.Event()

    def run(self) -> None:
        # every query of ours on the source (COPYs, and a step's other reads, e.g. waiting on the lock)
        query = (
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'rds_pipeline' "
            "AND state = 'active' AND datname = current_database()"
        )
        while not self.stop.is_set():
            self.queries.append(int(self.server.psql(query, self.database).strip()))
            if len(self.queries) % 5 == 0:
                runs = graphql(
                    self.port,
                    "{ runsOrError(filter: {statuses: [QUEUED, NOT_STARTED, STARTING, STARTED]}) "
                    "{ ... on Runs { results "
                    "{ runId } } } }",
                )["runsOrError"]["results"]
                self.runs_in_progress.append(len(runs))


def test_helm_values_run_a_40_partition_backfill_within_the_pool(pg18: LocalPostgres, tmp_path: Path) -> None:
    values = yaml.safe_load(VALUES.read_text())
    deployment = values["dagster-user-deployments"]["deployments"][0]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "rds_pipeline.definitions"]  # the module the image serves
    dockerfile = (REPO / "deploy" / "Dockerfile").read_text()
    assert '"-m", "rds_pipeline.definitions"' in dockerfile and "RDS_PIPELINE_CONFIG" in dockerfile
    pg18.psql("CREATE DATABASE deploy_dst")
    project = make_project(
        pg18,
        tmp_path / "project",
        [{"name": "public.big", "method": "full_table", "chunk_rows": ROWS // 40}],
        ddl=f"CREATE TABLE big (id bigint PRIMARY KEY, v text, n numeric); INSERT INTO big SELECT g, md5(g::text), "
        f"g / 7.0 FROM generate_series(1, {ROWS}) g; ANALYZE big",
        destination={
            "type": "postgres",
            "host": pg18.host,
            "port": pg18.port,
            "user": pg18.superuser,
            "password": pg18.password,
            "database": "deploy_dst",
        },
    )
    key = {"path": ["dagster_test", "big"]}
    with dagster_dev(pg18, project.path, tmp_path / "home", instance_yaml(values)) as dev:
        dev.cli("instance", "concurrency", "set", "rds_source", str(LIMIT))
        partitions = graphql(
            dev.port,
            "query($k: AssetKeyInput!) { assetNodeOrError(assetKey: $k) { ... on AssetNode { partitionKeys } } }",
            {"k": key},
        )["assetNodeOrError"]["partitionKeys"]
        assert len(partitions) == 40
        sampler = ActivitySampler(pg18, project.database, dev.port)
        sampler.start()
        # the table stays locked until both runs are submitted: the first run's step waits on the lock holding
        # its slot, so whatever the machine's speed the second run waits for the pool while the first copies (in
        # the queue: with pools configured, the QueuedRunCoordinator holds back a run whose pool is full)
        holder = psycopg2.connect(
            host=pg18.host, port=pg18.port, user=pg18.superuser, password=pg18.password, dbname=project.database
        )
        holder.cursor().execute("LOCK TABLE big IN ACCESS EXCLUSIVE MODE")
        launched = graphql(
            dev.port,
            """
            mutation($p: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $p) {
              __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } } }""",
            {"p": {"assetSelection": [key], "allPartitions": True}},
        )["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        deadline = time.monotonic() + 120
        while not sampler.runs_in_progress or sampler.runs_in_progress[-1] < 2 or not any(sampler.queries):
            assert time.monotonic() < deadline, "the backfill's two runs were never submitted together"
            time.sleep(0.5)
        time.sleep(3)  # the second run's step has had time to reach the source, were the pool not holding it
        held = list(sampler.queries)
        holder.rollback()
        holder.close()
        status, deadline = "", time.monotonic() + 300
        while time.monotonic() < deadline:
            status = graphql(
                dev.port,
                "query($id: String!) { partitionBackfillOrError(backfillId: $id) { ... on "
                "PartitionBackfill { status } } }",
                {"id": launched["backfillId"]},
            )["partitionBackfillOrError"]["status"]
            if status in ("COMPLETED", "COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"):
                break
            time.sleep(1)
        sampler.stop.set()
        sampler.join()
        assert status in ("COMPLETED", "COMPLETED_SUCCESS"), status
        instance = dev.instance()
        try:
            records = instance.get_run_records()
            runs = [r.dagster_run for r in records]
            spans = sorted((r.create_timestamp.timestamp(), r.end_time) for r in records)
            materialized = instance.get_materialized_partitions(dg.AssetKey(key["path"]))
            limit = instance.event_log_storage.get_concurrency_info("rds_source").slot_count
        finally:
            instance.dispose()
    assert materialized == set(partitions)
    assert len(runs) >= 2 and all(r.status.value == "SUCCESS" for r in runs)
    source = pg18.psql("SELECT count(*), sum(hashtext(id || v || n)) FROM big", project.database)
    replica = pg18.psql("SELECT count(*), sum(hashtext(id || v || n)) FROM dagster_test.big", "deploy_dst")
    assert replica == source and source.startswith(str(ROWS))
    assert limit == LIMIT
    assert max(sampler.queries) == LIMIT, f"queries at once: max {max(sampler.queries)} (pool limit {LIMIT})"
    assert max(held) == LIMIT, f"while the first run waited on the lock: {max(held)} of our queries at once"
    assert any(spans[i][1] > spans[i + 1][0] for i in range(len(spans) - 1)), (
        f"no run was waiting while another ran, so the pool was not what held the queries down: {spans}"
    )
