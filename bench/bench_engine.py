"""Benchmark: full-table PG->PG throughput of the engine against the raw `psql | psql` COPY pipe, peak RSS,
and an incremental sync finding 1,000 changed rows.

    .venv/bin/python -m bench.bench_engine --rows 1000000 --rounds 3 [--incremental-rows 10000000]

Everything runs side by side in one run on one embedded PostgreSQL 18 (source and destination databases on
the same server, as the raw pipe does), alternating A B A B; the headline is the median ratio to the pipe.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rds_pipeline.local_postgres import LocalPostgres, embedded_bin_dir

TABLE_DDL = """
CREATE TABLE bench_t (
  id bigint PRIMARY KEY, n int, amount numeric(12,2), body text, code varchar(32), tags text[], doc jsonb,
  created timestamptz, local_ts timestamp, flag boolean
);
"""
FILL_SQL = """
INSERT INTO bench_t
SELECT g, g % 1000, (g % 100000) / 100.0, md5(g::text) || ' some text ' || g, 'code-' || (g % 5000),
       ARRAY['a' || (g % 7), 'b' || (g % 11)], jsonb_build_object('k', g % 13, 'v', md5(g::text)),
       timestamptz '2020-01-01 00:00+00' + g * interval '1 second', timestamp '2020-01-01' + g * interval '1 second',
       g % 2 = 0
FROM generate_series(1, {rows}) g;
ANALYZE bench_t;
"""


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


def start_server(base: Path) -> LocalPostgres:
    server = LocalPostgres(
        embedded_bin_dir(),
        base / "pg",
        settings={
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "512MB",
            "max_wal_size": "4GB",
            "checkpoint_timeout": "30min",
        },
    )
    server.start()
    for db in ("bench_src", "bench_dst"):
        server.psql(f"CREATE DATABASE {db}")
    return server


def fill(server: LocalPostgres, rows: int) -> float:
    started = time.monotonic()
    server.psql(TABLE_DDL + FILL_SQL.format(rows=rows), "bench_src")
    return time.monotonic() - started


def raw_pipe(server: LocalPostgres) -> float:
    """psql -c "COPY t TO STDOUT" | psql -c "COPY t2 FROM STDIN" (t2 empty, same primary key)."""
    server.psql("DROP TABLE IF EXISTS bench_t2;" + TABLE_DDL.replace("bench_t", "bench_t2"), "bench_dst")
    psql = str(server.bin_dir / "psql")
    conn = f"-h {server.host} -p {server.port} -U {server.superuser}"
    command = (
        f'{psql} -X {conn} -d bench_src -c "COPY bench_t TO STDOUT" | '
        f'{psql} -X {conn} -d bench_dst -c "COPY bench_t2 FROM STDIN"'
    )
    started = time.monotonic()
    subprocess.run(
        ["bash", "-o", "pipefail", "-c", command],
        check=True,
        capture_output=True,
        env={**os.environ, "PGPASSWORD": server.password},
    )
    return time.monotonic() - started


def engine_child(port: int, password: str, mode: str) -> None:
    """Runs in a subprocess so its peak RSS is its own; prints one JSON line."""
    from rds_pipeline.engine.config import parse_config
    from rds_pipeline.engine.destinations.factory import open_destination
    from rds_pipeline.engine.replication.sync import sync_table
    from rds_pipeline.engine.selection import resolve_selection
    from rds_pipeline.engine.source.discovery import discover
    from rds_pipeline.engine.source.session import SourceSession

    creds = {"host": "127.0.0.1", "port": port, "user": "postgres", "password": password}
    config = parse_config(
        {
            "integration_name": "bench",
            "source": {**creds, "database": "bench_src"},
            "destination": {"type": "postgres", **creds, "database": "bench_dst"},
        }
    )
    catalog = discover(config.source, databases=["bench_src"])
    entry: dict[str, Any] = {"name": "public.bench_t"}
    if mode == "incremental":
        entry.update(method="key_based", replication_key="created")
    [table] = resolve_selection([entry], catalog, "bench_src")
    destination = open_destination(config)
    if mode == "full":
        destination.reset(table)
    started = time.monotonic()
    with SourceSession(config.source) as session:
        result = sync_table(session, destination, table, lookback=0)
    seconds = time.monotonic() - started
    destination.close()
    print(
        json.dumps(
            {
                "seconds": seconds,
                "rows": result.extraction.rows,
                "bytes": result.extraction.bytes,
                "inserted": result.report.rows_inserted,
                "updated": result.report.rows_updated,
                "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            }
        )
    )


def engine(server: LocalPostgres, mode: str = "full") -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.bench_engine",
            "--child",
            mode,
            "--port",
            str(server.port),
            "--password",
            server.password,
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(rows: int, rounds: int, incremental_rows: int | None = None) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="rds_bench_engine_"))
    base.chmod(0o755)
    server = start_server(base)
    try:
        fill_seconds = fill(server, rows)
        pipe_times, engine_runs = [], []
        for _ in range(rounds):  # A B A B ...
            pipe_times.append(raw_pipe(server))
            engine_runs.append(engine(server, "full"))
        ratios = [p / e["seconds"] for p, e in zip(pipe_times, engine_runs, strict=True)]
        result: dict[str, Any] = {
            "machine": machine(),
            "python": platform.python_version(),
            "rows": rows,
            "fill_seconds": round(fill_seconds, 1),
            "raw_pipe_seconds": [round(t, 3) for t in pipe_times],
            "engine_seconds": [round(e["seconds"], 3) for e in engine_runs],
            "raw_pipe_rows_per_s": round(rows / statistics.median(pipe_times)),
            "engine_rows_per_s": round(rows / statistics.median(e["seconds"] for e in engine_runs)),
            "ratio_to_raw_pipe_median": round(statistics.median(ratios), 3),
            "engine_peak_rss_mb": round(max(e["rss_mb"] for e in engine_runs), 1),
        }
        if incremental_rows:
            result["incremental"] = incremental(server, incremental_rows)
        return result
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def incremental(server: LocalPostgres, rows: int) -> dict[str, Any]:
    """A table of ``rows`` rows with an indexed key; after a first sync, 1,000 rows change; time the next sync."""
    server.psql(
        "DROP TABLE bench_t;" + TABLE_DDL + FILL_SQL.format(rows=rows) + "CREATE INDEX ON bench_t (created);",
        "bench_src",
    )
    server.psql("DROP SCHEMA IF EXISTS bench CASCADE; TRUNCATE rds_pipeline_meta.integrations", "bench_dst")
    first = engine(server, "incremental")
    server.psql(f"UPDATE bench_t SET body = 'changed', created = now() WHERE id % ({rows} / 1000) = 0", "bench_src")
    second = engine(server, "incremental")
    return {
        "rows": rows,
        "first_sync_seconds": round(first["seconds"], 2),
        "changed_rows_found": second["inserted"] + second["updated"],
        "incremental_sync_seconds": round(second["seconds"], 3),
        "peak_rss_mb": round(max(first["rss_mb"], second["rss_mb"]), 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--incremental-rows", type=int, default=0)
    parser.add_argument("--child", choices=["full", "incremental"])
    parser.add_argument("--port", type=int)
    parser.add_argument("--password")
    args = parser.parse_args()
    if args.child:
        engine_child(args.port, args.password, args.child)
        return
    print(json.dumps(run(args.rows, args.rounds, args.incremental_rows or None), indent=2))


if __name__ == "__main__":
    main()
