"""``make demo``: an embedded PostgreSQL 18 loaded with Pagila as the source, no installed server needed."""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from rds_pipeline.local_postgres import LocalPostgres, _others_can_reach, embedded_bin_dir, pagila_dir

DEMO_DATABASE = "pagila"
DEMO_PASSWORD_ENV = "RDS_DEMO_PASSWORD"
DEMO_PASSWORD = "rds-demo-local-only"
DEMO_INTEGRATION = "Pagila Demo"


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
    """Start (creating on first use) the demo server with Pagila, and write the demo config beside it."""
    root.mkdir(parents=True, exist_ok=True)
    server_dir = _server_dir(root)
    port_file = root / "port"
    port = int(port_file.read_text()) if port_file.exists() and (server_dir / "data").exists() else None
    server = LocalPostgres(embedded_bin_dir(), server_dir, port=port, password=DEMO_PASSWORD)
    fresh = not server.initialized
    if server.initialized and server.is_running():
        server.wait_ready()
    else:
        server.start()
        server.wait_ready()
    port_file.write_text(str(server.port))
    if fresh:
        print(f"Loading Pagila into the embedded PostgreSQL on 127.0.0.1:{server.port} ...", flush=True)
        server.load_pagila(pagila_dir(), DEMO_DATABASE)
    os.environ.setdefault(DEMO_PASSWORD_ENV, DEMO_PASSWORD)
    config_path = root / "rds_pipeline.yaml"
    config_path.write_text(demo_config_text(server.port))
    return DemoSetup(root, server, config_path)


def demo_config_text(port: int) -> str:
    return f"""# Written by `make demo`. Copy it as a starting point for your own rds_pipeline.yaml.
integration_name: {DEMO_INTEGRATION}
source:
  host: 127.0.0.1
  port: {port}
  user: postgres
  password: ${{{DEMO_PASSWORD_ENV}}}
  database: {DEMO_DATABASE}
  ssl: {{mode: prefer}}
destination:
  type: duckdb
  path: replica.duckdb
"""
