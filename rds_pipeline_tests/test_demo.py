"""`rds-pipeline demo` (what `make demo` runs) starts its own PostgreSQL with Pagila and connects to it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_demo_runs_on_the_embedded_server(tmp_path: Path) -> None:
    demo_dir = tmp_path / "demo"
    command = [sys.executable, "-m", "rds_pipeline.cli", "demo", "--dir", str(demo_dir)]
    first = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "Loading Pagila into the embedded PostgreSQL" in first.stdout
    assert "Server version: 18." in first.stdout
    assert "Demo server stopped" in first.stdout
    assert (demo_dir / "rds_pipeline.yaml").read_text().startswith("# Written by `make demo`")
    again = subprocess.run(command, capture_output=True, text=True, timeout=300)  # reuses the loaded server
    assert again.returncode == 0, again.stderr
    assert "Loading Pagila" not in again.stdout and "Read replica: no (primary)" in again.stdout
