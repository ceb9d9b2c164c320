"""`make demo` from a fresh clone: Pagila replicated end to end through Dagster, with a loading report."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_make_demo_from_a_fresh_clone(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    # the working tree's uncommitted changes are what we test: copy them over the clone
    for path in subprocess.run(
        ["git", "ls-files", "-m", "-o", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split():
        target = clone / path
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / path, target)
    result = subprocess.run(["make", "demo"], cwd=clone, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "Loading Pagila into the embedded PostgreSQL" in out
    assert "Discovered and selected 27 Pagila tables and views" in out
    assert "Loading report (this run):" in out
    assert "TOTAL (27 tables)" in out and "pagila_demo/payment" in out and "key_based" in out
    assert "Row usage from the Dagster event log" in out
    # compact live progress: one line per table as it finishes, no Dagster event lines or library warnings
    assert result.stderr.count("  done    ") == 27, result.stderr[-3000:]
    run = result.stderr[result.stderr.index("  done    ") :] + out[out.index("Discovered and selected") :]
    assert "DEBUG" not in run and "Warning" not in run, run[-3000:]  # (pip's own install output comes before)
    assert (clone / ".venv" / "bin" / "rds-pipeline").exists()  # make demo made its own virtualenv
    import duckdb

    with duckdb.connect(str(clone / ".demo" / "replica.duckdb"), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM pagila_demo.rental").fetchone()[0] == 16044
        assert conn.execute("SELECT count(*) FROM pagila_demo.actor_info").fetchone()[0] == 200
    again = subprocess.run(["make", "demo"], cwd=clone, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Loading Pagila" not in again.stdout and "TOTAL (27 tables)" in again.stdout
