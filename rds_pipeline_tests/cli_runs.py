"""`rds-pipeline sync` as a cron user runs it: a real process, in a Dagster instance with no daemon (Dagster's
default one, a DAGSTER_HOME without dagster.yaml, or the shipped dagster.yaml with its storage in PostgreSQL),
killed or signalled by the tests as the system would."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from rds_pipeline.local_postgres import LocalPostgres, free_port

REPO = Path(__file__).resolve().parents[1]
INSTANCES = ("default", "shipped")


@dataclass
class Cli:
    """One project's `rds-pipeline` commands against one instance."""

    config: Path
    home: Path
    env: dict[str, str]

    def start(self, *args: str) -> subprocess.Popen[str]:
        """The command in its own process group (as a shell starts a job), its output captured."""
        return subprocess.Popen(
            [sys.executable, "-m", "rds_pipeline.cli", *args, "--config", str(self.config)],
            env=self.env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    def run(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        process = self.start(*args)
        try:
            out, err = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, err = process.communicate()
            raise AssertionError(
                f"`rds-pipeline {' '.join(args)}` still ran after {timeout:.0f} s:\n{err[-3000:]}"
            ) from None
        return subprocess.CompletedProcess(process.args, process.returncode, out, err)

    def instance(self) -> dg.DagsterInstance:
        return open_instance(self.home, self.env)

    def runs(self) -> list[dg.DagsterRun]:
        instance = self.instance()
        try:
            return list(instance.get_runs())
        finally:
            instance.dispose()


def open_instance(home: Path, env: dict[str, str]) -> dg.DagsterInstance:
    """The instance in ``home``, opened in the test process with ``env``'s DAGSTER_PG_* (its storage)."""
    saved = {k: os.environ.get(k) for k in env if k.startswith("DAGSTER_PG_")}
    os.environ.update({k: v for k, v in env.items() if k.startswith("DAGSTER_PG_")})
    try:
        return dg.DagsterInstance.from_config(str(home))
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def make_cli(server: LocalPostgres, config: Path, home: Path, kind: str) -> Cli:
    """``kind``: ``default`` (no dagster.yaml: SQLite, no run launcher of ours, no daemon) or ``shipped`` (the
    repository's dagster.yaml, its storage in a new database of ``server``); neither runs a daemon."""
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    if kind == "shipped":
        shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
        database = f"dagster_cli_{free_port()}"
        server.psql(f'CREATE DATABASE "{database}"')
        env.update(
            {
                "DAGSTER_PG_HOST": server.host,
                "DAGSTER_PG_PORT": str(server.port),
                "DAGSTER_PG_USER": server.superuser,
                "DAGSTER_PG_PASSWORD": server.password,
                "DAGSTER_PG_DB": database,
            }
        )
    return Cli(config, home, env)


def wait_for(condition: Callable[[], object], seconds: float, what: str, every: float = 0.1) -> object:
    deadline = time.monotonic() + seconds
    while not (value := condition()):
        assert time.monotonic() < deadline, f"{what}: not within {seconds:.0f} s"
        time.sleep(every)
    return value


def source_backends(server: LocalPostgres, database: str, query_like: str = "%") -> int:
    """Our backends on the source database (application_name rds_pipeline) whose query is like ``query_like``."""
    return int(
        server.psql(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'rds_pipeline' "
            f"AND datname = current_database() AND backend_type = 'client backend' "
            f"AND state <> 'idle' AND query LIKE '{query_like}'",
            database,
        ).strip()
    )


def kill_9(process: subprocess.Popen[str]) -> None:
    """What the OOM killer or a lost container does: the whole process group, with no chance to clean up."""
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate()
