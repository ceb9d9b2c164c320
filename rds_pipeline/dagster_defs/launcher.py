"""A run launcher for one machine that starts each run in its own process and tells run monitoring whether that
process is still alive. Before a run starts, it gives the run's single-writer pools their limit of 1 (pools.py).
The run itself then cleans the runs whose process is gone, before it claims a slot (executor.py).

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
from rds_pipeline.dagster_defs.run_process import RunProcess


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
        args = ExecuteRunArgs(
            job_origin=origin, run_id=run.run_id, instance_ref=self._instance.get_ref(), set_exit_code_on_failure=True
        )
        # the code location's own Python (its packages), as `python -m dagster`: no PATH needed
        python = origin.repository_origin.executable_path or sys.executable
        command = [python, "-m", "dagster", "api", "execute_run", serialize_value(args)]
        process = subprocess.Popen(command, start_new_session=True)  # its own group: a Ctrl-C here is not its
        self._instance.add_run_tags(run.run_id, RunProcess.of(process.pid).tags())

    def terminate(self, run_id: str) -> bool:
        run = self._instance.get_run_by_id(run_id)
        process = RunProcess.from_tags(run.tags) if run else None
        if run is None or process is None or process.state() != "alive":
            return False
        self._instance.report_run_canceling(run)
        os.kill(process.pid, signal.SIGTERM)  # the run worker stops its steps and reports the run canceled
        return True

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> CheckRunHealthResult:
        process = RunProcess.from_tags(run.tags)
        if process is None:
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, "no run process recorded")
        state = process.state()
        if state == "alive":
            return CheckRunHealthResult(WorkerStatus.RUNNING, run_worker_id=str(process.pid))
        if state == "elsewhere":
            return CheckRunHealthResult(WorkerStatus.UNKNOWN, f"the run process runs on {process.host}")
        return CheckRunHealthResult(
            WorkerStatus.FAILED,
            f"the run process ({process.describe()}) exited without finishing the run (killed, or out of memory)",
            run_worker_id=str(process.pid),
        )
