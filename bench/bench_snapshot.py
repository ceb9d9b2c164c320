"""What a log-based table's first snapshot costs the source: WAL retained and replica lag while a large table is
copied under a steady writer, chunk by chunk between stream catch-ups (``log_based.snapshot: chunked``) against
one exported snapshot for the whole copy (``exported``, the classic way).

Two embedded PostgreSQL 18 servers: the source, and the destination (so the copy's own writes are not in the
source's WAL). A writer makes 2,000 changes/s (updates of
random rows and inserts, 100 per transaction) throughout. A sampler reads the slot every half second: the WAL it
makes the server keep (current LSN minus its restart LSN), how far its confirmed position trails (current LSN
minus confirmed flush), and the age of the oldest transaction snapshot a copy holds open (what VACUUM waits for).

    .venv/bin/python -m bench.bench_snapshot [--rows 10000000] [--chunks 20] [--rate 2000]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psycopg2

from bench.bench_cdc import SETTINGS as CDC_SETTINGS
from bench.bench_engine import machine
from rds_pipeline.engine.config import parse_config
from rds_pipeline.engine.core.ranges import KeyRange
from rds_pipeline.engine.destinations.postgres import PostgresDestination
from rds_pipeline.engine.replication.cdc.flow import sync_log_based
from rds_pipeline.engine.selection import resolve_selection
from rds_pipeline.engine.source.discovery import discover
from rds_pipeline.local_postgres import LocalPostgres, embedded_bin_dir

HERE = Path(__file__).resolve().parent
SETTINGS = {**CDC_SETTINGS, "max_wal_size": "8GB"}  # bench_cdc's logical server


def writer(server: LocalPostgres, rows: int, rate: int, stop: threading.Event, done: list[int]) -> None:
    """``rate`` changes per second, 100 per transaction: 80 updates of random rows, 20 inserts."""
    conn = psycopg2.connect(**server.dsn("src"))
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT max(id) + 1 FROM t")
        next_id, started = int(cur.fetchone()[0]), time.monotonic()  # type: ignore[index]
        while not stop.is_set():
            cur.execute(
                "BEGIN; UPDATE t SET n = n + 1 WHERE id IN (SELECT (random() * %s)::bigint + 1 "
                "FROM generate_series(1, 80)); INSERT INTO t SELECT g, 0, 'new' FROM generate_series(%s, %s) g; COMMIT",
                (rows - 1, next_id, next_id + 19),
            )
            next_id += 20
            done[0] += 100
            ahead = done[0] / rate - (time.monotonic() - started)
            if ahead > 0:
                stop.wait(ahead)
    conn.close()


def sampler(server: LocalPostgres, slot: str, stop: threading.Event, samples: list[dict[str, float]]) -> None:
    conn = psycopg2.connect(**server.dsn("src"))
    conn.autocommit = True
    with conn.cursor() as cur:
        while not stop.wait(0.5):
            cur.execute(
                "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), "
                "pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), "
                "(SELECT coalesce(max(extract(epoch FROM now() - xact_start)), 0) FROM pg_stat_activity "
                " WHERE application_name LIKE 'rds_pipeline%%' AND backend_xmin IS NOT NULL) "
                "FROM pg_replication_slots WHERE slot_name = %s",
                (slot,),
            )
            row = cur.fetchone()
            if row and row[0] is not None:
                samples.append(
                    {"t": time.monotonic(), "retained": float(row[0]), "lag": float(row[1] or 0), "xact": float(row[2])}
                )
    conn.close()


def run(server: LocalPostgres, target: LocalPostgres, rows: int, chunks: int, rate: int, mode: str) -> dict[str, Any]:
    creds = {"host": server.host, "port": server.port, "user": server.superuser, "password": server.password}
    into = {"host": target.host, "port": target.port, "user": target.superuser, "password": target.password}
    target.psql(f"CREATE DATABASE dst_{mode}")
    config = parse_config(
        {
            "integration_name": f"Snapshot {mode}",
            "source": {**creds, "database": "src"},
            "destination": {"type": "postgres", **into, "database": f"dst_{mode}"},
            "log_based": {"snapshot": mode, "slot_create_wait_seconds": 600},
        }
    )
    table = resolve_selection(
        [{"name": "public.t", "method": "log_based"}], discover(config.source, databases=["src"]), "src"
    )[0]
    size = -(-rows // chunks)
    ranges = [
        KeyRange("id", lower=None if i == 0 else i * size + 1, upper=None if i == chunks - 1 else (i + 1) * size + 1)
        for i in range(chunks)
    ]
    dest = PostgresDestination(config.destination, config.destination_schema)
    dest.prepare(config)
    stop, done, samples = threading.Event(), [0], []
    threads = [
        threading.Thread(target=writer, args=(server, rows, rate, stop, done), daemon=True),
        threading.Thread(target=sampler, args=(server, config.slot_name, stop, samples), daemon=True),
    ]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    result = sync_log_based(config, dest, [table], chunks={table.id: ranges})
    seconds = time.monotonic() - started
    stop.set()
    for thread in threads:
        thread.join(30)
    dest.close()
    server.psql(f"SELECT pg_drop_replication_slot('{config.slot_name}')", "src")
    assert not result.failures, result.failures
    mb = 2**20
    return {
        "mode": mode,
        "seconds": round(seconds, 1),
        "rows_copied": result.snapshots.get(table.id, 0),
        "changes_written": done[0],
        "max_retained_wal_mb": round(max((s["retained"] for s in samples), default=0) / mb, 1),
        "max_lag_mb": round(max((s["lag"] for s in samples), default=0) / mb, 1),
        "longest_open_snapshot_s": round(max((s["xact"] for s in samples), default=0), 1),
        "samples": len(samples),
    }


def measure(rows: int, chunks: int, rate: int) -> dict[str, Any]:
    """Both snapshots of the same table on one fresh server, the exported one first."""
    with tempfile.TemporaryDirectory(prefix="rds_bench_snapshot_") as base:
        Path(base).chmod(0o755)
        server = LocalPostgres(embedded_bin_dir(), Path(base) / "pg18", password="bench", settings=SETTINGS)
        target = LocalPostgres(
            embedded_bin_dir(),
            Path(base) / "dest",
            password="bench",
            settings={**SETTINGS, "wal_level": "minimal", "max_wal_senders": "0"},
        )
        server.start()
        target.start()
        try:
            server.psql("CREATE DATABASE src")
            server.psql(
                "CREATE TABLE t (id bigint PRIMARY KEY, n int, v text); "
                f"INSERT INTO t SELECT g, 0, md5(g::text) FROM generate_series(1, {rows}) g; VACUUM ANALYZE t",
                "src",
            )
            results = [run(server, target, rows, chunks, rate, mode) for mode in ("exported", "chunked")]
        finally:
            server.stop()
            target.stop()
    return {"machine": machine(), "rows": rows, "chunks": chunks, "rate": rate, "runs": results}


def write(report: dict[str, Any], directory: Path) -> str:
    """``snapshot_results.json`` and ``SNAPSHOT.md`` in ``directory``; returns the markdown."""
    (directory / "snapshot_results.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# A log-based snapshot under a writer: chunked against one exported snapshot",
        "",
        f"{report['rows']:,} rows, {report['chunks']} chunks, a writer at {report['rate']:,} changes/s; "
        f"{report['machine']}.",
        "Written by `make bench-cdc` (`bench/bench_snapshot.py`).",
        "",
        "| snapshot | seconds | max WAL retained | max slot lag | longest open snapshot |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in report["runs"]:
        lines.append(
            f"| {r['mode']} | {r['seconds']} | {r['max_retained_wal_mb']} MB | {r['max_lag_mb']} MB | "
            f"{r['longest_open_snapshot_s']} s |"
        )
    text = "\n".join(lines) + "\n"
    (directory / "SNAPSHOT.md").write_text(text)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--rate", type=int, default=2000)
    args = parser.parse_args()
    print(write(measure(args.rows, args.chunks, args.rate), HERE))


if __name__ == "__main__":
    main()
