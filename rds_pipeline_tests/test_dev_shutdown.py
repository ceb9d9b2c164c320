"""`make dev` (`rds-pipeline demo --ui`) stops every process it started, the embedded PostgreSQL included, on
Ctrl-C (SIGINT to the terminal's process group) and on SIGTERM (to the command alone, as a service manager
sends it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rds_pipeline.demo import _server_dir
from rds_pipeline.local_postgres import free_port
from rds_pipeline_tests.test_webserver import graphql


def _processes_mentioning(text: str) -> set[int]:
    """Live processes whose command line holds ``text`` (the demo folder: its PostgreSQL, its Dagster)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline and _alive(int(entry.name)):
            found.add(int(entry.name))
    return found


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


@pytest.mark.parametrize("how", ["ctrl_c", "sigterm"])
def test_make_dev_stops_everything_it_started(tmp_path: Path, how: str) -> None:
    folder = tmp_path / f"dev_{how}"
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "rds_pipeline.cli", "demo", "--ui", "--dir", str(folder), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    started: set[int] = set()
    try:
        deadline = time.monotonic() + 240
        while True:
            assert process.poll() is None, "make dev exited before the UI came up"
            try:
                if graphql(port, "{ repositoriesOrError { __typename } }")["repositoriesOrError"]:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the UI did not come up"
            time.sleep(1)
        server_dir = str(_server_dir(folder))  # the demo cluster's folder (as root, outside a private tmp dir)
        started = _descendants(process.pid) | _processes_mentioning(str(folder)) | _processes_mentioning(server_dir)
        assert _processes_mentioning(server_dir), "the embedded PostgreSQL should be running"  # daemonized by pg_ctl
        if how == "ctrl_c":
            os.killpg(process.pid, signal.SIGINT)  # the terminal sends it to the whole foreground group
        else:
            os.kill(process.pid, signal.SIGTERM)
        assert process.wait(timeout=120) == 0
        deadline = time.monotonic() + 30
        while (left := {p for p in started if _alive(p)}) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not left, f"still running after make dev stopped: {_commands(left)}"
        assert not _processes_mentioning(server_dir), "the embedded PostgreSQL is still running"
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        for pid in _processes_mentioning(str(folder)) | _processes_mentioning(str(_server_dir(folder))):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def _alive(pid: int) -> bool:
    """Running (a zombie has ended: its parent reaps it)."""
    try:
        state = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("State:"))
    except (OSError, StopIteration):
        return False
    return state.split()[1] != "Z"


def _commands(pids: set[int]) -> list[str]:
    commands = []
    for pid in pids:
        try:
            commands.append(Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:120])
        except OSError:
            pass
    return commands
