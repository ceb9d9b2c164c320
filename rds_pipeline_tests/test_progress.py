"""`rds-pipeline sync` on a real terminal (tmux): one line per table as it finishes, a long copy's rate and ETA,
then the loading report; no Dagster DEBUG lines and no library warnings (they are in the UI; -v shows them)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.dagster_defs.project import PASSWORD_ENV, make_project


def test_sync_shows_compact_live_progress(pg18: LocalPostgres, tmp_path: Path) -> None:
    if shutil.which("tmux") is None:
        pytest.skip("tmux is not installed (apt-get install tmux)")
    ddl = (
        "CREATE TABLE big (id int PRIMARY KEY, v text); INSERT INTO big SELECT g, repeat('x', 200) FROM "
        "generate_series(1, 300000) g; ANALYZE big; CREATE TABLE small (id int PRIMARY KEY); "
        "INSERT INTO small VALUES (1), (2); CREATE TABLE tiny (id int PRIMARY KEY)"
    )
    project = make_project(
        pg18, tmp_path, [{"name": "public.big"}, {"name": "public.small"}, {"name": "public.tiny"}], ddl=ddl
    )
    session = f"rds_progress_{os.getpid()}"
    env = {
        **os.environ,
        PASSWORD_ENV: pg18.password,
        "RDS_PIPELINE_CONFIG": str(project.path),
        "RDS_PIPELINE_PROGRESS_SECONDS": "0.05",
        "DAGSTER_HOME": str(tmp_path / "dagster_home"),
    }
    (tmp_path / "dagster_home").mkdir()
    command = f"{sys.executable} -m rds_pipeline.cli sync; echo EXIT=$?; sleep 60"
    subprocess.run(["tmux", "new-session", "-d", "-s", session, "-x", "220", "-y", "60", command], env=env, check=True)
    try:
        deadline = time.monotonic() + 120
        screen = ""
        while time.monotonic() < deadline and "EXIT=" not in screen:
            time.sleep(0.5)
            screen = subprocess.run(
                ["tmux", "capture-pane", "-p", "-t", session, "-S", "-200"], capture_output=True, text=True
            ).stdout
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    lines = [line for line in screen.splitlines() if line.strip()]
    assert "EXIT=0" in screen, screen
    done = [line for line in lines if line.startswith("  done    ")]
    assert len(done) == 3 and {line.split()[1].rstrip(":").split(".")[-1] for line in done} == {"big", "small", "tiny"}
    assert any(line.startswith("  copying ") and "ETA" in line and "rows/s" in line for line in lines), screen
    report = next(i for i, line in enumerate(lines) if line.startswith("table "))
    assert all(lines.index(line) < report for line in done)  # live lines first, then the loading report
    assert "TOTAL (3 tables)" in screen
    assert "DEBUG" not in screen and "Warning" not in screen and "STEP_" not in screen
