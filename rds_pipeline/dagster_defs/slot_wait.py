"""The wait for a pool slot in a run executed in process (``rds-pipeline sync``): bounded, visible and cheap.

Dagster's in-process executor waits for a slot in a loop of its own, with no way to supply another: it has no
bound, it cannot be stopped (Ctrl-C only sets a flag that nothing reads until a step starts), it says nothing
for 5 minutes, and it spins a core (``InstanceConcurrencyContext.interval_to_next_pending_claim_check`` returns
``min(0, ...)``, never a time to sleep). ``bounded_slot_waits`` puts ``BoundedConcurrencyContext`` in its place
for the duration of one run: it sleeps between checks, cleans runs whose process is gone (``stale_runs.py``),
reports who holds the slot every few seconds, stops on Ctrl-C or SIGTERM, and fails at ``pool_wait_seconds``
with the fix. A test asserts each of these, so a Dagster upgrade that moves the seam fails the suite.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import ModuleType

import dagster as dg
from dagster._core.errors import DagsterExecutionInterruptedError
from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext
from dagster._core.executor import in_process
from dagster._utils.interrupts import check_captured_interrupt

from rds_pipeline.dagster_defs.stale_runs import clean_stale_runs, slot_holders
from rds_pipeline.engine import interrupts
from rds_pipeline.engine.errors import RdsPipelineError

log = logging.getLogger(__name__)

CHECK_SECONDS = 2.0  # how often a waiting step looks at its pool again (and for runs left behind)
REPORT_SECONDS = 5.0  # how often it says what it waits for
SLEEP_SECONDS = 0.25  # the longest sleep between two looks at a stop request


class PoolWaitTimeout(RdsPipelineError):
    """A step waited ``pool_wait_seconds`` for a slot that never came free."""


class BoundedConcurrencyContext(InstanceConcurrencyContext):
    """Dagster's claims, with a bound, reports, a stop on signals and sleeps between checks."""

    def __init__(
        self,
        instance: dg.DagsterInstance,
        dagster_run: dg.DagsterRun,
        bound_seconds: float | None,
        report: Callable[[str], None],
    ) -> None:
        super().__init__(instance, dagster_run)
        self._bound = bound_seconds  # None: wait as long as it takes (a launched run: the UI shows it waiting)
        self._report = report
        self._since: dict[str, float] = {}
        self._last_report = 0.0
        self._last_clean = 0.0
        self._last_pause = 0.0

    def claim(self, concurrency_key: str, step_key: str, step_priority: int = 0) -> bool:
        if check_captured_interrupt() or interrupts.stop_requested():  # stop here: the claim is withdrawn
            raise DagsterExecutionInterruptedError()
        if super().claim(concurrency_key, step_key, step_priority):
            self._since.pop(step_key, None)
            return True
        now = time.monotonic()
        since = self._since.setdefault(step_key, now)
        # Dagster backs off to 15 s between checks; look every CHECK_SECONDS instead (two small queries)
        if step_key in self._pending_timeouts:
            self._pending_timeouts[step_key] = min(self._pending_timeouts[step_key], time.time() + CHECK_SECONDS)
        if now - self._last_clean >= CHECK_SECONDS:
            self._last_clean = now
            cleaned = clean_stale_runs(self._instance, by=f"run {self._run_id[:8]}")
            for run in cleaned:
                self._report(run.line())
            if cleaned:
                self._pending_timeouts[step_key] = 0.0  # a slot may be free now: look again at once
        if now - self._last_report >= REPORT_SECONDS or now == since:
            self._last_report = now
            self._report(self.describe_wait(concurrency_key, now - since))
        self._pause(now)
        if self._bound is not None and now - since > self._bound:
            holders = ", ".join(h.describe() for h in slot_holders(self._instance, concurrency_key)) or "no run"
            raise PoolWaitTimeout(
                f"waited {now - since:.0f} s (pool_wait_seconds) for a slot of pool {concurrency_key}, held by "
                f"{holders}. Fix: let that run finish, or end it (`dagster run delete`, or terminate it in the UI) "
                "if it is stuck; raise pool_wait_seconds in rds_pipeline.yaml to wait longer"
            )
        return False

    def _pause(self, now: float) -> None:
        """Dagster's multiprocess executor asks for its slots in a loop with no sleep at all: pause here, at most
        once per round of its loop (the other blocked steps of the round do not pause again)."""
        if now - self._last_pause >= SLEEP_SECONDS:
            time.sleep(SLEEP_SECONDS / 2)
            self._last_pause = time.monotonic()

    def describe_wait(self, pool: str, waited: float) -> str:
        holders = ", ".join(h.describe() for h in slot_holders(self._instance, pool)) or "a run that just ended"
        bound = f" of {self._bound:.0f} s (pool_wait_seconds); Ctrl-C stops" if self._bound is not None else ""
        return f"waiting for pool {pool} held by {holders}: {waited:.0f} s{bound}"

    def interval_to_next_pending_claim_check(self) -> float:
        """How long the executor may sleep: until the next check, at most SLEEP_SECONDS (a stop request is
        read between two sleeps)."""
        if not self._pending_claims:
            return 0.0
        now = time.time()
        upcoming = [ready_at - now for ready_at in self._pending_timeouts.values()]
        return max(0.01, min([SLEEP_SECONDS, *upcoming]))


@contextmanager
def bounded_slot_waits(
    bound_seconds: float | None, report: Callable[[str], None] | None = None, executor_module: ModuleType = in_process
) -> Iterator[None]:
    """Runs executed within this block by ``executor_module``'s executor (in process by default; the
    multiprocess one for launched runs) wait for their slots through BoundedConcurrencyContext."""
    say = report or log.warning

    def make(instance: dg.DagsterInstance, dagster_run: dg.DagsterRun) -> BoundedConcurrencyContext:
        return BoundedConcurrencyContext(instance, dagster_run, bound_seconds, say)

    original = executor_module.InstanceConcurrencyContext
    executor_module.InstanceConcurrencyContext = make  # type: ignore[attr-defined]
    try:
        yield
    finally:
        executor_module.InstanceConcurrencyContext = original  # type: ignore[attr-defined]
