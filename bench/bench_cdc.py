"""Log-based replication against PostgreSQL's own logical replication, on one embedded PostgreSQL 18.

The anchors are the native subscriber (``CREATE SUBSCRIPTION``) applying the same WAL, in text and in ``binary =
true``. A 1M-row table is copied to the destination databases; the slots are created at the same LSN; then a workload of 1M changes (60% inserts,
30% updates, 10% deletes, in transactions of 1,000) is written. Each consumer then applies the same WAL, and
is timed from its start until the destination equals the source (same rows, checked by a hash of each side).
The key-based method, given the same changes, is timed too: it cannot see the deletes (the rows it keeps are
counted). Each run's CPU is reported per process (the walsender, the consumer, the destination backend), sampled
every 50 ms, so the limit shows. Then the lag under a steady writer, and the decoder's speed on the captured stream.

    .venv/bin/python -m bench.bench_cdc [--rows 1000000] [--changes 1000000] [--rate 5000] [--seconds 30]
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import psycopg2

from bench.bench_engine import machine
from rds_pipeline.engine.config import parse_config
from rds_pipeline.engine.destinations.postgres import PostgresDestination
from rds_pipeline.engine.replication.cdc.flow import sync_log_based
from rds_pipeline.engine.selection import resolve_selection
from rds_pipeline.engine.source.discovery import discover
from rds_pipeline.local_postgres import LocalPostgres, embedded_bin_dir

HERE = Path(__file__).resolve().parent
SETTINGS = {
    "wal_level": "logical",
    "max_replication_slots": "10",
    "max_wal_senders": "10",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_wal_size": "4GB",
    "logical_decoding_work_mem": "64MB",
    "shared_buffers": "512MB",
}
DDL = "CREATE TABLE c (id bigint PRIMARY KEY, n int, v text, at timestamptz NOT NULL DEFAULT clock_timestamp())"
NATIVE = {"native": "false", "native_binary": "true"}  # subscription (and its slot and database) -> binary
FINGERPRINT = "SELECT count(*), coalesce(sum(hashtext(id::text || '|' || coalesce(n::text, '') || '|' || coalesce(v, ''))), 0) FROM {t}"


def connect(server: LocalPostgres, database: str) -> psycopg2.extensions.connection:
    conn = psycopg2.connect(**server.dsn(database))
    conn.autocommit = True
    return conn


def scalar(server: LocalPostgres, database: str, query: str) -> Any:
    with connect(server, database) as conn, conn.cursor() as cur:
        cur.execute(query)
        row = cur.fetchone()
    conn.close()
    return row[0] if row and len(row) == 1 else row


def workload(server: LocalPostgres, rows: int, changes: int, per_transaction: int = 1000) -> float:
    """``changes`` changes: 60% inserts of new keys, 30% updates and 10% deletes of existing ones."""
    started = time.monotonic()
    conn = connect(server, "src")
    next_key, low = rows + 1, 1
    with conn.cursor() as cur:
        for done in range(0, changes, per_transaction):
            inserts, updates, deletes = int(per_transaction * 0.6), int(per_transaction * 0.3), per_transaction // 10
            cur.execute("BEGIN")
            cur.execute(
                "INSERT INTO c (id, n, v) SELECT g, g %% 1000, 'inserted ' || g FROM generate_series(%s, %s) g",
                (next_key, next_key + inserts - 1),
            )
            next_key += inserts
            start = (done * 7919) % max(1, rows - updates - deletes) + low
            cur.execute(
                "UPDATE c SET n = n + 1, v = v || '+', at = clock_timestamp() WHERE id BETWEEN %s AND %s",
                (start, start + updates - 1),
            )
            cur.execute(
                "DELETE FROM c WHERE id IN (SELECT id FROM c WHERE id > %s ORDER BY id LIMIT %s)",
                (start + updates, deletes),
            )
            cur.execute("COMMIT")
    conn.close()
    return time.monotonic() - started


class CpuSampler:
    """CPU seconds per role while a consumer runs: the walsender of ``slot`` and the backends of ``database``
    (PostgreSQL's processes, sampled every 50 ms: a process's last 50 ms may be missed), and this process."""

    def __init__(self, server: LocalPostgres, slot: str, database: str) -> None:
        self.server, self.slot, self.database = server, slot, database
        self.seen: dict[int, tuple[str, float]] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def __enter__(self) -> CpuSampler:
        self.ours = time.process_time()
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(5)
        self.ours = time.process_time() - self.ours - self.own  # less the sampler's own

    def run(self) -> None:
        self.own, started = 0.0, time.thread_time()
        conn = connect(self.server, "postgres")
        with conn.cursor() as cur:
            while not self.stop.is_set():
                cur.execute(
                    "SELECT pid, 'walsender' FROM pg_stat_activity WHERE backend_type = 'walsender' AND pid = "
                    "(SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s) UNION ALL "
                    "SELECT pid, 'destination' FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                    (self.slot, self.database),
                )
                for pid, role in cur.fetchall():
                    try:
                        times = psutil.Process(pid).cpu_times()
                    except psutil.Error:
                        continue
                    self.seen[pid] = (role, times.user + times.system)
                self.own = time.thread_time() - started
                time.sleep(0.05)
        conn.close()

    def seconds(self, consumer: bool) -> dict[str, float]:
        found = {"walsender": 0.0, "destination": 0.0}
        for role, cpu in self.seen.values():
            found[role] += cpu
        if consumer:
            found["consumer"] = self.ours
        return {role: round(cpu, 2) for role, cpu in found.items()}


def native(server: LocalPostgres, target: str, name: str = "native") -> tuple[float, dict[str, float]]:
    """Enable a subscription on the pre-created slot and wait until it confirmed everything written."""
    database = f"dst_{name}"
    end = scalar(server, "src", "SELECT pg_current_wal_lsn()::text")
    conn = connect(server, database)
    with conn.cursor() as cur, CpuSampler(server, name, database) as cpu:
        started = time.monotonic()
        cur.execute(sql_enable(name))
        while True:
            cur.execute(
                "SELECT confirmed_flush_lsn >= %s::pg_lsn FROM pg_replication_slots WHERE slot_name = %s", (end, name)
            )
            # confirmed means applied (and flushed) by the subscriber; then check the data
            if cur.fetchone()[0] and scalar(server, database, FINGERPRINT.format(t="c")) == target:
                break
            time.sleep(0.05)
        seconds = time.monotonic() - started
    conn.close()
    return seconds, cpu.seconds(consumer=False)


def sql_enable(name: str) -> str:
    return f"ALTER SUBSCRIPTION {name} ENABLE"


def config(server: LocalPostgres, database: str, name: str) -> Any:
    creds = {"host": server.host, "port": server.port, "user": server.superuser, "password": server.password}
    return parse_config(
        {
            "integration_name": name,
            "source": {**creds, "database": "src"},
            "destination": {"type": "postgres", **creds, "database": database},
            "log_based": {"slot": name, "publication": "bench_pub", "heartbeat": False},
        }
    )


def ours(server: LocalPostgres, cfg: Any, table: Any, target: Any) -> tuple[float, dict[str, int], dict[str, float]]:
    dest = PostgresDestination(cfg.destination, cfg.destination_schema)
    dest.prepare(cfg)
    with CpuSampler(server, cfg.log_based.slot, "dst_ours") as cpu:
        started = time.monotonic()
        result = sync_log_based(cfg, dest, [table])
        seconds = time.monotonic() - started
    got = scalar(server, "dst_ours", FINGERPRINT.format(t=f'"{cfg.destination_schema}".c'))
    dest.close()
    assert got == target, f"replica differs: {got} != {target}"
    return seconds, result.changes(table.id), cpu.seconds(consumer=True)


def lag_under_writer(server: LocalPostgres, cfg: Any, table: Any, rate: int, seconds: int) -> dict[str, float]:
    """A writer at ``rate`` changes/s for ``seconds``; syncs back to back; lag sampled every 0.5 s as the age of
    the newest change the replica holds."""
    stop = threading.Event()

    def write() -> None:
        conn = connect(server, "src")
        key = 50_000_000
        with conn.cursor() as cur:
            while not stop.is_set():
                tick = time.monotonic()
                cur.execute(
                    "INSERT INTO c (id, n, v) SELECT g, 0, 'steady' FROM generate_series(%s, %s) g",
                    (key, key + rate // 10 - 1),
                )
                key += rate // 10
                time.sleep(max(0.0, 0.1 - (time.monotonic() - tick)))
        conn.close()

    def sync_loop() -> None:
        dest = PostgresDestination(cfg.destination, cfg.destination_schema)
        dest.prepare(cfg)
        while not stop.is_set():
            sync_log_based(cfg, dest, [table])
        dest.close()

    samples: list[float] = []
    threads = [threading.Thread(target=write, daemon=True), threading.Thread(target=sync_loop, daemon=True)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + seconds
    time.sleep(2)
    while time.monotonic() < deadline:
        age = scalar(
            server,
            "dst_ours",
            f"SELECT extract(epoch FROM clock_timestamp() - max(at)) FROM \"{cfg.destination_schema}\".c WHERE v = 'steady'",
        )
        if age is not None:
            samples.append(float(age))
        time.sleep(0.5)
    stop.set()
    for thread in threads:
        thread.join(120)
    ordered = sorted(samples)
    return {
        "samples": len(samples),
        "p50": statistics.median(ordered),
        "p95": ordered[int(0.95 * (len(ordered) - 1))],
        "max": ordered[-1],
    }


def decoder_speed() -> float:
    from rds_pipeline.engine.replication.cdc.pgoutput import PgOutputDecoder
    from rds_pipeline_tests.engine.test_pgoutput import load

    fixture = load("pg18_v4_parallel.json.gz")
    payloads = [bytes.fromhex(row["hex"]) for row in fixture["messages"]]
    version = fixture["protocol_version"]
    rounds = max(1, 300_000 // max(1, len(payloads)))
    started = time.perf_counter()
    for _ in range(rounds):
        decoder = PgOutputDecoder(version)
        for payload in payloads:
            decoder.decode(payload)
    return rounds * len(payloads) / (time.perf_counter() - started)


def run(rows: int, changes: int, rate: int, seconds: int) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="bench_cdc_"))
    base.chmod(0o755)
    server = LocalPostgres(embedded_bin_dir(), base / "pg", settings=SETTINGS)
    server.start()
    try:
        for database in ("src", "dst_native", "dst_native_binary", "dst_ours", "dst_key"):
            server.psql(f"CREATE DATABASE {database}")
        server.psql(
            DDL + f"; INSERT INTO c (id, n, v) SELECT g, g % 1000, 'row ' || g FROM generate_series(1, {rows}) g;"
            " CREATE PUBLICATION bench_pub FOR TABLE c; ANALYZE c",
            "src",
        )
        dump = scalar(server, "src", "SELECT count(*) FROM c")
        assert dump == rows
        for name in NATIVE:
            server.psql(DDL, f"dst_{name}")
            with (
                connect(server, "src") as src,
                connect(server, f"dst_{name}") as dst,
                src.cursor() as a,
                dst.cursor() as b,
            ):
                buffer = io.StringIO()
                a.copy_expert("COPY c TO STDOUT", buffer)
                buffer.seek(0)
                b.copy_expert("COPY c FROM STDIN", buffer)
        cfg = config(server, "dst_ours", "bench_ours")
        catalog = discover(cfg.source, databases=["src"])
        [table] = resolve_selection([{"name": "public.c", "method": "log_based"}], catalog, "src")
        dest = PostgresDestination(cfg.destination, cfg.destination_schema)
        dest.prepare(cfg)
        sync_log_based(cfg, dest, [table])  # the snapshot: our slot and our copy of the 1M rows
        dest.close()
        for name, binary in NATIVE.items():
            server.psql(f"SELECT pg_create_logical_replication_slot('{name}', 'pgoutput')", "src")
            server.psql(
                f"CREATE SUBSCRIPTION {name} CONNECTION 'host={server.host} port={server.port} dbname=src "
                f"user={server.superuser} password={server.password}' PUBLICATION bench_pub WITH "
                f"(create_slot = false, slot_name = {name}, copy_data = false, enabled = false, binary = {binary})",
                f"dst_{name}",
            )
        key_cfg = parse_config(
            {
                "integration_name": "bench key",
                "source": {
                    "host": server.host,
                    "port": server.port,
                    "user": server.superuser,
                    "password": server.password,
                    "database": "src",
                },
                "destination": {
                    "type": "postgres",
                    "host": server.host,
                    "port": server.port,
                    "user": server.superuser,
                    "password": server.password,
                    "database": "dst_key",
                },
            }
        )
        [keyed] = resolve_selection(
            [{"name": "public.c", "method": "key_based", "replication_key": "at"}], catalog, "src"
        )
        from rds_pipeline.engine.replication.sync import sync_table
        from rds_pipeline.engine.source.session import SourceSession

        key_dest = PostgresDestination(key_cfg.destination, key_cfg.destination_schema)
        key_dest.prepare(key_cfg)
        with SourceSession(key_cfg.source) as session:
            sync_table(session, key_dest, keyed)  # the history, before the changes
        # every slot starts at the same LSN: ours catches up past the copies written since it was made (WAL it
        # would otherwise decode and skip), and the native slots move to where it stands
        dest = PostgresDestination(cfg.destination, cfg.destination_schema)
        sync_log_based(cfg, dest, [table])
        dest.close()
        start = scalar(
            server,
            "src",
            f"SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = '{cfg.log_based.slot}'",
        )
        for name in NATIVE:
            server.psql(f"SELECT pg_replication_slot_advance('{name}', '{start}')", "src")

        written = workload(server, rows, changes)
        target = scalar(server, "src", FINGERPRINT.format(t="c"))
        native_seconds, native_cpu = native(server, target)
        binary_seconds, binary_cpu = native(server, target, "native_binary")
        our_seconds, applied, our_cpu = ours(server, cfg, table, target)
        started = time.monotonic()
        with SourceSession(key_cfg.source) as session:
            sync_table(session, key_dest, keyed)
        key_seconds = time.monotonic() - started
        kept = scalar(server, "dst_key", 'SELECT count(*) FROM "bench_key".c') - target[0]
        key_dest.close()
        lag = lag_under_writer(server, cfg, table, rate, seconds)
        for name in NATIVE:
            server.psql(f"DROP SUBSCRIPTION {name}", f"dst_{name}")
    finally:
        server.stop()
    return {
        "rows": rows,
        "changes": changes,
        "workload_seconds": round(written, 2),
        "native_seconds": round(native_seconds, 2),
        "native_binary_seconds": round(binary_seconds, 2),
        "ours_seconds": round(our_seconds, 2),
        "ratio": round(native_seconds / our_seconds, 3),
        "ratio_binary": round(binary_seconds / our_seconds, 3),
        "cpu": {"native": native_cpu, "native_binary": binary_cpu, "ours": our_cpu},
        "applied": applied,
        "key_based_seconds": round(key_seconds, 2),
        "key_based_rows_not_deleted": kept,
        "lag": lag,
        "decoder_messages_per_second": round(decoder_speed()),
        "machine": machine(),
        "rate": rate,
        "lag_seconds": seconds,
    }


def report(result: dict[str, Any]) -> str:
    lag = result["lag"]
    applied = result["applied"]
    return (
        "\n".join(
            [
                "## Log-based replication (CDC)",
                "",
                f"{result['changes']:,} changes (60% inserts, 30% updates, 10% deletes, 1,000 per transaction) over a "
                f"{result['rows']:,}-row table, written in {result['workload_seconds']} s; each consumer then applies the same "
                "WAL, timed from its start until the destination equals the source (same rows, by hash).",
                "",
                f"**rds_pipeline applies them at {result['ratio']}x the speed of PostgreSQL's own subscriber "
                f"({result['ratio_binary']}x its binary mode).**",
                "",
                "| consumer | seconds | changes/s | ratio (native time / its time) | CPU s: walsender | consumer | destination backend |",
                "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
                *(
                    f"| {label} | {result[key]} | {result['changes'] / result[key]:,.0f} | "
                    f"{round(result['native_seconds'] / result[key], 3)} | {cpu['walsender']} | "
                    f"{cpu.get('consumer', 'in the destination')} | {cpu['destination']} |"
                    for label, key, cpu in (
                        (
                            "PostgreSQL's own logical replication (`CREATE SUBSCRIPTION`)",
                            "native_seconds",
                            result["cpu"]["native"],
                        ),
                        ("the same, `binary = true`", "native_binary_seconds", result["cpu"]["native_binary"]),
                        ("rds_pipeline log-based (engine)", "ours_seconds", result["cpu"]["ours"]),
                    )
                ),
                f"| rds_pipeline key-based on the same changes | {result['key_based_seconds']} | n/a | "
                f"{round(result['native_seconds'] / result['key_based_seconds'], 3)} (but {result['key_based_rows_not_deleted']:,} "
                "deleted rows are still in its replica: only the log carries deletes) | | | |",
                "",
                "CPU is per process, sampled every 50 ms (a process's last 50 ms may be missed); the native subscriber's "
                "apply worker is its destination backend. The machine has 2 cores, shared by all three.",
                "",
                f"Applied by rds_pipeline: {applied}. Under a steady writer of {result['rate']:,} changes/s for "
                f"{result['lag_seconds']} s with syncs back to back, the replica's lag (age of its newest change, sampled every "
                f"0.5 s, {lag['samples']} samples) was p50 {lag['p50']:.2f} s, p95 {lag['p95']:.2f} s, max {lag['max']:.2f} s. "
                f"The pgoutput decoder reads {result['decoder_messages_per_second']:,} messages/s (pure Python, a captured "
                "PostgreSQL 18 stream).",
                "",
                f"Machine: {result['machine']}.",
            ]
        )
        + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--changes", type=int, default=1_000_000)
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--out", default=str(HERE / "CDC.md"))
    args = parser.parse_args()
    result = run(args.rows, args.changes, args.rate, args.seconds)
    print(json.dumps(result, indent=2))
    Path(args.out).write_text("# rds_pipeline: log-based replication benchmark\n\n" + report(result))
    (HERE / "cdc_results.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
