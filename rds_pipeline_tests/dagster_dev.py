"""A real `dagster dev` (webserver, dagster-daemon, code server) on a project, with the instance's storage in
PostgreSQL: the harness of the tests that need runs launched as users launch them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from rds_pipeline.demo import dagster_dev_command
from rds_pipeline.local_postgres import LocalPostgres, free_port
from rds_pipeline_tests.test_webserver import graphql, stop_group

REPO = Path(__file__).resolve().parents[1]


@dataclass
class DagsterDev:
    port: int
    home: Path
    env: dict[str, str]

    def instance(self) -> dg.DagsterInstance:
        """The same instance, opened in the test process (for its event log and pools)."""
        from rds_pipeline_tests.cli_runs import open_instance

        return open_instance(self.home, self.env)

    def cli(self, *args: str) -> str:
        """`dagster <args>` against this instance."""
        done = subprocess.run(
            [str(Path(sys.executable).with_name("dagster")), *args],
            env=self.env,
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout


@contextmanager
def dagster_dev(server: LocalPostgres, config_path: Path, home: Path, dagster_yaml: str) -> Iterator[DagsterDev]:
    """Start `dagster dev` on ``config_path`` with ``dagster_yaml`` as its instance (storage in a new database of
    ``server``); wait until the code location has loaded; stop everything it started on exit."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(dagster_yaml, encoding="utf-8")
    database = f"dagster_{home.parent.name[-20:].lower().replace('-', '_')}_{free_port()}"
    server.psql(f'CREATE DATABASE "{database}"')
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "RDS_PIPELINE_CONFIG": str(config_path),
        "DAGSTER_PG_HOST": server.host,
        "DAGSTER_PG_PORT": str(server.port),
        "DAGSTER_PG_USER": server.superuser,
        "DAGSTER_PG_PASSWORD": server.password,
        "DAGSTER_PG_DB": database,
    }
    port = free_port()
    log = home / "dagster_dev.log"
    with open(log, "wb") as output:
        dev = subprocess.Popen(
            dagster_dev_command(port),
            env=env,
            cwd=REPO,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if graphql(port, "{ repositoriesOrError { ... on RepositoryConnection { nodes { name } } } }")[
                    "repositoriesOrError"
                ].get("nodes"):
                    break
            except OSError:
                pass
            assert dev.poll() is None, f"dagster dev exited: {log.read_text(errors='replace')[-3000:]}"
            assert time.monotonic() < deadline, "dagster dev did not come up"
            time.sleep(1)
        yield DagsterDev(port, home, env)
    finally:
        if dev.poll() is None:
            stop_group(dev)
