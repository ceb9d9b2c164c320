"""Log-based replication of an integration's tables, one run: check, set up, snapshot what needs it, stream.

Every decision is here, none in Dagster: which tables need a snapshot (no state row under the slot, or no
destination table), when the stream has a gap (the slot is gone, lost, or confirmed more than the destination
holds) and what to do about a slot another client holds. The order:

1. One run per slot at a time: a session advisory lock on the destination (bounded by ``lock_timeout``).
2. The source is ready (``wal_level``, the replication right); a table without a usable replica identity is
   refused by name, before anything is added to a publication.
3. A heartbeat (a logical message), so the slot advances even when the selected tables are idle (not on a
   standby, which cannot write).
4. The publication holds every log-based table (created or extended; or the SQL for an admin; on a standby,
   the SQL to run on the primary).
5. No slot, or a lost one (``on_slot_lost``): create it with an exported snapshot (failover where PostgreSQL
   17+ can) and copy every table under it. A slot: tables without a snapshot (added to the selection, reset,
   or failed before) get one from a temporary slot.
6. Catch up: apply the slot's changes to the source's WAL position as of now (on a standby, its replay
   position), in batches, confirming each only after the destination committed it. A table whose changes
   cannot be applied is dropped from this run (its snapshot is forgotten, so the next run copies it again) and
   the others go on.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import psycopg2
import psycopg2.errors
import psycopg2.extensions

from rds_pipeline.engine.config import IntegrationConfig
from rds_pipeline.engine.core.messages import lsn_int
from rds_pipeline.engine.core.ranges import KeyRange
from rds_pipeline.engine.destinations.base import Destination
from rds_pipeline.engine.errors import GapDetected, SetupNeeded, SlotBusy, TableApplyError
from rds_pipeline.engine.progress import table_done
from rds_pipeline.engine.replication.cdc.chunked import chunk_filter, chunked, copy_in_chunks
from rds_pipeline.engine.replication.cdc.evolve import evolve, live_columns
from rds_pipeline.engine.replication.cdc.setup import ask_primary, ensure_publication
from rds_pipeline.engine.replication.cdc.slot import SlotStatus, drop_slot, slot_status
from rds_pipeline.engine.replication.cdc.snapshot import SnapshotResult, snapshot_tables, temporary_slot_name
from rds_pipeline.engine.replication.cdc.stream import StreamResult, catch_up
from rds_pipeline.engine.selection import SelectedTable
from rds_pipeline.engine.source.connection import connect_source, open_tunnel
from rds_pipeline.engine.source.logical import publication_facts, readiness, replica_facts, replica_findings

if TYPE_CHECKING:  # paramiko loads only when a tunnel is opened
    from rds_pipeline.engine.source.tunnel import SshTunnel

HEARTBEAT_PREFIX = "rds_pipeline_heartbeat"
RESYNC_FIX = "run `rds-pipeline cdc drop`, then sync again: every log-based table is copied again from a new snapshot"


@dataclass
class LogBasedResult:
    slot: str
    publication: str
    statements: list[str] = field(default_factory=list)  # SQL run on the source (publication)
    snapshots: dict[str, int] = field(default_factory=dict)  # table id -> rows copied under a snapshot
    snapshot_lsn: dict[str, str] = field(default_factory=dict)
    stream: StreamResult | None = None
    failures: dict[str, str] = field(default_factory=dict)  # table id -> what went wrong and the fix
    status: SlotStatus | None = None  # after the run
    lag_seconds_before: float | None = None  # how stale the replica was when the run started
    heartbeat: bool = False
    seconds: float = 0.0
    evolved: dict[str, list[str]] = field(default_factory=dict)  # table id -> columns added, dropped, retyped
    generated: dict[str, set[str]] = field(default_factory=dict)  # table id -> its generated columns
    computed: dict[str, list[str]] = field(default_factory=dict)  # table id -> generated columns not in the stream
    recovered: str | None = None  # the slot was lost and re-created this run (on_slot_lost: resnapshot): why
    standby: bool = False  # the source is a hot standby (PostgreSQL 16+ decodes there)

    def changes(self, table_id: str) -> dict[str, int]:
        return dict(self.stream.per_table.get(table_id, {})) if self.stream else {}


def sync_log_based(
    config: IntegrationConfig,
    destination: Destination,
    tables: list[SelectedTable],
    *,
    chunks: dict[str, list[KeyRange]] | None = None,
    ranges: dict[str, KeyRange] | None = None,
) -> LogBasedResult:
    """Bring every log-based table of the integration up to the source's WAL position as of now. ``chunks``: how
    to split a table's snapshot; ``ranges``: key ranges to copy again (a backfill), consistently with the stream."""
    started = time.monotonic()
    result = LogBasedResult(config.slot_name, config.publication_name)
    applier = destination.changes()
    applier.lock_slot(result.slot)
    tunnel = None
    try:
        tunnel = open_tunnel(config.source)
        connect = _Connector(config, tunnel)
        usable = _prepare_source(connect, destination, tables, result)
        _forget_others(destination, result.slot, usable)
        in_chunks = _snapshot(connect, destination, usable, result, chunks or {})
        streamed = [t for t in usable if t.id not in result.failures]
        result.stream = _stream(connect, destination, streamed, result)
        for table in in_chunks:  # each chunk a short read, the stream caught up between them
            _copy_in_chunks(connect, destination, table, (chunks or {})[table.id], streamed, result)
        wanted = {
            t.id: r
            for t, r in ((t, (ranges or {}).get(t.id)) for t in streamed)
            if r is not None and t not in in_chunks
        }
        if wanted:  # copy the ranges under a fresh snapshot, then catch up past it: the ranges converge
            copied = snapshot_tables(
                config.source,
                destination,
                [t for t in streamed if t.id in wanted],
                temporary_slot_name(result.slot),
                temporary=True,
                ranges=wanted,
                tunnel=tunnel,
                wait_seconds=config.log_based.slot_create_wait_seconds,
            )
            for table_id, exc in copied.failed.items():
                result.failures[table_id] = f"re-copying its range failed: {_first_line(exc)}. Fix: run it again"
            for table_id, rows in copied.rows.items():
                result.snapshots[table_id] = rows
            result.stream.extend(
                _stream(connect, destination, [t for t in streamed if t.id not in result.failures], result)
            )
        for table_id, changes in result.stream.evolved.items():
            result.evolved.setdefault(table_id, []).extend(changes)
        with connect() as conn:
            result.status = slot_status(conn, result.slot)
    finally:
        if tunnel is not None:
            tunnel.close()
        applier.unlock_slot(result.slot)
    result.seconds = time.monotonic() - started
    for table in tables:
        if table.id not in result.failures:
            applied = result.changes(table.id)
            table_done(
                table.id,
                result.snapshots.get(table.id, 0) + applied.get("insert", 0),
                applied.get("update", 0),
                applied.get("delete", 0),
                result.seconds,
                "snapshot, then stream" if table.id in result.snapshots else "stream",
            )
    return result


