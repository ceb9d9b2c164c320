"""Record the partitions a sync covered as materializations, in one storage write where the storage takes one.

One event per partition, the counts on the last one only (so sums over partitions stay right). A first
(historical) sync can cover about 1,000 time windows, and dagster-postgres writes one event in about 14 ms: 959
windows took 15 s, one at a time. Dagster writes a partition-range output's materializations through its batch
writer (``EventLogStorage.store_event_batch``, on when ``DAGSTER_EVENT_BATCH_SIZE`` > 0): one INSERT for the
events and one update of the asset's index. ``log_event`` takes no batch marker, so this builds the very events
``log_event`` builds, with one. Where those internals are missing it falls back to ``log_event``. Dagster's SQLite
event log (the default instance) has no batch writer of its own: ``sqlite_batch.py`` gives it one.
"""

from __future__ import annotations

import os
from typing import Any

import dagster as dg

BATCH_SIZE_ENV = "DAGSTER_EVENT_BATCH_SIZE"
BATCH_SIZE = "1000"  # Dagster flushes a batch at this size and at its last event


def record_partitions(
    context: dg.OpExecutionContext | dg.AssetExecutionContext,
    key: dg.AssetKey,
    partitions: list[str],
    metadata: dict[str, Any],
    with_counts: bool = True,
) -> None:
    """Log a materialization of ``key`` for each of ``partitions``; the last carries ``metadata`` when
    ``with_counts``, the others only the batch id and the plan."""
    short = {"batch_id": metadata["batch_id"], "plan": metadata["plan"]}
    last = len(partitions) - 1
    events = [
        dg.AssetMaterialization(
            asset_key=key, partition=partition, metadata=metadata if with_counts and index == last else short
        )
        for index, partition in enumerate(partitions)
    ]
    op_context = context.op_execution_context if isinstance(context, dg.AssetExecutionContext) else context
    step = getattr(op_context, "_step_execution_context", None)
    pending = getattr(op_context, "_events", None)
    if len(events) < 2 or step is None or not isinstance(pending, list):
        for event in events:
            context.log_event(event)
        return
    from dagster._core.events import DagsterEvent, DagsterEventBatchMetadata, generate_event_batch_id

    from rds_pipeline.dagster_defs.sqlite_batch import install

    install()  # the default instance's SQLite event log writes the batch in one transaction per file

    # process-wide and never unset: a batch another thread has open must still flush at its end. A user's own
    # value wins (0 turns batching off, and each event is then written on its own, as before).
    os.environ.setdefault(BATCH_SIZE_ENV, BATCH_SIZE)
    batch = generate_event_batch_id()
    for index, event in enumerate(events):
        # built as log_event builds it (which also logs it), with the batch marker; yielded with the step's events
        pending.append(DagsterEvent.asset_materialization(step, event, DagsterEventBatchMetadata(batch, index == last)))


TABLES_PER_WRITE = 100  # a tick over many tables writes its events this many tables at a time


class TableEvents:
    """The materializations and check results of a job step that syncs many tables, written
    ``TABLES_PER_WRITE`` tables at a time where that is one write.

    On Dagster's SQLite event log (the default instance), ``sqlite_batch.py`` stores a batch of materializations
    and check evaluations of any assets in one transaction per file. One write per event cost about 28 ms per
    table there (two events). Other storages take a batch of one asset's materializations only: there each table
    is written as it finishes, as before. Call ``flush`` when the step ends (a failure included)."""

    def __init__(self, context: dg.OpExecutionContext) -> None:
        from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

        self.context = context
        self.step = getattr(context, "_step_execution_context", None)
        self.pending = getattr(context, "_events", None)
        self.batched = (
            self.step is not None
            and isinstance(self.pending, list)
            and isinstance(context.instance.event_log_storage, SqliteEventLogStorage)
            and os.environ.get(BATCH_SIZE_ENV, BATCH_SIZE) != "0"
        )
        self.events: list[dg.AssetMaterialization | dg.AssetCheckEvaluation] = []
        self.tables = 0

    def add(
        self,
        key: dg.AssetKey,
        partitions: list[str],
        metadata: dict[str, Any],
        checks: list[dg.AssetCheckEvaluation],
    ) -> None:
        if not self.batched:
            record_partitions(self.context, key, partitions, metadata)
            for check in checks:
                self.context.log_event(check)  # type: ignore[arg-type]  # Dagster logs check evaluations too
            return
        short = {"batch_id": metadata["batch_id"], "plan": metadata["plan"]}
        last = len(partitions) - 1
        self.events += [
            dg.AssetMaterialization(asset_key=key, partition=p, metadata=metadata if i == last else short)
            for i, p in enumerate(partitions)
        ]
        self.events += checks
        self.tables += 1
        if self.tables >= TABLES_PER_WRITE:
            self.flush()

    def flush(self) -> None:
        """Write what was added since the last flush, as one batch."""
        if not self.events:
            return
        from dagster._core.events import (
            DagsterEvent,
            DagsterEventBatchMetadata,
            DagsterEventType,
            generate_event_batch_id,
        )

        from rds_pipeline.dagster_defs.sqlite_batch import install

        install()
        os.environ.setdefault(BATCH_SIZE_ENV, BATCH_SIZE)
        batch, last = generate_event_batch_id(), len(self.events) - 1
        assert self.step is not None and isinstance(self.pending, list)
        for index, event in enumerate(self.events):
            marker = DagsterEventBatchMetadata(batch, index == last)
            if isinstance(event, dg.AssetMaterialization):
                self.pending.append(DagsterEvent.asset_materialization(self.step, event, marker))
            else:  # as DagsterEvent.asset_check_evaluation builds it, with the batch marker
                verdict = "passed." if event.passed else "did not pass."
                described = "" if event.description is None else f" Description: '{event.description}'"
                self.pending.append(
                    DagsterEvent.from_step(
                        event_type=DagsterEventType.ASSET_CHECK_EVALUATION,
                        step_context=self.step,
                        event_specific_data=event,
                        message=f"Asset check '{event.check_name}' on '{event.asset_key.to_user_string()}' "
                        + verdict
                        + described,
                        batch_metadata=marker,
                    )
                )
        self.events, self.tables = [], 0
