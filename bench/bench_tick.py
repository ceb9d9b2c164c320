"""Benchmark: one tick over many small tables, through Dagster, against a shell loop of ``psql | psql``.

    .venv/bin/python -m bench.bench_tick --tables 500 --rows 1000

Side by side in one run on one embedded PostgreSQL 18 (source and destination databases on the same server):
- ``rds-pipeline sync`` (process wall time: start, definitions, the run in process, the report), its run
  recorded in the shipped dagster.yaml's instance (storage in PostgreSQL), and again in Dagster's default
  instance (a DAGSTER_HOME without dagster.yaml: SQLite);
- the sync_all run launched out of process with the multiprocess executor and the ``rds_source`` pool
  limited to 2 slots (what the daemon does with a schedule tick);
- the reference: for each table, ``psql -c "COPY … TO STDOUT" | psql -c "COPY … FROM STDIN"`` in a shell loop.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench.bench_engine import machine
from rds_pipeline.local_postgres import LocalPostgres, embedded_bin_dir

LAUNCH_CHILD = """
import json, sys, time
import dagster as dg
from rds_pipeline.definitions import sync_all_job
started = time.monotonic()
with dg.DagsterInstance.get() as instance:
    result = dg.execute_job(dg.reconstructable(sync_all_job), instance=instance,
                            run_config={"ops": {"pick_tables": {"config": {"parallel": int(sys.argv[1])}}}})
    assert result.success, "the run failed"
print(json.dumps({"seconds": time.monotonic() - started}))
"""


def setup(base: Path, tables: int, rows: int) -> tuple[LocalPostgres, Path]:
    server = LocalPostgres(
        embedded_bin_dir(),
        base / "pg",
        settings={"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off", "max_connections": "200"},
    )
    server.start()
    server.psql("CREATE DATABASE tick_src")
    server.psql(
        f"""
        DO $$ BEGIN FOR i IN 0..{tables - 1} LOOP
          EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY, v text, n int)', lpad(i::text, 4, '0'));
          EXECUTE format('INSERT INTO t%s SELECT g, md5(g::text), g %% 7 FROM generate_series(1, {rows}) g',
                         lpad(i::text, 4, '0'));
        END LOOP; END $$;
        ANALYZE;""",
        "tick_src",
    )
    project = base / "project"
    project.mkdir()
    creds = {"host": server.host, "port": server.port, "user": server.superuser, "password": server.password}
    (project / "rds_pipeline.yaml").write_text(
        yaml.safe_dump(
            {
                "integration_name": "Tick Bench",
                "source": {**creds, "database": "tick_src"},
                "destination": {"type": "postgres", **creds, "database": "tick_dst"},
                "tables": [f"public.t{i:04d}" for i in range(tables)],
            },
            sort_keys=False,
        )
    )
    home = base / "dagster_home"
    home.mkdir()
    shutil.copyfile(Path(__file__).resolve().parents[1] / "dagster.yaml", home / "dagster.yaml")  # as shipped
    server.psql("CREATE DATABASE dagster")
    return server, project / "rds_pipeline.yaml"


def fresh_destination(server: LocalPostgres) -> None:
    server.psql("DROP DATABASE IF EXISTS tick_dst")
    server.psql("CREATE DATABASE tick_dst")


def run(tables: int = 500, rows: int = 1000) -> dict[str, object]:
    base = Path(tempfile.mkdtemp(prefix="rds_bench_tick_"))
    base.chmod(0o755)
    server, config = setup(base, tables, rows)
    env = {
        **os.environ,
        "RDS_PIPELINE_CONFIG": str(config),
        "DAGSTER_HOME": str(base / "dagster_home"),
        "PGPASSWORD": server.password,
        "DAGSTER_PG_HOST": server.host,
        "DAGSTER_PG_PORT": str(server.port),
        "DAGSTER_PG_USER": server.superuser,
        "DAGSTER_PG_PASSWORD": server.password,
        "DAGSTER_PG_DB": "dagster",
    }
    cli = str(Path(sys.executable).with_name("rds-pipeline"))
    try:
        subprocess.run([cli, "discover", "--config", str(config)], env=env, check=True, capture_output=True)
        fresh_destination(server)
        started = time.monotonic()
        done = subprocess.run([cli, "sync", "--config", str(config)], env=env, capture_output=True, text=True)
        cli_seconds = time.monotonic() - started
        assert done.returncode == 0, done.stderr[-2000:]
        fresh_destination(server)
        default_home = base / "default_home"  # Dagster's default instance: no dagster.yaml, SQLite
        default_home.mkdir()
        started = time.monotonic()
        done = subprocess.run(
            [cli, "sync", "--config", str(config)],
            env={**env, "DAGSTER_HOME": str(default_home)},
            capture_output=True,
            text=True,
        )
        default_seconds = time.monotonic() - started
        assert done.returncode == 0, done.stderr[-2000:]
        fresh_destination(server)
        started = time.monotonic()
        launched = subprocess.run([sys.executable, "-c", LAUNCH_CHILD, "2"], env=env, capture_output=True, text=True)
        launched_seconds = time.monotonic() - started
        assert launched.returncode == 0, launched.stderr[-2000:]
        count = server.psql(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'tick_bench' AND tablename NOT LIKE '\\_rds%'",
            "tick_dst",
        ).strip()
        assert int(count) == tables  # every table (besides the state tables)
        fresh_destination(server)
        psql = str(server.bin_dir / "psql")
        common = f"-X -q -h {server.host} -p {server.port} -U {server.superuser}"
        script = "\n".join(
            f'{psql} {common} -d tick_dst -c "CREATE TABLE IF NOT EXISTS t{i:04d} (id int PRIMARY KEY, v text, n int)" '
            f'&& {psql} {common} -d tick_src -c "COPY t{i:04d} TO STDOUT" | {psql} {common} -d tick_dst '
            f'-c "COPY t{i:04d} FROM STDIN"'
            for i in range(tables)
        )
        (base / "loop.sh").write_text(script + "\n")
        started = time.monotonic()
        subprocess.run(["bash", "-e", str(base / "loop.sh")], env=env, check=True, capture_output=True)
        loop_seconds = time.monotonic() - started
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
    return {
        "machine": machine(),
        "tables": tables,
        "rows_per_table": rows,
        "psql_loop_seconds": round(loop_seconds, 2),
        "cli_sync_seconds": round(cli_seconds, 2),
        "default_sync_seconds": round(default_seconds, 2),
        "launched_run_seconds": round(launched_seconds, 2),
        "cli_ratio": round(loop_seconds / cli_seconds, 2),
        "default_ratio": round(loop_seconds / default_seconds, 2),
        "launched_ratio": round(loop_seconds / launched_seconds, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tables", type=int, default=500)
    parser.add_argument("--rows", type=int, default=1000)
    args = parser.parse_args()
    print(json.dumps(run(args.tables, args.rows), indent=2))


if __name__ == "__main__":
    main()