class _Connector:
    """Source connections for one run, all through its one tunnel (if any)."""

    def __init__(self, config: IntegrationConfig, tunnel: SshTunnel | None) -> None:
        self.config, self.tunnel = config, tunnel

    @contextlib.contextmanager
    def __call__(self) -> Iterator[psycopg2.extensions.connection]:
        conn = connect_source(self.config.source, self.tunnel)
        try:
            yield conn
        finally:
            conn.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _prepare_source(
    connect: _Connector, destination: Destination, tables: list[SelectedTable], result: LogBasedResult
) -> list[SelectedTable]:
    """Readiness, the heartbeat and the publication. Returns the tables that can be streamed."""
    config = connect.config
    with connect() as conn:
        result.standby = _standby(conn, result.slot)
        ready = readiness(conn, tables)
        published = publication_facts(conn, result.publication, tables)  # one made by someone else, maybe
        problems = ready.problems(tables, config.source.user, published)
        dropping = published.problems(tables) if published is not None else []
        if any(subject.startswith("publication ") for subject, _, _ in dropping):
            # the slot decoded changes through it, so some may be gone: every table is copied again once fixed
            for table in tables:
                destination.changes().forget_table(result.slot, table.id)
            raise SetupNeeded(
                "log-based replication cannot go on: "
                + "; ".join(f"{subject} {what}. Fix: {fix}" for subject, what, fix in dropping)
                + ". Changes made meanwhile may not have reached the slot: once it is fixed, the next sync copies "
                "every log-based table again"
            )
        problems += dropping  # a table's own filter: that table is refused (and its copy forgotten)
        for table_id, shape in ready.shapes.items():
            result.generated[table_id] = {c.name for c in shape.generated}
            result.computed[table_id] = [c.name for c in ready.not_streamed(table_id, published)]
        blockers = [p for p in problems if p[0] not in {t.id for t in tables}]
        if blockers:
            raise SetupNeeded(
                "log-based replication cannot start: "
                + "; ".join(f"{subject} {what}. Fix: {fix}" for subject, what, fix in blockers)
            )
        for subject, what, fix in problems:
            if subject in {t.id for t in tables}:
                result.failures[subject] = f"{what}. Fix: {fix}"
        usable = []
        for table in tables:
            if table.id in result.failures:
                continue
            columns = live_columns(conn, table)
            if columns is None:
                result.failures[table.id] = "is not in the source any more. Fix: run `rds-pipeline discover`"
                continue
            table, changes = evolve(table, columns)  # what the source has now, before anything is copied
            if changes:
                result.evolved[table.id] = changes
            usable.append(table)
        if config.log_based.heartbeat and usable and not result.standby:  # a standby cannot write WAL
            result.heartbeat = _heartbeat(conn)
        if usable and result.standby:
            ask_primary(conn, result.publication, usable)
        elif usable:
            result.statements = ensure_publication(conn, result.publication, usable)
        return usable


