"""``rds-pipeline test-connection`` as a user runs it: a subprocess, a config file, secrets in the environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.conftest import SOURCE_PASSWORD, SshFixture

PASSPHRASE_ENV = "TEST_SSH_PASSPHRASE"


def run_cli(
    tmp_path: Path, source: dict, *args: str, command: str = "test-connection", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    config = {
        "integration_name": "CLI Test",
        "source": {"user": "postgres", "password": "${TEST_PW}", "database": "pagila", "connect_timeout": 3, **source},
        "destination": {"type": "duckdb", "path": "replica.duckdb"},
    }
    path = tmp_path / "rds_pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    environment = {**os.environ, "TEST_PW": SOURCE_PASSWORD, "RDS_PIPELINE_CONFIG": str(path), **(env or {})}
    result = subprocess.run(
        [sys.executable, "-m", "rds_pipeline.cli", command, *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
    )
    assert SOURCE_PASSWORD not in result.stdout + result.stderr
    return result


def test_prints_version_time_ssl_and_replica(pg18: LocalPostgres, tmp_path: Path) -> None:
    result = run_cli(tmp_path, {"host": pg18.host, "port": pg18.port})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Testing connection to postgres@127.0.0.1:")
    assert lines[1].startswith("Connected in ") and lines[1].endswith("s.")
    assert "Server version: 18." in result.stdout
    assert "SSL: not in use" in result.stdout
    assert "Read replica: no (primary)" in result.stdout
    assert lines[-1] == "Connection test passed."


def test_replica_settings_and_advice(replica: LocalPostgres, tmp_path: Path) -> None:
    result = run_cli(tmp_path, {"host": replica.host, "port": replica.port})
    assert result.returncode == 0, result.stderr
    assert "Read replica: yes" in result.stdout
    assert "  hot_standby = on" in result.stdout
    assert "  max_standby_archive_delay = 30000 ms" in result.stdout
    assert "  max_standby_streaming_delay = 30000 ms" in result.stdout
    assert result.stdout.count("Raise it to 8-12 hours during historical syncs") == 2


def test_failures_exit_non_zero_with_the_fix(pg18: LocalPostgres, tmp_path: Path) -> None:
    result = run_cli(tmp_path, {"host": pg18.host, "port": pg18.port, "database": "missing_db"})
    assert result.returncode == 1
    assert result.stderr.startswith("Connection test FAILED [database_missing]: The database 'missing_db' does not")
    assert "\nFix: " in result.stderr
    # another command names itself, not a connection test
    found = run_cli(tmp_path, {"host": pg18.host, "port": pg18.port, "database": "missing_db"}, command="discover")
    assert found.returncode == 1 and "Traceback" not in found.stderr
    assert found.stderr.startswith("discover: the connection FAILED [database_missing]: The database 'missing_db'")


def test_an_instance_that_cannot_load_names_the_variable(pg18: LocalPostgres, tmp_path: Path) -> None:
    """`status` with DAGSTER_HOME at the shipped dagster.yaml, its PostgreSQL variables unset: one line, the fix."""
    home = tmp_path / "home"
    home.mkdir()
    home.joinpath("dagster.yaml").write_text((Path(__file__).parents[1] / "dagster.yaml").read_text())
    unset = {k: "" for k in os.environ if k.startswith("DAGSTER_PG_")}
    result = run_cli(
        tmp_path, {"host": pg18.host, "port": pg18.port}, command="status", env={"DAGSTER_HOME": str(home), **unset}
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"status FAILED: the Dagster instance in DAGSTER_HOME={home} cannot load")
    assert "DAGSTER_PG_" in result.stderr and "Fix: export DAGSTER_PG_" in result.stderr


def test_config_errors_exit_2_naming_the_key(pg18: LocalPostgres, tmp_path: Path) -> None:
    result = run_cli(tmp_path, {"host": f"{pg18.host}:{pg18.port}", "port": pg18.port})
    assert result.returncode == 2
    assert f"source.host: '{pg18.host}:{pg18.port}' includes a port. Fix: remove" in result.stderr


def test_tunnel_output_hides_the_passphrase(pg18: LocalPostgres, sshd: SshFixture, tmp_path: Path) -> None:
    key = sshd.keys["ed25519"]
    ssh = {
        "host": "127.0.0.1",
        "port": sshd.server.port,
        "user": sshd.server.user,
        "private_key": str(key.path),
        "passphrase": "${" + PASSPHRASE_ENV + "}",
        "known_hosts": str(sshd.known_hosts),
    }
    os.environ[PASSPHRASE_ENV] = key.passphrase or ""
    try:
        ok = run_cli(tmp_path, {"host": pg18.host, "port": pg18.port, "ssh": ssh}, "--verbose")
        os.environ[PASSPHRASE_ENV] = "a wrong passphrase"
        bad = run_cli(tmp_path, {"host": pg18.host, "port": pg18.port, "ssh": ssh}, "--verbose")
    finally:
        del os.environ[PASSPHRASE_ENV]
    assert ok.returncode == 0, ok.stderr
    assert "through the SSH tunnel" in ok.stdout
    assert bad.returncode == 1 and "[ssh_key_passphrase]" in bad.stderr
    for output in (ok.stdout + ok.stderr, bad.stdout + bad.stderr):
        assert key.passphrase not in output and "a wrong passphrase" not in output


def test_verify_names_the_ranges_and_repair_fixes_them(pg18: LocalPostgres, tmp_path: Path) -> None:
    """`rds-pipeline verify` exits 0 on a clean replica and 1 naming the range of a row edited by hand; `repair`
    re-copies that range; `verify` passes again."""
    from rds_pipeline.engine.destinations.duckdb import run
    from rds_pipeline.engine.replication.sync import sync_table
    from rds_pipeline.engine.source.session import SourceSession
    from rds_pipeline_tests.dagster_defs.project import make_project

    project = make_project(
        pg18,
        tmp_path,
        [{"name": "public.people"}],
        ddl="CREATE TABLE people (id uuid PRIMARY KEY, name text);"
        "INSERT INTO people SELECT md5(g::text)::uuid, 'p' || g FROM generate_series(1, 3000) g; ANALYZE people",
    )
    table = project.table("public.people")
    destination = project.destination()
    with SourceSession(project.config.source) as session:
        sync_table(session, destination, table)

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "rds_pipeline.cli", *args, "--config", str(project.path)],
            capture_output=True,
            text=True,
            timeout=120,
        )

    run(destination.conn, f"UPDATE {destination.target(table)} SET name = 'edited' WHERE name = 'p7'")
    destination.close()  # DuckDB: one writer at a time
    found = cli("verify")
    assert found.returncode == 1, found.stderr
    assert found.stdout.startswith("DIFFERS ") and "1 of " in found.stdout and "different values" in found.stdout
    assert "Fix: `rds-pipeline repair" in found.stdout
    sampled = cli("verify", "public.people", "--sample", "0.1")
    assert "(a sample of " in sampled.stdout
    fixed = cli("repair", "public.people")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert fixed.stdout.count("repaired ") == 1 and fixed.stdout.splitlines()[-1].startswith("ok ")
    again = cli("verify")
    assert again.returncode == 0 and again.stdout.startswith("ok ")
    bad = cli("verify", "--sample", "2")
    assert bad.returncode != 0 and "--sample: expected a fraction" in bad.stderr
