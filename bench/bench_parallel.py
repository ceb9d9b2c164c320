"""Benchmark: one table's history copied in parallel chunks, from a source whose every connection has a limited
bandwidth (a far region, a bastion, a replica behind a slow link).

    sudo .venv/bin/python -m bench.bench_parallel [--rows 400000] [--mbit 40] [--parallel 4]

Two network namespaces made here, joined by a veth pair (10.231.0.2 source, 10.231.0.1 client); no host
address is touched. The source's side shapes each TCP connection to ``--mbit`` (htb, one class per hash of the
client port: this kernel has no netem, so the link has a rate per connection and no added delay). The source
PostgreSQL runs in one namespace; the destination PostgreSQL and the engine in the other. Side by side in one
run: ``psql | psql`` over the link (one stream, text), the engine in text with ``parallel_chunks: 1`` and with
``--parallel``, and with ``--parallel`` in binary (about 25% more bytes on the bench table, so slower on a
link paid per byte). Needs root (namespaces, tc).

``--pages``: the same race for a full-table table keyed by UUID (no integer key to chunk by), copied in chunks
of pages (CTID ranges) into a new generation: one chunk at a time against ``--parallel`` at a time.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_engine import FILL_SQL, TABLE_DDL, machine

SOURCE_NS, CLIENT_NS = "rdsb_src", "rdsb_cli"
SOURCE_IP, CLIENT_IP = "10.231.0.2", "10.231.0.1"
SOURCE_PORT, DEST_PORT = 5432, 5433
BUCKETS = 256  # htb classes: a connection gets one by the low byte of its client port


def sh(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), check=check, capture_output=True, text=True)


def make_link(mbit: int) -> None:
    teardown_link()
    sh("ip", "netns", "add", SOURCE_NS)
    sh("ip", "netns", "add", CLIENT_NS)
    sh("ip", "link", "add", "rdsb0", "netns", SOURCE_NS, "type", "veth", "peer", "name", "rdsb1", "netns", CLIENT_NS)
    for ns, dev, ip in ((SOURCE_NS, "rdsb0", SOURCE_IP), (CLIENT_NS, "rdsb1", CLIENT_IP)):
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
        sh("ip", "-n", ns, "link", "set", dev, "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
    tc = ["ip", "netns", "exec", SOURCE_NS, "tc"]
    sh(*tc, "qdisc", "add", "dev", "rdsb0", "root", "handle", "1:", "htb", "default", "ffff", "r2q", "1000")
    sh(*tc, "class", "add", "dev", "rdsb0", "parent", "1:", "classid", "1:ffff", "htb", "rate", "10gbit")
    for bucket in range(BUCKETS):
        sh(
            *tc,
            "class",
            "add",
            "dev",
            "rdsb0",
            "parent",
            "1:",
            "classid",
            f"1:{bucket + 1:x}",
            "htb",
            "rate",
            f"{mbit}mbit",
            "ceil",
            f"{mbit}mbit",
            "burst",
            "64k",
        )
    sh(
        *tc,
        "filter",
        "add",
        "dev",
        "rdsb0",
        "parent",
        "1:",
        "prio",
        "1",
        "handle",
        "2:",
        "protocol",
        "ip",
        "u32",
        "divisor",
        str(BUCKETS),
    )
    for bucket in range(BUCKETS):
        sh(
            *tc,
            "filter",
            "add",
            "dev",
            "rdsb0",
            "parent",
            "1:",
            "prio",
            "1",
            "protocol",
            "ip",
            "u32",
            "ht",
            f"2:{bucket:x}:",
            "match",
            "ip",
            "sport",
            str(SOURCE_PORT),
            "0xffff",
            "flowid",
            f"1:{bucket + 1:x}",
        )
    # hash TCP segments (IP header of 20 bytes: the ports are the word at 20) by the client port's low byte
    sh(
        *tc,
        "filter",
        "add",
        "dev",
        "rdsb0",
        "parent",
        "1:",
        "prio",
        "1",
        "protocol",
        "ip",
        "u32",
        "ht",
        "800::",
        "match",
        "ip",
        "protocol",
        "6",
        "0xff",
        "hashkey",
        "mask",
        "0x000000ff",
        "at",
        "20",
        "link",
        "2:",
    )


def teardown_link() -> None:
    for ns in (SOURCE_NS, CLIENT_NS):
        sh("ip", "netns", "del", ns, check=False)


def in_ns(ns: str, *command: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *command]


SERVE = """
import sys
from pathlib import Path
from rds_pipeline.local_postgres import LocalPostgres, embedded_bin_dir
base, ip, port = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
server = LocalPostgres(embedded_bin_dir(), base, port=port, settings={
    "listen_addresses": f"'{ip}'", "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
    "shared_buffers": "256MB", "max_wal_size": "4GB"}, hba_lines=["host all all 10.231.0.0/24 scram-sha-256", "host all all 127.0.0.1/32 scram-sha-256"])
