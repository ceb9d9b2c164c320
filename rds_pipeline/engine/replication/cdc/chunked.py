"""Snapshots that never pin WAL for hours: a large table is copied chunk by chunk, interleaved with the stream.

A single exported snapshot holds one transaction open for the whole copy (the source's VACUUM waits behind its
xmin), and the slot cannot confirm anything meanwhile, so WAL piles up for as long as the copy takes. Here each
chunk (a range of the integer key, as the table's partitions cut it) is a short read under its own snapshot,
exported by a temporary slot whose consistent point is exact. After each chunk the stream catches up and
confirms, so the slot advances. The stream applies the table's changes by key:

- a key of a copied chunk: only from transactions committed at or after that chunk's snapshot (the ones
  before are in the copy);
- a key past the last copied chunk: not at all (its chunk's copy, taken later, holds them).

This is the watermark idea of DBLog and Debezium's incremental snapshots, with the slot's consistent point as
the watermark: PostgreSQL says exactly which transactions a snapshot holds, so no row is buffered and nothing is
written to the source (it works on a read replica).

The destination records each chunk with its LSN as it commits, so a crash resumes at the next chunk. Once the
last chunk is copied and the stream is past its LSN, the table's state becomes an ordinary snapshot LSN, in one
transaction with the chunk records' removal. A TRUNCATE of the table meanwhile voids the copy (the next sync
starts it again); other tables stream throughout.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from rds_pipeline.engine.config import IntegrationConfig
from rds_pipeline.engine.core.changes import ChunkFilter
from rds_pipeline.engine.core.messages import lsn_int
from rds_pipeline.engine.core.ranges import KeyRange
from rds_pipeline.engine.destinations.base import Destination
from rds_pipeline.engine.replication.cdc.snapshot import SnapshotResult, snapshot_tables, temporary_slot_name
from rds_pipeline.engine.selection import INTEGER_TYPES, SelectedTable

if TYPE_CHECKING:  # paramiko loads only when a tunnel is opened
    from rds_pipeline.engine.source.tunnel import SshTunnel


def chunked(config: IntegrationConfig, table: SelectedTable, chunks: list[KeyRange]) -> bool:
    """Whether the table's snapshot goes chunk by chunk: more than one chunk, along its integer key's first
    column (a change's key says which chunk it belongs to), and ``log_based.snapshot: chunked``."""
    if config.log_based.snapshot != "chunked" or len(chunks) < 2 or not table.primary_key:
        return False
    key = table.primary_key[0]
    column = next((c for c in table.columns if c.name == key), None)
    if column is None or chunks[0].column != key:
        return False
    base = column.base_type if column.kind == "domain" and column.base_type else column.type
    return base in INTEGER_TYPES


def chunk_filter(progress: list[tuple[int | None, str]]) -> ChunkFilter:
    """The stream's key filter for a table with these chunks copied so far (in key order)."""
    return ChunkFilter(tuple(upper for upper, _ in progress), tuple(lsn_int(lsn) for _, lsn in progress))


def remaining(chunks: list[KeyRange], progress: list[tuple[int | None, str]]) -> list[KeyRange]:
    """The chunks still to copy after ``progress`` (the first one starting where the last copied one ended)."""
    if not progress:
        return list(chunks)
    last = progress[-1][0]
    if last is None:
        return []
    left = [c for c in chunks if c.upper is None or c.upper > last]
    if left:
        first = left[0]
        left[0] = KeyRange(first.column, lower=last, upper=first.upper, upper_inclusive=first.upper_inclusive)
    return left


def copy_in_chunks(
    config: IntegrationConfig,
    destination: Destination,
    table: SelectedTable,
    chunks: list[KeyRange],
    slot: str,
    catch_up: Callable[[], bool],
    tunnel: SshTunnel | None = None,
) -> tuple[int, str | None, BaseException | None]:
    """Copy the chunks the destination does not hold yet, each under its own snapshot, catching the stream up
    after each one (``catch_up`` says whether the table is still streamed: a TRUNCATE voids its copy); then
    record the table's snapshot. Returns (rows copied, the final LSN or None, the copy's failure)."""
    applier = destination.changes()
    progress = applier.snapshot_progress(slot).get(table.id, [])
    rows = 0
    for chunk in remaining(chunks, progress):
        copied: SnapshotResult = snapshot_tables(
            config.source,
            destination,
            [table],
            temporary_slot_name(slot),
            temporary=True,
            ranges={table.id: chunk},
            tunnel=tunnel,
            wait_seconds=config.log_based.slot_create_wait_seconds,
        )
        failure = copied.failed.get(table.id)
        if failure is not None:
            return rows, None, failure
        rows += copied.rows.get(table.id, 0)
        applier.record_chunk(table, slot, chunk.upper, copied.consistent_point)
        if not catch_up():  # the slot confirms past this chunk's point: WAL is released while the next is read
            return rows, None, None
    progress = applier.snapshot_progress(slot).get(table.id, [])
    if not progress:
        return rows, None, None
    final = max((lsn for _, lsn in progress), key=lsn_int)
    applier.record_snapshot(table, slot, final)  # the stream is past every chunk's LSN: one LSN from now on
    return rows, final, None
