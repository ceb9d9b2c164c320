"""The executor of every job: Dagster's default (multiprocess, or in process by config), wrapped so that a run
started by any launcher (the UI, a schedule, a sensor, a backfill; Dagster's default launcher too) first records
its process on the run, cleans the runs whose process is gone (``stale_runs.py``) and gives its single-writer
pools their limit of 1 (``pools.py``: Dagster's default launcher does not), and then waits for its
pool slots cheaply, looking again every 2 s and cleaning as it waits (``slot_wait.py``). A launched run waits as
long as its pool needs (a backfill's runs may queue for hours; the UI shows them waiting); ``rds-pipeline sync``
bounds its own wait with ``pool_wait_seconds``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from typing import Any

import dagster as dg
from dagster._core.events import DagsterEvent, EngineEventData
from dagster._core.execution.retries import RetryMode
from dagster._core.execution.step_dependency_config import StepDependencyConfig
from dagster._core.executor.base import Executor

from rds_pipeline.dagster_defs.pools import ensure_single_writer_pools
from rds_pipeline.dagster_defs.run_process import RunProcess
from rds_pipeline.dagster_defs.slot_wait import bounded_slot_waits
from rds_pipeline.dagster_defs.stale_runs import clean_stale_runs

log = logging.getLogger(__name__)
BASE = dg.multi_or_in_process_executor


class RecoveringExecutor(Executor):
    """Dagster's executor, after the run recorded its process and cleaned the runs left behind."""

    def __init__(self, inner: Executor) -> None:
        self._inner = inner

    @property
    def retries(self) -> RetryMode:
        return self._inner.retries

    @property
    def step_dependency_config(self) -> StepDependencyConfig:
        return self._inner.step_dependency_config

    def execute(self, plan_context: Any, execution_plan: Any) -> Iterator[DagsterEvent]:
        instance, run_id = plan_context.instance, plan_context.run_id
        instance.add_run_tags(run_id, RunProcess.of().tags())  # this run worker is the run's process
        for cleaned in clean_stale_runs(instance, by=f"run {run_id[:8]}"):
            yield DagsterEvent.engine_event(plan_context, cleaned.line(), EngineEventData())
        # a DuckDB file's writers and a slot's reader, one at a time, whichever launcher started the run
        graph = plan_context.job.get_definition().graph
        ensure_single_writer_pools(instance, {op.pool for op in graph.iterate_op_defs() if op.pool})
        module = sys.modules[type(self._inner).__module__]
        if not hasattr(module, "InstanceConcurrencyContext"):
            yield from self._inner.execute(plan_context, execution_plan)
            return
        with bounded_slot_waits(None, log.warning, module):
            yield from self._inner.execute(plan_context, execution_plan)


# (the overload names only user-written schemas; BASE.config_schema is the built one it becomes)
@dg.executor(name=BASE.name, config_schema=BASE.config_schema, requirements=BASE.get_requirements)  # type: ignore[call-overload]
def recovering_executor(init_context: dg.InitExecutorContext) -> Executor:
    """Dagster's default executor; first, the runs killed without a trace are cleaned (rds_pipeline)."""
    return RecoveringExecutor(BASE.executor_creation_fn(init_context))  # type: ignore[misc]