def _standby(conn: psycopg2.extensions.connection, slot: str) -> bool:
    """Whether the source is a hot standby; one that cannot decode (before PostgreSQL 16) is refused here, with
    the words ``check`` uses."""
    facts = replica_facts(conn, slot)
    for severity, _, what, fix in replica_findings(facts, slot):
        if severity == "error":
            raise SetupNeeded(f"{what}. Fix: {fix}")
    return facts.standby


def _heartbeat(conn: psycopg2.extensions.connection) -> bool:
    """A transactional logical message in this database: the slot decodes it, so even when only other tables
    (or other databases: RDS's own heartbeat) write, the run confirms a position past it and WAL is released."""
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_logical_emit_message(true, %s, now()::text)", (HEARTBEAT_PREFIX,))
        conn.commit()
        return True
    except psycopg2.errors.InsufficientPrivilege:
        conn.rollback()
        return False


def _forget_others(destination: Destination, slot: str, usable: list[SelectedTable]) -> None:
    """A table whose changes this run will not apply (deselected, or refused) must not keep its snapshot: the
    slot moves past its changes, so if it comes back it needs a new copy."""
    keep = {t.id for t in usable}
    held = set(destination.changes().snapshot_lsns(slot)) | set(destination.changes().snapshot_progress(slot))
    for table_id in held - keep:
        destination.changes().forget_table(slot, table_id)


