"""Benchmark: discovery of N tables x 10 columns across 20 schemas, including writing the catalog file.

    .venv/bin/python -m bench.bench_discovery --tables 10000

Starts its own embedded PostgreSQL 18 (so it measures a real server on this machine), creates the tables,
ANALYZEs, then times ``discover()`` + ``Catalog.save()``. Target (issue 3): 10,000 tables in under 5 s.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

from rds_pipeline.engine.config import parse_config
from rds_pipeline.engine.source.catalog import Catalog
from rds_pipeline.engine.source.discovery import discover
from rds_pipeline.local_postgres import LocalPostgres, embedded_bin_dir

SCHEMAS = 20


def create_tables(server: LocalPostgres, database: str, tables: int) -> None:
    per_schema = max(1, tables // SCHEMAS)
    statements = []
    for s in range(SCHEMAS):
        statements.append(f"CREATE SCHEMA s{s:02d};")
        for t in range(per_schema):
            statements.append(
                f"CREATE TABLE s{s:02d}.t{t:05d} (id bigint PRIMARY KEY, c1 int, c2 numeric(12,2), c3 text, "
                "c4 varchar(40), c5 text[], c6 jsonb, c7 timestamptz, c8 timestamp, c9 boolean);"
            )
    server.psql("\n".join(statements), database)
    server.psql("ANALYZE;", database)


def run(tables: int, keep: bool = False) -> dict[str, object]:
    base = Path(tempfile.mkdtemp(prefix="rds_bench_discovery_"))
    base.chmod(0o755)
    server = LocalPostgres(
        embedded_bin_dir(), base / "pg", settings={"fsync": "off", "max_locks_per_transaction": "1024"}
    )
    try:
        server.start()
        server.psql("CREATE DATABASE bench")
        started = time.monotonic()
        create_tables(server, "bench", tables)
        setup_seconds = time.monotonic() - started
        config = parse_config(
            {
                "integration_name": "bench",
                "source": {
                    "host": server.host,
                    "port": server.port,
                    "user": server.superuser,
                    "password": server.password,
                    "database": "bench",
                },
                "destination": {"type": "duckdb", "path": "x.duckdb"},
            }
        )
        timings = []
        for _ in range(3):
            started = time.monotonic()
            catalog = discover(config.source, databases=["bench"])
            catalog.save(base / "catalog.json")
            timings.append(time.monotonic() - started)
        assert len(Catalog.load(base / "catalog.json").relations) == len(catalog.relations)
        return {
            "tables": len(catalog.relations),
            "columns": sum(len(r.columns) for r in catalog.relations),
            "discover_and_write_seconds": sorted(timings)[1],
            "all_runs_seconds": [round(t, 3) for t in timings],
            "catalog_bytes": (base / "catalog.json").stat().st_size,
            "setup_seconds": round(setup_seconds, 1),
            "machine": f"{platform.machine()}, {__import__('os').cpu_count()} cores, Python {platform.python_version()}",
        }
    finally:
        server.stop()
        if not keep:
            shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tables", type=int, default=10_000)
    args = parser.parse_args()
    print(json.dumps(run(args.tables), indent=2))


if __name__ == "__main__":
    main()
