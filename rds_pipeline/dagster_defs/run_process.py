"""Which process runs a run, recorded on the run as tags, so that any later process can tell whether it still runs.

A pid alone is not enough: after a restart, or on a busy machine, the system hands the same pid to another
process. The host, the boot (Linux's boot_id) and the process's own start time (clock ticks since boot) make a
reused pid, or a pid of an earlier boot, a different process; neither moves when the wall clock is stepped, so
a live run is never taken for a dead one. A run on another host is never judged from here: run monitoring (in the
daemon, through the run launcher) is what ends it.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psutil

PID_TAG = "rds_pipeline/run_pid"
HOST_TAG = "rds_pipeline/run_host"
BOOT_TAG = "rds_pipeline/run_boot"
STARTED_TAG = "rds_pipeline/run_process_started"

ProcessState = Literal["alive", "gone", "elsewhere"]


def _boot() -> str:
    """This boot: Linux's boot_id (the boot time moves when the wall clock is stepped; boot_id never does)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return f"{psutil.boot_time():.0f}"


def _started(pid: int) -> str | None:
    """When ``pid`` started: in clock ticks since boot on Linux (fixed for the process's life, whatever the wall
    clock does), else its creation time."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace").rsplit(")", 1)[1].split()
        return f"ticks:{fields[19]}"  # field 22, starttime
    except FileNotFoundError:
        return None
    except (OSError, IndexError):
        try:
            return f"{psutil.Process(pid).create_time():.2f}"
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return None


def _wall_time(started: str) -> dt.datetime | None:
    try:
        if started.startswith("ticks:"):
            return dt.datetime.fromtimestamp(psutil.boot_time() + int(started[6:]) / os.sysconf("SC_CLK_TCK"))
        return dt.datetime.fromtimestamp(float(started))
    except (ValueError, OSError):
        return None


@dataclass(frozen=True)
class RunProcess:
    """The process that runs (or ran) a run: where, which boot, which pid, started when (epoch seconds)."""

    host: str
    boot: str
    pid: int
    started: str

    @classmethod
    def of(cls, pid: int | None = None) -> RunProcess:
        """This process (or its child ``pid``, just started)."""
        pid = pid or os.getpid()
        return cls(socket.gethostname(), _boot(), pid, _started(pid) or "")

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> RunProcess | None:
        pid = tags.get(PID_TAG, "")
        if not pid.isdigit() or HOST_TAG not in tags or STARTED_TAG not in tags:
            return None
        return cls(tags[HOST_TAG], tags.get(BOOT_TAG, ""), int(pid), tags[STARTED_TAG])

    def tags(self) -> dict[str, str]:
        return {PID_TAG: str(self.pid), HOST_TAG: self.host, BOOT_TAG: self.boot, STARTED_TAG: self.started}

    def state(self) -> ProcessState:
        """alive: this very process still runs here; gone: it ended, was killed, or the machine restarted since;
        elsewhere: it runs (or ran) on another host, which only that host or run monitoring can tell."""
        if self.host != socket.gethostname():
            return "elsewhere"
        if self.boot and self.boot != _boot():
            return "gone"
        _reap(self.pid)
        try:
            if psutil.Process(self.pid).status() == psutil.STATUS_ZOMBIE:
                return "gone"
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            return "gone"
        except psutil.AccessDenied:
            return "alive"  # it exists and is not ours to look at: never judge it gone
        started = _started(self.pid)
        return "gone" if started is None or started != self.started else "alive"

    def describe(self) -> str:
        """``pid 4242 on host-a, started 12:01:07``"""
        when = _wall_time(self.started)
        return f"pid {self.pid} on {self.host}, started {when:%H:%M:%S}" if when else f"pid {self.pid} on {self.host}"


def _reap(pid: int) -> None:
    """A child of ours that ended stays a zombie until it is waited for (the launcher's run processes)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, OSError):
        pass
