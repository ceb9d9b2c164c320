"""Read a slot up to the WAL position of the moment the run started, apply it in batches, and confirm each batch
to the server only after the destination committed it (never on receipt).

Protocol 1: the server sends a transaction only once it committed, so changes go straight into the batch. On a
restart the reader resumes from the LSN the destination holds and skips what it already applied; a slot that
confirmed more than the destination holds lost rows, and the run fails saying how to recover.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import select
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import psycopg2.extensions
from psycopg2 import sql

from rds_pipeline.engine.config import SourceConfig
from rds_pipeline.engine.core.changes import ChangeBatch, ChunkFilter, Layout
from rds_pipeline.engine.core.messages import Begin, Commit, Relation, Truncate, lsn_int, lsn_text
from rds_pipeline.engine.core.rows import one
from rds_pipeline.engine.destinations.base import ApplyReport, Destination, SourceConnect
from rds_pipeline.engine.errors import GapDetected, RdsPipelineError, TableApplyError
from rds_pipeline.engine.replication.cdc.evolve import evolve, relation_columns
from rds_pipeline.engine.replication.cdc.generated import GeneratedFiller
from rds_pipeline.engine.replication.cdc.pgoutput import PgOutputDecoder
from rds_pipeline.engine.replication.cdc.slot import WAL_POSITION, replication_connection
from rds_pipeline.engine.selection import SelectedTable
from rds_pipeline.engine.source.connection import connect_source

if TYPE_CHECKING:  # paramiko loads only when a tunnel is opened
    from rds_pipeline.engine.source.tunnel import SshTunnel

PROTOCOL_VERSION = 1
WAIT_SECONDS = 1.0  # one bounded wait for the server between two reads
QUIET_SECONDS = 0.05  # no message for this long: the stream may have reached the server's WAL end


def apply_batch(
    destination: Destination,
    tables: dict[tuple[str, str], SelectedTable],
    batch: ChangeBatch,
    slot: str,
    soft_deletes: bool,
    source: SourceConnect | None = None,
) -> ApplyReport:
    """The destination's own apply: rows and the slot's LSN in one transaction (a seam the kill tests cut)."""
    return destination.changes().apply_batch(tables, batch, slot, soft_deletes, source)


@dataclass
class StreamResult:
    start_lsn: str | None
    end_lsn: str | None
    target_lsn: str
    transactions: int = 0
    skipped: int = 0  # already in the destination (applied, then the client stopped before confirming)
    batches: int = 0
    partial_flushes: int = 0  # applications inside one huge transaction (memory bound)
    undecoded: int = 0  # changes applied as COPY rows, never decoded (the fast path)
    evolved: dict[str, list[str]] = field(default_factory=dict)  # table id -> columns added, dropped, retyped
    counts: dict[str, int] = field(default_factory=lambda: {"insert": 0, "update": 0, "delete": 0, "truncate": 0})
    per_table: dict[str, dict[str, int]] = field(default_factory=dict)  # table id -> changes applied per kind

    def extend(self, more: StreamResult) -> None:
        """Add a later catch-up of the same run (after a backfill's copy) to this one: every count, and the end."""
        self.end_lsn = more.end_lsn or self.end_lsn
        self.target_lsn = more.target_lsn
        self.transactions += more.transactions
        self.skipped += more.skipped
        self.batches += more.batches
        self.partial_flushes += more.partial_flushes
        self.undecoded += more.undecoded
        for table_id, changes in more.evolved.items():
            self.evolved.setdefault(table_id, []).extend(changes)
        for kind, count in more.counts.items():
            self.counts[kind] = self.counts.get(kind, 0) + count
        for table_id, counts in more.per_table.items():
            mine = self.per_table.setdefault(table_id, {})
            for kind, count in counts.items():
                mine[kind] = mine.get(kind, 0) + count


def catch_up(
    config: SourceConfig,
    destination: Destination,
    tables: dict[tuple[str, str], SelectedTable],
    slot: str,
    publication: str,
    *,
    max_batch_changes: int = 50_000,
    timeout_seconds: float = 600.0,
    since: dict[tuple[str, str], str] | None = None,
    soft_deletes: bool = False,
    tunnel: SshTunnel | None = None,
    generated: dict[str, set[str]] | None = None,
    ranged: dict[tuple[str, str], ChunkFilter] | None = None,
) -> StreamResult:
    """Apply the slot's changes up to the source's WAL position as of now (``WAL_POSITION``), then stop. ``since``: per table, the
    LSN of its snapshot (its changes in transactions committed before it are already in the copy).
    ``generated``: per table id, its generated columns (the stream may leave them out: see ``generated.py``).
    ``ranged``: per table being copied chunk by chunk, which keys each transaction may touch."""
    conn = connect_source(config, tunnel)
    with contextlib.closing(conn), conn.cursor() as cur:
        cur.execute(
            sql.SQL(
                "SELECT {}::text, (SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s)"
            ).format(WAL_POSITION),
            (slot,),
        )
        target_text, confirmed = one(cur.fetchone())
    if confirmed is None:
        raise RdsPipelineError(f"replication slot {slot!r} does not exist. Fix: run `rds-pipeline cdc setup`")
    state = destination.changes()
    applied = state.applied_lsn(slot)
    interrupted = applied is not None and state.was_reading(slot)
    if applied is not None and lsn_int(confirmed) > lsn_int(applied) and not interrupted:
        # (after a run that stopped mid-stream, a slot ahead of the destination is psycopg2's safe advance past
        # WAL that held nothing for us; the server resends every transaction committed after it)
        raise GapDetected(
            f"slot {slot!r} confirmed changes up to {confirmed}, but the destination holds them only up "
            f"to {applied}: the changes between are gone from the log. Fix: run `rds-pipeline cdc drop`, "
            "then sync again (every log-based table is copied again from a new snapshot)"
        )
    result = StreamResult(applied, applied, target_text)
    target, done = lsn_int(target_text), lsn_int(applied) if applied else 0
    if applied is not None:
        state.mark_reading(slot, True)
    replication = replication_connection(config, tunnel)
    try:
        cur = replication.cursor()
        cur.start_replication(
            slot_name=slot,
            decode=False,
            start_lsn=done,
            status_interval=10,
            options={"proto_version": str(PROTOCOL_VERSION), "publication_names": publication},
        )
        reader = _Reader(
            destination,
            tables,
            slot,
            {name: lsn_int(lsn) for name, lsn in (since or {}).items()},
            soft_deletes,
            lambda: connect_source(config, tunnel),
            generated or {},
            ranged or {},
        )
        try:
            reader.read(cur, target, done, result, max_batch_changes, time.monotonic() + timeout_seconds)
        finally:
            reader.close()
    finally:
        replication.close()
    return result


class _Reader:
    """One pass over the slot: batches of committed transactions, each applied then confirmed."""

    def __init__(
        self,
        destination: Destination,
        tables: dict[tuple[str, str], SelectedTable],
        slot: str,
        since: dict[tuple[str, str], int],
        soft_deletes: bool,
        connect: Callable[[], psycopg2.extensions.connection],
        generated: dict[str, set[str]],
        ranged: dict[tuple[str, str], ChunkFilter] | None = None,
    ) -> None:
        self.destination, self.tables, self.slot = destination, dict(tables), slot
        self.since, self.soft_deletes = since, soft_deletes
        self.layouts = {name: Layout(t.column_names, t.primary_key) for name, t in tables.items()}
        self._connect = connect
        self.generated = generated
        self.ranged = ranged or {}
        self._filler = GeneratedFiller(connect, {t for t, names in generated.items() if names})
        # rows the destination loads undecoded (``CopyRow``): not those whose generated values must be filled
        self.copy_tables = frozenset(
            name
            for name, table in tables.items()
            if destination.changes().takes_copy_rows and not generated.get(table.id)
        )
        self._catalog: psycopg2.extensions.connection | None = None  # to describe a Relation's types
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="rds-cdc-apply")
        self._pending: (
            tuple[concurrent.futures.Future[Any], ChangeBatch, dict[tuple[str, str], SelectedTable]] | None
        ) = None

    def close(self) -> None:
        if self._pending is not None:  # an error elsewhere: let the batch in flight end (commit or roll back)
            concurrent.futures.wait([self._pending[0]])
        self._pool.shutdown(wait=True)
        self._filler.close()
        if self._catalog is not None:
            self._catalog.close()

    def evolve(self, cur: Any, batch: ChangeBatch, relation: Relation, result: StreamResult) -> ChangeBatch:
        """A Relation message for a selected table: apply any column added, dropped or retyped at the source.
        The changes before it (in the old shape) are applied first."""
        name = (relation.namespace, relation.name)
        if self._catalog is None:
            self._catalog = self._connect()
        current = self.tables[name]
        columns = relation_columns(self._catalog, relation)
        sent = {c.name for c in columns}
        # a generated column the stream leaves out is still there (filled before the apply), not dropped
        columns += [c for c in current.columns if c.name in self.generated.get(current.id, ()) and c.name not in sent]
        table, changes = evolve(current, columns)
        if not changes:
            return batch
        if batch.messages:
            batch = self.flush(cur, batch, result, partial=True)
        self.tables[name] = table
        self.layouts[name] = Layout(table.column_names, table.primary_key)
        result.evolved.setdefault(table.id, []).extend(changes)
        return batch

    def new_batch(self, previous: ChangeBatch | None = None) -> ChangeBatch:
        batch = ChangeBatch(layouts=self.layouts, ranged=self.ranged, copy_tables=self.copy_tables)
        if previous is not None:  # Relation messages are sent once per session: keep them (and the transaction's state)
            batch.relations = dict(previous.relations)
            batch.skip, batch.commit_time, batch.commit_lsn = previous.skip, previous.commit_time, previous.commit_lsn
        return batch

    def read(self, cur: Any, target: int, done: int, result: StreamResult, max_changes: int, deadline: float) -> None:
        decoder = PgOutputDecoder(PROTOCOL_VERSION)
        batch, in_transaction, skipping = self.new_batch(), False, False
        while True:
            message = cur.read_message()
            if message is None:
                if not in_transaction and cur.wal_end >= target:
                    break  # caught up with the moment the run started
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"slot {self.slot!r}: did not reach {lsn_text(target)} in time (at {lsn_text(cur.wal_end)})"
                    )
                if not select.select([cur], [], [], QUIET_SECONDS)[0]:  # quiet: ask the server where its WAL ends
                    cur.send_feedback(reply=True)  # (not on every empty read: each reply costs the walsender)
                    select.select([cur], [], [], WAIT_SECONDS)
                continue
            payload = message.payload
            if self.copy_tables and not skipping and batch.add_copy(payload):  # the hot path: a whole row, undecoded
                if batch.messages >= max_changes:  # one huge transaction: apply what it has so far (see flush)
                    batch = self.flush(cur, batch, result, partial=True)
                continue
            decoded = decoder.decode(payload)
            if isinstance(decoded, Begin):
                in_transaction, skipping = True, decoded.final_lsn < done
                batch.commit_time, batch.commit_lsn = decoded.commit_time, decoded.final_lsn
                batch.skip = frozenset(name for name, lsn in self.since.items() if decoded.final_lsn < lsn)
                continue
            if isinstance(decoded, Commit):
                in_transaction = False
                if skipping:
                    result.skipped += 1
                    continue
                batch.end_lsn = decoded.end_lsn
                result.transactions += 1
                if batch.messages >= max_changes:
                    batch = self.flush(cur, batch, result)
                continue
            name = (decoded.namespace, decoded.name) if isinstance(decoded, Relation) else None
            if name in self.tables and not skipping and name not in batch.skip:  # only shapes still to apply
                batch = self.evolve(cur, batch, decoded, result)  # type: ignore[arg-type]
            if isinstance(decoded, Truncate) and not skipping and self.ranged:
                self.refuse_truncate(batch, decoded)
            if not skipping or isinstance(decoded, Relation):  # a Relation comes once per session: always keep it
                batch.add(decoded)
                if batch.messages >= max_changes:  # one huge transaction: apply what it has so far (see flush)
                    batch = self.flush(cur, batch, result, partial=True)
        if batch.end_lsn is not None:
            self.flush(cur, batch, result)
        self.settle(cur, result)
        # psycopg2 moves the confirmed position to a keepalive's WAL end once every data message it received was
        # confirmed (psycopg2 PR #913); the server had sent all it decoded up to there, so recording the same
        # position in the destination keeps the two in step (and the gap check above meaningful)
        reached = max(cur.wal_end, done, batch.end_lsn or 0)
        self.destination.changes().record_lsn(self.slot, lsn_text(reached))
        cur.send_feedback(flush_lsn=reached, force=True, reply=True)  # recorded first, then confirmed
        self.destination.changes().mark_reading(self.slot, False)  # a clean end
        _await_reply(cur)
        result.end_lsn = lsn_text(reached)

    def refuse_truncate(self, batch: ChangeBatch, truncate: Truncate) -> None:
        """A TRUNCATE of a table copied chunk by chunk would wipe chunks copied after it too: that table's copy
        is void (the flow forgets it, and the next sync copies it again); the others stream on."""
        for oid in truncate.relation_oids:
            relation = batch.relations.get(oid)
            name = (relation.namespace, relation.name) if relation is not None else None
            if name in self.ranged and name not in batch.skip:
                raise TableApplyError(
                    self.tables[name].id,
                    "was truncated while its snapshot was being copied in chunks",
                )

    def flush(self, cur: Any, batch: ChangeBatch, result: StreamResult, partial: bool = False) -> ChangeBatch:
        """Apply ``batch`` in the background (the destination works while the next batch is read and decoded:
        two cores), then confirm it once committed. One batch in flight at most, so memory stays bounded.
        ``partial``: inside a transaction too large to hold: its changes so far are applied with the LSN of the
        last *whole* transaction, so after a crash the stream replays this one from its start, which converges
        (upserts and deletes by key, in order)."""
        self.settle(cur, result)
        tables = dict(self.tables)  # the shapes of this batch (a Relation message may change them meanwhile)
        self._pending = (
            self._pool.submit(self._fill_and_apply, tables, batch),
            batch,
            tables,
        )
        result.partial_flushes += partial
        return self.new_batch(batch)

    def _fill_and_apply(self, tables: dict[tuple[str, str], SelectedTable], batch: ChangeBatch) -> ApplyReport:
        """In the applying thread: the generated values the stream left out, then the destination's apply."""
        self._filler.fill(batch, tables)
        return apply_batch(self.destination, tables, batch, self.slot, self.soft_deletes, source=self._connect)

    def settle(self, cur: Any, result: StreamResult) -> None:
        """Wait for the batch in flight; once its rows and LSN are committed, confirm it to the server."""
        if self._pending is None:
            return
        future, batch, tables = self._pending
        self._pending = None
        future.result()  # rows and LSN committed together (a failure is raised here) ...
        if batch.end_lsn is not None:
            cur.send_feedback(flush_lsn=batch.end_lsn, force=True)  # ... and only then may the server forget them
            result.end_lsn = lsn_text(batch.end_lsn)
        result.batches += 1
        result.undecoded += batch.copied
        for name, count in batch.counts.items():
            result.counts[name] += count
        for (schema, name), counts in batch.per_table.items():
            table = tables.get((schema, name))
            if table is not None:
                mine = result.per_table.setdefault(table.id, {})
                for kind, count in counts.items():
                    mine[kind] = mine.get(kind, 0) + count


def _await_reply(cur: Any, seconds: float = 2.0) -> None:
    """Wait (bounded) for the server's answer to our last feedback: it reads messages in order, so once it
    answers, it has taken our confirmation (closing at once could drop it)."""
    deadline = time.monotonic() + seconds
    stamp = cur.io_timestamp
    while time.monotonic() < deadline:
        cur.read_message()
        if cur.io_timestamp != stamp:
            return
        select.select([cur], [], [], 0.1)
