"""`make demo`: an embedded PostgreSQL 18 loaded with Pagila is the source and also stores the Dagster
instance; every Pagila table and view is replicated through Dagster into an embedded DuckDB file."""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rds_pipeline.local_postgres import LocalPostgres, _others_can_reach, embedded_bin_dir, pagila_dir

DEMO_DATABASE = "pagila"
DAGSTER_DATABASE = "dagster"
DEMO_PASSWORD_ENV = "RDS_DEMO_PASSWORD"
DEMO_PASSWORD = "rds-demo-local-only"
DEMO_INTEGRATION = "Pagila Demo"
REPO = Path(__file__).resolve().parents[1]
DEV_STOP_SECONDS = 60  # `dagster dev` stops its webserver, daemon and code server within this
# Two key-based tables exercise time windows and integer key ranges; the rest is full table.
KEY_BASED: dict[str, dict[str, str | int]] = {
    "public.payment": {"method": "key_based", "replication_key": "payment_date", "granularity": "monthly"},
    "public.rental": {"method": "key_based", "replication_key": "rental_id", "chunk_rows": 5000},
}


@dataclass
class DemoSetup:
    root: Path
    server: LocalPostgres
    config_path: Path


def _server_dir(root: Path) -> Path:
    """Where the demo cluster lives: under ``root``, unless we run as root and ``nobody`` cannot reach it."""
    if os.geteuid() != 0 or _others_can_reach(root):
        return root / "postgres"
    digest = hashlib.sha256(str(root).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"rds_pipeline_demo_{digest}"


def start_demo_source(root: Path) -> DemoSetup:
    """Start (creating on first use) the demo server with Pagila and a Dagster database; write the config."""
    root.mkdir(parents=True, exist_ok=True)
    server_dir = _server_dir(root)
    port_file = root / "port"
    port = int(port_file.read_text()) if port_file.exists() and (server_dir / "data").exists() else None
    server = LocalPostgres(embedded_bin_dir(), server_dir, port=port, password=DEMO_PASSWORD)
    fresh = not server.initialized
    if not (server.initialized and server.is_running()):
        server.start()
    server.wait_ready()
    port_file.write_text(str(server.port))
    if fresh:
        print(f"Loading Pagila into the embedded PostgreSQL on 127.0.0.1:{server.port} ...", flush=True)
        server.load_pagila(pagila_dir(), DEMO_DATABASE)
        server.psql(f"CREATE DATABASE {DAGSTER_DATABASE}")
    os.environ.setdefault(DEMO_PASSWORD_ENV, DEMO_PASSWORD)
    config_path = root / "rds_pipeline.yaml"
    if not config_path.exists():
        config_path.write_text(demo_config_text(server.port, []))
    return DemoSetup(root, server, config_path)


def demo_config_text(port: int, tables: list[str]) -> str:
    lines = [
        "# Written by `make demo`. Copy it as a starting point for your own rds_pipeline.yaml.",
        f"integration_name: {DEMO_INTEGRATION}",
        "source:",
        "  host: 127.0.0.1",
        f"  port: {port}",
        "  user: postgres",
        f"  password: ${{{DEMO_PASSWORD_ENV}}}",
        f"  database: {DEMO_DATABASE}",
        "  ssl: {mode: prefer}",
        "destination:",
        "  type: duckdb",
        "  path: replica.duckdb",
        "schedule: 1h",
        "tables:" if tables else "tables: []",
    ]
    for name in tables:
        lines.append(f"  - name: {name}")
        for key, value in KEY_BASED.get(name, {}).items():
            lines.append(f"    {key}: {value}")
    return "\n".join(lines) + "\n"


def dagster_environment(setup: DemoSetup) -> dict[str, str]:
    """DAGSTER_HOME with the project's dagster.yaml, its storage in the demo server's `dagster` database."""
    home = setup.root / "dagster_home"
    home.mkdir(exist_ok=True)
    shutil.copyfile(REPO / "dagster.yaml", home / "dagster.yaml")
    return {
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": setup.server.host,
        "DAGSTER_PG_PORT": str(setup.server.port),
        "DAGSTER_PG_USER": setup.server.superuser,
        "DAGSTER_PG_PASSWORD": setup.server.password,
        "DAGSTER_PG_DB": DAGSTER_DATABASE,
        "RDS_PIPELINE_CONFIG": str(setup.config_path),
        DEMO_PASSWORD_ENV: DEMO_PASSWORD,
    }


def prepare(root: Path) -> tuple[DemoSetup, dict[str, str]]:
    """Source up, catalog discovered, every Pagila table and view selected, Dagster instance configured."""
    from rds_pipeline.engine.config import load_config
    from rds_pipeline.engine.selection import stats_wanted
    from rds_pipeline.engine.source.discovery import discover

    setup = start_demo_source(root)
    config = load_config(setup.config_path)
    catalog = discover(config.source, databases=[DEMO_DATABASE])
    names = [r.qualified_name for r in catalog.relations]
    setup.config_path.write_text(demo_config_text(setup.server.port, names))
    config = load_config(setup.config_path)
    catalog = discover(config.source, databases=[DEMO_DATABASE], stats_for=stats_wanted(config.tables, DEMO_DATABASE))
    catalog.save(config.catalog_path)
    print(f"Discovered and selected {len(names)} Pagila tables and views; catalog: {config.catalog_path}")
    env = dagster_environment(setup)
    os.environ.update(env)
    exports = setup.root / "env.sh"  # the demo server's password stays in a file, never in the output
    exports.write_text("".join(f"export {key}={shlex.quote(value)}\n" for key, value in env.items()))
    exports.chmod(0o600)
    print(f"To point any rds-pipeline or dagster command at this demo while its server runs: source {exports}")
    return setup, env


def run_demo(root: Path, keep_running: bool = False) -> int:
    from rds_pipeline.dagster_defs.run import run_sync
    from rds_pipeline.dagster_defs.usage import row_usage, usage_markdown
    from rds_pipeline.engine.report import format_loading_report

    setup, env = prepare(root)
    try:
        import dagster as dg

        from rds_pipeline.engine.progress import console_progress

        with console_progress(), dg.DagsterInstance.get() as instance:
            outcome = run_sync(setup.config_path, instance=instance, quiet=True)
            ok = outcome.success
            print("\nLoading report (this run):")
            print(format_loading_report(outcome.rows))
            for failed in outcome.failures:
                print(f"FAILED {failed['table']}: {failed['error']}", file=sys.stderr)
            for error in outcome.errors:
                print(f"FAILED {error}", file=sys.stderr)
            from rds_pipeline.dagster_defs.definitions import build_definitions

            keys = [
                k
                for k in build_definitions(setup.config_path).resolve_asset_graph().get_all_asset_keys()
                if k.path[0] == "pagila_demo"
            ]
            usage = row_usage(instance, keys)
            print(f"\nRow usage from the Dagster event log ({len(usage)} table-days):")
            print(usage_markdown(usage[:5]) + ("\n| … |" if len(usage) > 5 else ""))
        print(
            f"\nReplica: {setup.root / 'replica.duckdb'} (schema pagila_demo). Dagster UI: `make dev`, "
            "then open http://127.0.0.1:3000"
        )
        return 0 if ok else 1
    finally:
        if not keep_running:
            setup.server.stop()


def dagster_dev_command(port: int) -> list[str]:
    """`dagster dev` on the project's workspace, on 127.0.0.1:<port> (the demo's UI, and the UI tests')."""
    return [
        str(Path(sys.executable).with_name("dagster")),
        "dev",
        "-w",
        str(REPO / "workspace.yaml"),
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
    ]


def run_ui(root: Path, port: int = 3000) -> int:
    """`make dev`: the same setup, then the Dagster UI (webserver and daemon) on http://127.0.0.1:<port>.
    Ctrl-C or SIGTERM stops everything it started: `dagster dev` (which stops its webserver, daemon and code
    server), then the embedded PostgreSQL. Each wait is bounded."""
    setup, env = prepare(root)

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # SIGTERM takes the Ctrl-C path, so the cleanup below runs

    previous = signal.signal(signal.SIGTERM, stop)
    dev: subprocess.Popen[bytes] | None = None
    print(f"Dagster UI: http://127.0.0.1:{port}  (Ctrl-C stops it)", flush=True)
    try:
        dev = subprocess.Popen(
            dagster_dev_command(port),
            env={**os.environ, **env},
            cwd=REPO,
        )
        return dev.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the cleanup short
        if dev is not None and dev.poll() is None:
            dev.terminate()
            try:
                dev.wait(timeout=DEV_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                dev.kill()
                dev.wait(timeout=10)
        setup.server.stop()
        signal.signal(signal.SIGTERM, previous)
