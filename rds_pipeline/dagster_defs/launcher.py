"""A run launcher for one machine that starts each run in its own process and tells run monitoring whether that
process is still alive. Before a run starts, it gives the run's single-writer pools their limit of 1 (pools.py).

Dagster's DefaultRunLauncher cannot report a run worker's health, so a run killed with kill -9 (or by the OOM
killer) stays STARTED forever; the launchers that can (K8s, ECS, Docker) need a cluster. This one records the
run process's pid on the run, and run monitoring (`dagster.yaml`, in dagster-daemon) marks the run failed once
that process is gone without having finished the run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster._core.launcher import CheckRunHealthResult, LaunchRunContext, RunLauncher, WorkerStatus
from dagster._grpc.types import ExecuteRunArgs
from dagster._serdes import ConfigurableClass, ConfigurableClassData, serialize_value

from rds_pipeline.dagster_defs.pools import ensure_single_writer_pools

PID_TAG = "rds_pipeline/run_pid"


class ProcessRunLauncher(RunLauncher, ConfigurableClass):
    """Each run in its own ``dagster api execute_run`` process, started by whoever launches it (the daemon for
    queued runs); its pid is a tag on the run."""

    def __init__(self, inst_data: ConfigurableClassData | None = None) -> None:
        self._inst_data = inst_data
        super().__init__()

    @property
    def inst_data(self) -> ConfigurableClassData | None:
        return self._inst_data

    @classmethod
    def config_type(cls) -> dict[str, Any]:
        return {}

    @classmethod
    def from_config_value(cls, inst_data: ConfigurableClassData, config_value: Mapping[str, Any]) -> ProcessRunLauncher:
        return cls(inst_data=inst_data)

    def launch_run(self, context: LaunchRunContext) -> None:
        run = context.dagster_run
        origin = context.job_code_origin
        if origin is None:
            raise dg.DagsterInvariantViolationError(f"run {run.run_id} has no code origin to start it from")
        pools = run.run_op_concurrency.all_pools if run.run_op_concurrency else None
        ensure_single_writer_pools(self._instance, pools or ())  # a DuckDB file's writers, a slot's reader: one
        args = ExecuteRunArgs(job_origin=origin, run_id=run.run_id, instance_ref=self._instance.get_ref(),
                              set_exit_code_on_failure=True)  # fmt: skip
        # the code location's own Python (its packages), as `python -m dagster`: no PATH needed
        python = origin.repository_origin.executable_path or sys.executable
        command = [python, "-m", "dagster", "api", "execute_run", serialize_value(args)]
        process = subprocess.Popen(command, start_new_session=True)  # its own group: a Ctrl-C here is not its
        self._instance.add_run_tags(run.run_id, {PID_TAG: str(process.pid)})

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        pid = _pid(run.tags if run else {})
        if run is None or pid is None or not _alive(pid, run_id):
            return False
        self._instance.report_run_canceling(run)
        os.kill(pid, signal.SIGTERM)  # the run worker stops its steps and reports the run canceled
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        pid = _pid(run.tags)
        if pid is None:
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "no run process recorded")
        if _alive(pid, run.run_id):
            return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=str(pid))
        return CheckRunHealthResult(WorkerStatus.FAILED, f"the run process {pid} exited without finishing the run "
                                    "(killed, or out of memory)", run_worker_id=str(pid))  # fmt: skip


def _pid(tags: Mapping[str, str]) -> int | None:
    value = tags.get(PID_TAG)
    return int(value) if value and value.isdigit() else None


def _alive(pid: int, run_id: str) -> bool:
    """Whether the run's process still runs: a zombie (ended, not yet reaped by its parent) has ended (we reap
    our own), and a pid the system reused for another command is not the run's."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child: another process launched it
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as status:
            state = next((line.split()[1] for line in status if line.startswith("State:")), "")
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            if run_id.encode() not in cmdline.read():
                return False
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)  # no /proc (macOS): ask the kernel
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return state != "Z"
