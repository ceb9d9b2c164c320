"""`make screenshots`: the Dagster UI as users see it, on the Pagila demo, captured in Debian's headless Chromium
into docs/screenshots/ (the README embeds them): the asset graph, a view's lineage, a table's partitions, a run
with its loading report, and the checks."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver

from rds_pipeline.demo import dagster_dev_command
from rds_pipeline.local_postgres import free_port
from rds_pipeline_tests.chromium import body_text, chromium, open_page
from rds_pipeline_tests.test_webserver import graphql, stop_group

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "screenshots"
EXPANDED = "expanded=global%40global%3Apublic%2Cglobal%40global%3Ards_source"


def zoom_out(driver: WebDriver, steps: int) -> None:
    for _ in range(steps):
        driver.execute_script("document.querySelector('[aria-label=zoom_out]').closest('button').click()")
        time.sleep(0.3)
    time.sleep(1.5)


def capture(driver: WebDriver, base: str, run_id: str) -> list[Path]:
    shots = []

    def shot(name: str, path: str, ready: str, zoom: int = 0) -> None:
        open_page(driver, base + path, lambda d: ready in body_text(d), ready)
        if zoom:
            zoom_out(driver, zoom)
        target = OUT / f"{name}.png"
        driver.save_screenshot(str(target))
        shots.append(target)

    shot("asset_graph", f"/asset-groups?{EXPANDED}", "rds_source", zoom=4)
    shot(
        "view_lineage",
        "/assets/pagila_demo/actor_info?view=lineage&lineageScope=upstream&lineageDepth=2",
        "film_category",
    )
    shot("partitions", "/assets/pagila_demo/payment?view=partitions", "Materialized (")
    shot("run_loading_report", f"/runs/{run_id}?logs=type%3AASSET_MATERIALIZATION", "rows_inserted")
    shot("checks", "/assets/pagila_demo/film?view=checks", "replica_matches_source")
    return shots


def main() -> int:
    from rds_pipeline.demo import prepare

    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="rds_screens_") as root:
        setup, env = prepare(Path(root) / "demo")
        process = None
        try:
            import dagster as dg

            from rds_pipeline.dagster_defs.run import run_sync

            with dg.DagsterInstance.get() as instance:  # the demo's sync_all run, with its loading report
                if not run_sync(setup.config_path, instance=instance, quiet=True).success:
                    print("the demo sync failed: see `make demo`", file=sys.stderr)
                    return 1
            port = free_port()
            process = subprocess.Popen(
                dagster_dev_command(port),
                env={**os.environ, **env},
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            deadline = time.monotonic() + 120
            while True:
                try:
                    runs = graphql(port, "{ runsOrError { ... on Runs { results { runId jobName } } } }")
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise TimeoutError("dagster dev did not come up in 120 s") from None
                    time.sleep(1)
            run_id = next(r["runId"] for r in runs["runsOrError"]["results"] if r["jobName"] == "sync_all")
            with chromium() as driver:
                driver.find_elements(By.TAG_NAME, "body")
                shots = capture(driver, f"http://127.0.0.1:{port}", run_id)
        finally:
            if process is not None:
                stop_group(process)
            setup.server.stop()
    for path in shots:
        print(f"wrote {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