def _snapshot(
    connect: _Connector,
    destination: Destination,
    usable: list[SelectedTable],
    result: LogBasedResult,
    chunks: dict[str, list[KeyRange]],
) -> list[SelectedTable]:
    """Copy what needs a snapshot now; returns the tables whose snapshot goes chunk by chunk, interleaved with
    the stream (``chunked.py``)."""
    config = connect.config
    in_chunks = [t for t in usable if chunked(config, t, chunks.get(t.id, []))]
    whole = [t for t in usable if t not in in_chunks]
    with connect() as conn:
        status = slot_status(conn, result.slot)
        lag = None
        if status is not None and status.active:
            with conn.cursor() as cur:
                cur.execute(
                    "SELECT pid, extract(epoch FROM now() - coalesce(reply_time, backend_start)) FROM pg_stat_replication "
                    "WHERE pid = %s",
                    (status.active_pid,),
                )
                lag = cur.fetchone()
            conn.rollback()
    applied = destination.changes().applied_lsn(result.slot)
    lost = _lost(result.slot, status, applied)
    if lost is not None:
        if config.log_based.on_slot_lost == "fail":
            raise GapDetected(f"{lost}: changes since are lost. Fix: {RESYNC_FIX}")
        _recover(connect, destination, result, status, lost)
        status = applied = None
    if status is None:
        if not usable:
            return []
        copied = snapshot_tables(  # the slot, and the tables copied whole under its exported snapshot
            config.source,
            destination,
            whole,
            result.slot,
            chunks=chunks,
            tunnel=connect.tunnel,
            failover=not result.standby,  # PostgreSQL 17+: kept in step on standbys that sync slots
            wait_seconds=config.log_based.slot_create_wait_seconds,
        )
        _take(result, copied)
        return in_chunks
    if status.active:
        _take_over(connect, result.slot, status, lag[1] if lag else None)
    if applied is None:  # the slot was made by `cdc setup`: every table gets its own snapshot, after its position
        assert status.confirmed_flush_lsn is not None
        destination.changes().record_lsn(result.slot, status.confirmed_flush_lsn)
    known = destination.changes().snapshot_lsns(result.slot)
    missing = [t for t in whole if t.id not in known]
    if missing:
        _take(
            result,
            snapshot_tables(
                config.source,
                destination,
                missing,
                temporary_slot_name(result.slot),
                temporary=True,
                chunks=chunks,
                main_slot=result.slot,
                tunnel=connect.tunnel,
                wait_seconds=config.log_based.slot_create_wait_seconds,
            ),
        )
    return [t for t in in_chunks if t.id not in known]


def _copy_in_chunks(
    connect: _Connector,
    destination: Destination,
    table: SelectedTable,
    chunks: list[KeyRange],
    streamed: list[SelectedTable],
    result: LogBasedResult,
) -> None:
    """One table's snapshot, chunk by chunk; after each chunk every streamed table catches up."""
    assert result.stream is not None

    def catch_up_all() -> bool:
        assert result.stream is not None
        result.stream.extend(
            _stream(connect, destination, [t for t in streamed if t.id not in result.failures], result)
        )
        return table.id not in result.failures  # a TRUNCATE meanwhile voids the copy

    rows, final, failure = copy_in_chunks(
        connect.config, destination, table, chunks, result.slot, catch_up_all, connect.tunnel
    )
    if table.id in result.failures:  # the stream refused it meanwhile (a TRUNCATE): already forgotten
        return
    if failure is not None:
        destination.changes().forget_table(result.slot, table.id)
        _take(result, SnapshotResult(result.slot, "", failed={table.id: failure}))
        return
    result.snapshots[table.id] = rows
    if final is not None:
        result.snapshot_lsn[table.id] = final


def _lost(slot: str, status: SlotStatus | None, applied: str | None) -> str | None:
    """Why the slot's changes since the destination's position can no longer be read (None: they can)."""
    if status is None:
        if applied is None:
            return None  # never streamed: the first run creates it
        return (
            f"slot {slot!r} is gone from the source (dropped, or this server is a promoted standby that did not "
            f"have it), but the destination holds its changes up to {applied}"
        )
    if status.lost is None:
        return None
    why = {
        "wal_removed": "it fell further behind than max_slot_wal_keep_size allows",
        "rows_removed": "the primary removed rows it still needed (a standby's slot without hot_standby_feedback)",
        "wal_level_insufficient": "wal_level was lowered below logical",
        "idle_timeout": "it was idle longer than idle_replication_slot_timeout",
    }.get(status.lost, "the server invalidated it")
    return f"slot {slot!r} lost the WAL it needed ({status.lost}: {why})"


def _recover(
    connect: _Connector, destination: Destination, result: LogBasedResult, status: SlotStatus | None, lost: str
) -> None:
    """``on_slot_lost: resnapshot``: drop what is left of the slot, forget its position and every table's
    snapshot under it (recording why, in the same destination transaction), so this run creates a new slot and
    copies the slot's tables again under its snapshot. Never silent: the run, ``status`` and the check say so."""
    if status is not None:
        with connect() as conn:
            try:
                drop_slot(conn, result.slot)
            except psycopg2.errors.ObjectInUse:
                conn.rollback()
                raise SlotBusy(
                    f"slot {result.slot!r} is lost and must be re-created, but a client still holds it (walsender "
                    f"PID {status.active_pid}). Fix: end that client, then sync again"
                ) from None
    tables = destination.changes().forget_slot(result.slot, lost=lost)
    result.recovered = f"{lost}; a new slot was created and its {tables} table(s) are copied again"