server.host = ip
server.start()
for statement in sys.argv[4:]:
    server.psql(statement, "postgres" if statement.startswith("CREATE DATABASE") else "bench")
"""

ENGINE = """
import dataclasses, json, sys, time
from rds_pipeline.engine.config import load_config
from rds_pipeline.engine.destinations.factory import open_destination
from rds_pipeline.engine.core.ranges import KeyRange
from rds_pipeline.engine.replication.sync import sync_table
from rds_pipeline.engine.selection import resolve_selection
from rds_pipeline.engine.source.catalog import Catalog
from rds_pipeline.engine.source.session import SourceSession
config = load_config(sys.argv[1])
rows, chunks_wanted, parallel, pages = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[6] == "pages"
source = dataclasses.replace(config.source, max_connections=max(parallel, 1), parallel_chunks=parallel,
                             copy_format=sys.argv[5])
config = dataclasses.replace(config, source=source)
[table] = resolve_selection(config.tables, Catalog.load(config.catalog_path), "bench")
destination = open_destination(config)
destination.reset(table)
chunks = None
if pages:  # chunks of pages, sized by the engine from chunk_rows
    table = dataclasses.replace(table, chunk_rows=max(1000, rows // chunks_wanted))
else:  # the integer key's history, in chunks_wanted key ranges
    step = rows // chunks_wanted
    edges = [1 + step * i for i in range(1, chunks_wanted)]
    chunks = [KeyRange("id", upper=str(edges[0]), include_nulls=True)]
    chunks += [KeyRange("id", str(lo), str(hi)) for lo, hi in zip(edges, edges[1:])]
    chunks.append(KeyRange("id", lower=str(edges[-1])))
started = time.monotonic()
with SourceSession(config.source) as session:
    result = sync_table(session, destination, table, chunks=chunks, lookback=None if pages else 0)
seconds = time.monotonic() - started
destination.close()
sweep = 0.0
if pages:
    assert result.plan.generation and result.rows_at_commit == rows, (result.plan.reason, result.rows_at_commit)
    swept = [s.extraction for s in result.steps if s.sweep]  # from the first sweep chunk's start to the last's end
    sweep = (max(e.ended_at for e in swept) - min(e.started_at for e in swept)).total_seconds() if swept else 0.0
else:
    assert result.rows == rows, result.rows
print(json.dumps({"seconds": seconds, "steps": len(result.steps), "sweep_seconds": sweep}))
"""


def run(rows: int, mbit: int, parallel: int, pages: bool = False, rounds: int = 2) -> dict[str, object]:
    """``pages``: a UUID-keyed full-table table in chunks of pages (else an integer key's history)."""
    base = Path(tempfile.mkdtemp(prefix="rds_bench_parallel_"))
    base.chmod(0o755)
    py = sys.executable
    make_link(mbit)
    ddl, fill_sql = TABLE_DDL, FILL_SQL
    if pages:
        ddl = ddl.replace("id bigint PRIMARY KEY", "id uuid PRIMARY KEY")
        fill_sql = fill_sql.replace("SELECT g, g % 1000", "SELECT md5(g::text)::uuid, g % 1000")
    try:
        fill = ddl + fill_sql.format(rows=rows)
        sh(
            *in_ns(
                SOURCE_NS,
                py,
                "-c",
                SERVE,
                str(base / "src"),
                SOURCE_IP,
                str(SOURCE_PORT),
                "CREATE DATABASE bench",
                fill,
            )
        )
        sh(
            *in_ns(
                CLIENT_NS,
                py,
                "-c",
                SERVE,
                str(base / "dst"),
                "127.0.0.1",
                str(DEST_PORT),
                "CREATE DATABASE bench",
                ddl.replace("bench_t", "bench_pipe"),
            )
        )
        creds = {"user": "postgres", "password": "postgres", "database": "bench"}
        config = base / "rds_pipeline.yaml"
        config.write_text(
            json.dumps(
                {
                    "integration_name": "bench parallel",
                    "source": {"host": SOURCE_IP, "port": SOURCE_PORT, **creds},
                    "destination": {"type": "postgres", "host": "127.0.0.1", "port": DEST_PORT, **creds},
                    "tables": [
                        {"name": "public.bench_t", "method": "full_table"}
                        if pages
                        else {"name": "public.bench_t", "method": "key_based", "replication_key": "id"}
                    ],
                }
            )
        )
        sh(*in_ns(CLIENT_NS, py, "-m", "rds_pipeline.cli", "discover", "--config", str(config)))
        bin_dir = Path(
            sh(
                py,
                "-c",
                "from rds_pipeline.local_postgres import embedded_bin_dir, usable_bin_dir; "
                "print(usable_bin_dir(embedded_bin_dir()))",
            ).stdout.strip()
        )
        psql = str(bin_dir / "psql")
        pipe = (
            f"PGPASSWORD=postgres {psql} -X -h {SOURCE_IP} -p {SOURCE_PORT} -U postgres -d bench "
            f"-c 'COPY bench_t TO STDOUT' | PGPASSWORD=postgres {psql} -X -h 127.0.0.1 -p {DEST_PORT} "
            "-U postgres -d bench -c 'TRUNCATE bench_pipe' -c 'COPY bench_pipe FROM STDIN'"
        )
        engines = {
            "engine, 1 chunk at a time": (1, "text"),
            f"engine, {parallel} chunks at a time": (parallel, "text"),
        }
        if not pages:
            engines[f"engine, {parallel} chunks at a time, binary"] = (parallel, "binary")
        sweeps: list[float] = []
        results: dict[str, list[float]] = {"raw pipe (psql | psql), one stream": [], **{n: [] for n in engines}}
        for _ in range(rounds):  # alternate the contenders
            started = time.monotonic()
            sh(*in_ns(CLIENT_NS, "bash", "-o", "pipefail", "-c", pipe))
            results["raw pipe (psql | psql), one stream"].append(time.monotonic() - started)
            for name, (width, form) in engines.items():
                mode = "pages" if pages else "keys"
                out = sh(
                    *in_ns(
                        CLIENT_NS, py, "-c", ENGINE, str(config), str(rows), str(parallel * 4), str(width), form, mode
                    )
                )
                measured = json.loads(out.stdout.strip().splitlines()[-1])
                results[name].append(measured["seconds"])
                if width == parallel:
                    sweeps.append(measured.get("sweep_seconds", 0.0))  # the sweep's wall time, as the user runs it
        medians = {name: statistics.median(times) for name, times in results.items()}
        one, many = medians["engine, 1 chunk at a time"], medians[f"engine, {parallel} chunks at a time"]
        return {
            "machine": machine(),
            "rows": rows,
            "mbit_per_connection": mbit,
            "parallel": parallel,
            "chunks": parallel * 4,
            "runs": {k: [round(v, 2) for v in t] for k, t in results.items()},
            "median_seconds": {k: round(v, 2) for k, v in medians.items()},
            "speedup_vs_one_stream": round(one / many, 2),
            "ratio_to_raw_pipe": round(medians["raw pipe (psql | psql), one stream"] / many, 2),
            **({"sweep_seconds": round(statistics.median(sweeps), 2), "keyed_by": "uuid"} if pages else {}),
        }
    finally:
        from rds_pipeline.local_postgres import LocalPostgres, embedded_bin_dir

        for name in ("src", "dst"):
            if (base / name / "data").exists():
                LocalPostgres(embedded_bin_dir(), base / name).stop()  # a signal to its pid: no network needed
        teardown_link()
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=400_000)
    parser.add_argument("--mbit", type=int, default=40)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--pages", action="store_true", help="a UUID-keyed full-table table in chunks of pages")
    args = parser.parse_args()
    print(json.dumps(run(args.rows, args.mbit, args.parallel, args.pages), indent=2))


if __name__ == "__main__":
    main()
