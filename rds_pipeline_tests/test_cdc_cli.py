"""``rds-pipeline check`` and ``rds-pipeline cdc setup | status | drop`` as a user runs them (subprocesses, a
config file): each refusal names the table and prints the fix; each command prints the SQL it runs, or the
SQL an admin should run when the user lacks the right."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from rds_pipeline.engine.config import load_config
from rds_pipeline.engine.destinations.factory import open_destination
from rds_pipeline.engine.replication.cdc.flow import sync_log_based
from rds_pipeline.engine.selection import resolve_selection
from rds_pipeline.engine.source.catalog import Catalog
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.engine.sync_helpers import make_scratch

LIMITED_PASSWORD = "limited-pw-1"


def cli(path: Path, *args: str, password: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SRC_PW": password, "RDS_PIPELINE_CONFIG": str(path)}
    result = subprocess.run(
        [sys.executable, "-m", "rds_pipeline.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )
    assert password not in result.stdout + result.stderr
    return result


def write_config(tmp_path: Path, server: LocalPostgres, source_db: str, dest_db: str, user: str) -> Path:
    config = {
        "integration_name": "Cdc Cli",
        "source": {
            "host": server.host,
            "port": server.port,
            "user": user,
            "password": "${SRC_PW}",
            "database": source_db,
        },
        "destination": {
            "type": "postgres",
            "host": server.host,
            "port": server.port,
            "user": server.superuser,
            "password": server.password,
            "database": dest_db,
        },
        "tables": [
            {"name": "public.t", "method": "log_based"},
            {"name": "public.nokey", "method": "log_based", "primary_key": ["a"]},
        ],
    }
    path = tmp_path / user / "rds_pipeline.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    return path


def test_check_and_cdc_commands(logical18: LocalPostgres, tmp_path: Path) -> None:
    server = logical18
    scratch = make_scratch(server, "unused")
    scratch.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b'); "
        "CREATE TABLE nokey (a int, b text); INSERT INTO nokey VALUES (1, 'x')"
    )
    path = write_config(tmp_path, server, scratch.source_db, scratch.dest_db, server.superuser)
    password = server.password
    assert cli(path, "discover", password=password).returncode == 0

    check = cli(path, "check", password=password)
    assert check.returncode == 1
    assert (
        "[ERROR  ] src_" in check.stdout
        and ".public.nokey: has replica identity default and no primary key" in check.stdout
    )
    assert (
        'fix: ALTER TABLE "public"."nokey" ADD PRIMARY KEY (…);  -- or: ALTER TABLE "public"."nokey" REPLICA '
        "IDENTITY FULL;" in check.stdout
    )
    assert "[WARNING] max_slot_wal_keep_size: is unlimited" in check.stdout

    refused = cli(path, "cdc", "setup", password=password)
    assert refused.returncode == 1 and "nokey: has replica identity default" in refused.stderr
    assert "pg_publication" not in scratch.sql("SELECT 'pg_publication' FROM pg_publication")  # nothing was created
    scratch.sql("ALTER TABLE nokey REPLICA IDENTITY FULL")
    setup = cli(path, "cdc", "setup", password=password)
    assert setup.returncode == 0, setup.stderr
    assert setup.stdout.splitlines() == [
        'CREATE PUBLICATION "rds_pipeline_cdc_cli" FOR TABLE "public"."t", "public"."nokey" WITH '
        "(publish_via_partition_root = true, publish_generated_columns = stored);",
        "SELECT pg_create_logical_replication_slot('rds_pipeline_cdc_cli', 'pgoutput', false, false, true);",
    ]
    rechecked = cli(path, "check", password=password)  # ready now: warnings only, so it passes
    assert rechecked.returncode == 0, rechecked.stdout + rechecked.stderr
    assert "[ERROR" not in rechecked.stdout and "[WARNING] max_slot_wal_keep_size" in rechecked.stdout

    # the first sync after `cdc setup`: each table gets its own snapshot, after the slot's position
    os.environ["SRC_PW"] = password
    try:
        config = load_config(path)
        selection = resolve_selection(config.tables, Catalog.load(config.catalog_path), scratch.source_db)
        dest = open_destination(config)
        scratch.sql("UPDATE t SET v = 'changed' WHERE id = 1")
        first = sync_log_based(config, dest, selection)  # type: ignore[arg-type]
        assert set(first.snapshots) == {t.id for t in selection} and not first.failures
        scratch.sql("DELETE FROM t WHERE id = 2")
        second = sync_log_based(config, dest, selection)  # type: ignore[arg-type]
        assert second.changes(selection[0].id) == {"delete": 1}
        dest.close()
    finally:
        del os.environ["SRC_PW"]
    status = cli(path, "cdc", "status", password=password)
    assert status.returncode == 0, status.stderr
    assert "publication rds_pipeline_cdc_cli: public.nokey, public.t" in status.stdout
    assert "slot rds_pipeline_cdc_cli: idle; confirmed " in status.stdout and "wal_status reserved" in status.stdout
    assert "streaming (snapshot at " in status.stdout and "needs a snapshot" not in status.stdout

    # a user who does not own the publication: the SQL for an admin, nothing changed
    scratch.sql(
        f"CREATE ROLE limited LOGIN REPLICATION PASSWORD '{LIMITED_PASSWORD}'; "
        "GRANT SELECT ON ALL TABLES IN SCHEMA public TO limited; "
        "CREATE TABLE later (id int PRIMARY KEY); GRANT SELECT ON later TO limited"
    )
    limited = write_config(tmp_path, server, scratch.source_db, scratch.dest_db, "limited")
    data = yaml.safe_load(limited.read_text())
    data["tables"].append({"name": "public.later", "method": "log_based"})
    limited.write_text(yaml.safe_dump(data))
    assert cli(limited, "discover", password=LIMITED_PASSWORD).returncode == 0
    denied = cli(limited, "cdc", "setup", password=LIMITED_PASSWORD)
    assert denied.returncode == 1
    assert "must be owner of publication rds_pipeline_cdc_cli. Fix: ask an admin" in denied.stderr
    assert 'ALTER PUBLICATION "rds_pipeline_cdc_cli" ADD TABLE "public"."later";' in denied.stderr

    dropped = cli(path, "cdc", "drop", password=password)
    assert dropped.returncode == 0, dropped.stderr
    assert dropped.stdout.splitlines() == [
        "SELECT pg_drop_replication_slot('rds_pipeline_cdc_cli');",
        'DROP PUBLICATION "rds_pipeline_cdc_cli";',
        "-- destination: stream state of rds_pipeline_cdc_cli forgotten; 2 table(s) will be copied again from a "
        "new snapshot at the next sync",
    ]
    after = cli(path, "cdc", "status", password=password)
    assert "slot rds_pipeline_cdc_cli: missing" in after.stdout and "needs a snapshot (next sync)" in after.stdout
    assert (
        scratch.sql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'rds_pipeline_cdc_cli'").strip() == "0"
    )
    scratch.sql("DROP OWNED BY limited; DROP ROLE limited")