def _take(result: LogBasedResult, copied: SnapshotResult) -> None:
    for table_id, rows in copied.rows.items():
        result.snapshots[table_id] = rows
        result.snapshot_lsn[table_id] = copied.consistent_point
    for table_id, exc in copied.failed.items():
        fix = (
            "the rows are not unique on its key: set `primary_key:` to columns that identify a row, or use full_table"
            if _duplicates(exc)
            else "sync again (the table gets a new snapshot; the others stream meanwhile)"
        )
        result.failures[table_id] = f"its snapshot failed: {_first_line(exc)}. Fix: {fix}"


def _duplicates(exc: BaseException) -> bool:
    """Whether the copy failed because two rows share the key (a `primary_key:` the table does not honour)."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, psycopg2.errors.UniqueViolation) or "could not create unique index" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _take_over(connect: _Connector, slot: str, status: SlotStatus, silent_seconds: float | None) -> None:
    """A slot held by a reader that stopped answering (a killed client whose walsender waits for its timeout)
    is taken over: that walsender is ended. One that still answers is another run: refuse."""
    limit = connect.config.log_based.takeover_after_seconds
    if _released(connect, slot, 5):  # a client that just died: its walsender sees the closed socket at once
        return
    if silent_seconds is None or silent_seconds < limit:
        raise SlotBusy(
            f"slot {slot!r} is being read by another client (walsender PID {status.active_pid}, last "
            f"reply {silent_seconds or 0:.0f}s ago). Fix: wait for that client to finish; a client silent "
            f"for {limit}s (log_based.takeover_after_seconds) is treated as gone and taken over"
        )
    with connect() as conn, conn.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(%s)", (status.active_pid,))
        conn.commit()
    _released(connect, slot, 10)


def _released(connect: _Connector, slot: str, seconds: float) -> bool:
    """Wait (bounded) until no walsender holds ``slot``."""
    with connect() as conn, conn.cursor() as cur:
        deadline = time.monotonic() + seconds
        while True:
            cur.execute("SELECT active FROM pg_replication_slots WHERE slot_name = %s", (slot,))
            row = cur.fetchone()
            conn.rollback()
            if not row or not row[0]:
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)


def _stream(
    connect: _Connector, destination: Destination, tables: list[SelectedTable], result: LogBasedResult
) -> StreamResult:
    config = connect.config
    known = destination.changes().snapshot_lsns(result.slot)
    since_by_id = dict(known)
    progress = destination.changes().snapshot_progress(result.slot)
    for table_id, done in progress.items():  # copied chunk by chunk so far: nothing before its first chunk counts
        if table_id not in since_by_id and done:
            since_by_id[table_id] = min((lsn for _, lsn in done), key=lsn_int)
    live = [t for t in tables if t.id in since_by_id]
    while True:
        by_name = {(t.relation.schema, t.relation.name): t for t in live}
        since = {(t.relation.schema, t.relation.name): since_by_id[t.id] for t in live}
        ranged = {
            (t.relation.schema, t.relation.name): chunk_filter(progress[t.id])
            for t in live
            if t.id in progress and t.id not in known
        }
        try:
            return catch_up(
                config.source,
                destination,
                by_name,
                result.slot,
                result.publication,
                since=since,
                soft_deletes=config.log_based.deletes == "soft",
                max_batch_changes=config.log_based.max_batch_changes,
                tunnel=connect.tunnel,
                generated=result.generated,
                ranged=ranged,
            )
        except TableApplyError as exc:
            # that table's changes cannot be applied: drop it from this run (its snapshot forgotten, so the
            # next run copies it again) and stream the others from where the destination is
            destination.changes().forget_table(result.slot, exc.table_id)
            result.failures[exc.table_id] = (
                f"{str(exc).removeprefix(exc.table_id + ': ')}. Fix: the next sync "
                "copies the table again; if it fails the same way, run "
                "`rds-pipeline discover` and check its columns"
            )
            live = [t for t in live if t.id != exc.table_id]
