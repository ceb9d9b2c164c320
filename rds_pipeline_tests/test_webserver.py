"""The demo setup served by a real `dagster dev` (webserver and daemon): the asset graph with view -> table
lineage over GraphQL, one partition's materialization launched through the API, and a reset from the UI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

from rds_pipeline.demo import dagster_dev_command
from rds_pipeline.local_postgres import free_port

REPO = Path(__file__).resolve().parents[1]


def graphql(port: int, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        payload = json.loads(response.read())
    assert "errors" not in payload, payload
    return payload["data"]


def launch(port: int, job: str, run_config: dict[str, Any] | None = None, **selector: Any) -> str:
    """launchRun of ``job`` (extra ``selector`` keys, e.g. assetSelection; ``tags`` go to executionMetadata)."""
    tags = selector.pop("tags", {})
    params: dict[str, Any] = {
        "selector": {
            "repositoryLocationName": "rds_pipeline",
            "repositoryName": "__repository__",
            "jobName": job,
            **selector,
        },
        "runConfigData": run_config or {},
        "executionMetadata": {"tags": [{"key": k, "value": v} for k, v in tags.items()]},
    }
    launched = graphql(
        port,
        """
        mutation($params: ExecutionParams!) { launchRun(executionParams: $params) {
          __typename ... on LaunchRunSuccess { run { runId } } ... on PythonError { message } } }""",
        {"params": params},
    )["launchRun"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    return launched["run"]["runId"]


def wait(port: int, run_id: str, seconds: float = 180) -> str:
    deadline = time.monotonic() + seconds
    status = ""
    while time.monotonic() < deadline:
        status = graphql(port, "query($id: ID!) { runOrError(runId: $id) { ... on Run { status } } }", {"id": run_id})[
            "runOrError"
        ]["status"]
        if status in ("SUCCESS", "FAILURE", "CANCELED"):
            break
        time.sleep(1)
    return status


def stop_group(process: subprocess.Popen[bytes], seconds: float = 60) -> None:
    """Stop `dagster dev` (started in its own session) and everything under it; bounded, then killed."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)


def test_graphql_asset_graph_and_partition_launch(tmp_path: Path) -> None:
    from rds_pipeline.demo import prepare

    setup, env = prepare(tmp_path / "demo")
    port = free_port()
    process = subprocess.Popen(
        dagster_dev_command(port),
        env={**os.environ, **env},
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                data = graphql(
                    port, "{ repositoriesOrError { __typename ... on RepositoryConnection { nodes { name } } } }"
                )
                if data["repositoriesOrError"].get("nodes"):
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "dagster dev did not come up"
            time.sleep(1)

        nodes = graphql(port, "{ assetNodes { assetKey { path } dependencyKeys { path } groupName } }")["assetNodes"]
        deps = {"/".join(n["assetKey"]["path"]): {"/".join(d["path"]) for d in n["dependencyKeys"]} for n in nodes}
        assert deps["source/pagila/public/actor_info"] == {
            f"source/pagila/public/{t}" for t in ("actor", "category", "film", "film_actor", "film_category")
        }
        assert deps["pagila_demo/actor_info"] == {"source/pagila/public/actor_info"}
        assert deps["pagila_demo/legacy__rental"] == {"source/pagila/legacy/rental"}

        status = wait(
            port,
            launch(
                port,
                "__ASSET_JOB",
                assetSelection=[{"path": ["pagila_demo", "film"]}],
                tags={"dagster/partition": "all"},
            ),
        )
        assert status == "SUCCESS"
        materialized = graphql(
            port,
            """{ assetNodeOrError(assetKey: {path: ["pagila_demo", "film"]}) {
            ... on AssetNode { assetMaterializations(limit: 1) { partition metadataEntries { label } } } } }""",
        )
        [event] = materialized["assetNodeOrError"]["assetMaterializations"]
        assert event["partition"] == "all"
        assert {"dagster/row_count", "rows_inserted", "query"} <= {m["label"] for m in event["metadataEntries"]}

        # reset a key-based table from the UI (the reset_table job): its whole history comes back, every
        # monthly window shows as materialized, and its checks ran
        status = wait(
            port, launch(port, "reset_table", {"ops": {"reset_and_resync": {"config": {"table": "public.payment"}}}})
        )
        assert status == "SUCCESS"
        node = graphql(
            port,
            """{ assetNodeOrError(assetKey: {path: ["pagila_demo", "payment"]}) { ... on AssetNode {
            partitionKeys partitionStats { numMaterialized } } } }""",
        )["assetNodeOrError"]
        assert node["partitionStats"]["numMaterialized"] == len(node["partitionKeys"]) > 200
        import duckdb

        replica = duckdb.connect(str(setup.root / "replica.duckdb"), read_only=True)
        copied = replica.execute("SELECT count(*) FROM pagila_demo.payment").fetchone()[0]
        replica.close()
        assert copied == int(setup.server.psql("SELECT count(*) FROM payment", "pagila").strip())
        ui_shows_replicas_and_their_lineage(port, len(node["partitionKeys"]))
    finally:
        stop_group(process)
        setup.server.stop()


def ui_shows_replicas_and_their_lineage(port: int, payment_windows: int) -> None:
    """The UI itself, in Chromium: the graph draws the replicas (materialized) downstream of their source
    assets, a replicated view's source downstream of its base tables, and the partitions page the windows."""
    from selenium.webdriver.common.by import By

    from rds_pipeline_tests.chromium import available, body_text, chromium, open_page

    assert available(), "Debian's chromium and chromium-driver are needed (.ci/run installs them)"
    base = f"http://127.0.0.1:{port}"

    def nodes(driver, name: str) -> list:  # noqa: ANN001 - graph nodes labelled exactly ``name``
        return driver.find_elements(By.XPATH, f"//*[local-name()='foreignObject']//*[normalize-space(text())='{name}']")

    with chromium() as driver:
        open_page(
            driver,
            f"{base}/assets/pagila_demo/actor_info?view=lineage&lineageScope=upstream&lineageDepth=2",
            lambda d: nodes(d, "film_category"),
            "the view's upstream lineage",
        )
        assert "Join the Dagster community" not in body_text(driver)  # the first-visit dialog was dismissed
        assert len(nodes(driver, "actor_info")) == 2  # the replica and its source view
        for table in ("actor", "category", "film", "film_actor", "film_category"):  # the view's base tables
            assert len(nodes(driver, table)) == 1, table
        groups = {
            e.text.strip()
            for e in driver.find_elements(By.XPATH, "//*[local-name()='foreignObject']//*[normalize-space(text())]")
        }
        assert {"rds_source", "public"} <= groups
        edges = driver.find_elements(By.CSS_SELECTOR, "svg path")
        assert len(edges) >= 6, f"{len(edges)} edges drawn"  # five base tables into the view, the view into its replica

        open_page(
            driver,
            f"{base}/assets/pagila_demo/payment?view=partitions",
            lambda d: "Materialized (" in body_text(d),
            "the partitions",
        )
        assert f"Materialized ({payment_windows})" in body_text(driver)
