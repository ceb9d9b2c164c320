"""The contract every destination keeps, split by phase as PeerDB splits its connectors: **state** (what was
replicated), the **loader** (ranges in, the bookmark rule) and the **change applier** (batches in, the slot's
LSN in the same transaction). The engine speaks only these Protocols: it never checks which destination it
has, never reaches for a connection, never calls a private method. ``PostgresDestination`` and
``DuckDBDestination`` implement them, each checked by mypy (the ``_conforms`` assignments in their modules) and
by the contract tests over both (``rds_pipeline_tests/engine/test_destination_contract.py``).

The bookmark rule (each destination applies it inside the load's transaction, after locking the table's state
row, so concurrent runs serialize and nothing is decided from a stale read):

- the state counts only while the destination table exists: a table created by this load starts from none;
- a range moves the bookmark only when it is contiguous with what was already copied: it starts at the
  beginning (no lower bound), or at or below ``greatest(bookmark, covered_to)``;
- then ``bookmark = greatest(bookmark, max(key) copied)``: never backwards;
- and a bounded range also records ``covered_to = greatest(covered_to, least(upper, max(key) at the source
  in the COPY's snapshot))``: every key below it was copied, so the next window is contiguous.
A range that is not contiguous (a later window copied before an earlier one) is loaded, but leaves the
bookmark where it was: no run moves the bookmark past a gap it did not copy.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, Protocol

import psycopg2.extensions

from rds_pipeline.engine.config import IntegrationConfig
from rds_pipeline.engine.core.changes import ChangeBatch
from rds_pipeline.engine.core.copy_out import CopyOut
from rds_pipeline.engine.core.ranges import KeyRange
from rds_pipeline.engine.core.state import Generation, GenerationStep, TableState
from rds_pipeline.engine.errors import IntegrationRenamed, LoadError
from rds_pipeline.engine.selection import SelectedTable
from rds_pipeline.engine.source.catalog import Column

STATE_TABLE = "_rds_pipeline_state"
META_SCHEMA = "rds_pipeline_meta"
EXTRACTED_AT = "_rds_extracted_at"
BATCH_ID = "_rds_batch_id"
METADATA_COLUMNS = (EXTRACTED_AT, BATCH_ID)
# methods whose load replaces the range's rows (the others merge them by key); a log-based table's state row is
# written by its change applier (the snapshot's LSN), never by a load
REPLACING = ("full_table", "log_based")
SLOTS_TABLE = "_rds_pipeline_slots"  # one row per slot: the LSN up to which the destination holds its changes
DELETED_AT = "_rds_deleted_at"  # soft deletes: when the source deleted the row
SNAPSHOT_CHUNKS_TABLE = "_rds_pipeline_snapshot_chunks"  # a table's snapshot, copied chunk by chunk, so far
SLOT_EVENTS_TABLE = "_rds_pipeline_slot_events"  # when and why a slot was lost and re-created (append-only)
GENERATIONS_TABLE = "_rds_pipeline_generations"  # full-table copies under way, one row per table (core.state)
NEXT_PREFIX = "_rds_next_"
SLOT_MARK = "slot:"  # replication_key of a log-based table's state row: "slot:<name>"

SourceConnect = Callable[[], psycopg2.extensions.connection]


@dataclass(frozen=True)
class LoadOutcome:
    """What a committed load did to the table's state."""

    bookmark_before: str | None
    bookmark_after: str | None
    null_keys: int = 0
    moved_bookmark: bool = False
    covered_to: str | None = None


@dataclass
class ApplyReport:
    """What one applied batch changed, per table id; ``lsn``: the slot position committed with it."""

    upserted: dict[str, int] = field(default_factory=dict)
    deleted: dict[str, int] = field(default_factory=dict)  # hard deletes, or rows marked deleted (soft)
    truncated: list[str] = field(default_factory=list)
    lsn: str | None = None


class StateStore(Protocol):
    """What has been replicated, per table, kept in the destination itself."""

    def prepare(self, config: IntegrationConfig) -> None:
        """Create the schema, the state table and the integration registry if missing, and refuse a renamed
        integration (``IntegrationRenamed``). Idempotent; commits on its own."""

    def table_state(self, table: SelectedTable) -> TableState:
        """The table's bookmark and ``covered_to``, and whether its table exists (a bookmark without its table
        does not count). Read-only."""

    def read_bookmarks(self) -> dict[str, str | None]:
        """Every table's bookmark (or a log-based table's snapshot LSN), by table id. Read-only."""

    def read_sync_times(self) -> dict[str, dt.datetime]:
        """When each table's state last moved, by table id. Read-only."""

    def read_generations(self) -> dict[str, Generation]:
        """The full-table copies under way (their next table exists), by table id. Read-only."""

    def reset(self, table: SelectedTable) -> None:
        """Drop the table and its state row, in one transaction: the next sync starts it over. Idempotent."""


class Loader(Protocol):
    """Ranges in: each load commits the range's rows and the table's state together, or nothing."""

    copy_csv: bool  # reads the source's COPY as CSV (else PostgreSQL's text format)
    array_as_json: bool  # wants arrays as JSON (its type system has no PostgreSQL arrays)
    accepts_binary_copy: bool  # can take PostgreSQL's binary COPY straight from the source
    parallel_loads: bool  # separate connections (``fresh()``) may load chunks of one table at once

    def load(
        self,
        table: SelectedTable,
        key_range: KeyRange,
        copy: CopyOut,
        batch_id: str,
        source_max: str | None = None,
        turn: Callable[[], None] | None = None,
        generation: GenerationStep | None = None,
        set_bookmark: str | None = None,
    ) -> tuple[LoadingReport, LoadOutcome]:
        """Load what ``copy`` streams for ``key_range``, in one transaction with the state row.

        - full_table and log_based replace the range's rows (``REPLACING``); key_based and xmin merge them by key.
        - xmin: the bookmark becomes ``set_bookmark`` (the source's snapshot xmin, given by the sync's last
          step); a step without one leaves it where it was.
        - key_based moves the bookmark by the rule above; full_table records its state without one; a log-based
          table's state is left to its change applier (the snapshot's LSN).
        - Atomic: on any error the range and the state are as they were, and ``copy`` is aborted.
        - Idempotent: loading the same range again leaves the same rows (replaced, or merged by key).
        - ``turn``: called after the rows are in and before the state row is locked (parallel chunks wait there
          for the chunk before them, so each commit finds its bookmark contiguous).
        - ``generation``: a chunk of pages of a full-table table. Its rows go into the table's next generation
          (``next_table``), not the table, and its progress into ``GENERATIONS_TABLE``, in one transaction. The
          first pass ends by dropping rows read twice and building the key; a sweep chunk merges by key; the
          swap replaces the table with the next one (its data, its state row), so readers see one or the
          other, whole."""
        ...

    def fresh(self) -> AbstractContextManager[Destination]:
        """A second connection to the same destination, closed on exit (parallel chunks)."""
        ...

    def count_rows(self, table: SelectedTable, key_range: KeyRange) -> int:
        """Rows the replica holds in ``key_range``. Read-only."""
        ...

    def duplicate_keys(self, table: SelectedTable) -> int:
        """Primary-key values held more than once. Read-only."""
        ...

    def primary_key_enforced(self, table: SelectedTable) -> bool:
        """Whether the replica's primary key is declared (and so enforced). Read-only."""
        ...

    def column_names(self, table: SelectedTable) -> list[str]:
        """The replica's columns, in order. Read-only."""
        ...

    def reconnect(self) -> None:
        """Replace a broken connection (after a network fault): nothing uncommitted survives it."""

    def close(self) -> None:
        """Close the connection; idempotent."""


class ChangeApplier(Protocol):
    """Batches in: the rows a batch changes and the slot's LSN commit together, so after any crash the
    destination holds a batch with its LSN, or neither, and the reader resumes from the LSN it holds."""

    takes_copy_rows: bool  # whether ``apply_batch`` loads ``CopyRow`` upserts as they are (else: decoded)

    def lock_slot(self, slot: str) -> None:
        """Hold the slot for this run (one reader per slot), waiting up to the destination's lock timeout; raises
        ``SlotBusy`` with the fix. A lock dies with its session, so a killed run never holds one."""

    def unlock_slot(self, slot: str) -> None:
        """Release ``lock_slot``. Idempotent; a closed session holds nothing."""

    def applied_lsn(self, slot: str) -> str | None:
        """The LSN up to which the destination holds the slot's changes (None: nothing applied yet). Read-only."""
        ...

    def record_lsn(self, slot: str, lsn: str) -> None:
        """Move the slot's LSN forward to ``lsn`` (never back), in its own transaction: the stream reached it with
        nothing to apply before it. Idempotent."""

    def mark_reading(self, slot: str, reading: bool) -> None:
        """Say a run is reading the slot (set before it starts, cleared when it ends cleanly). Idempotent."""

    def was_reading(self, slot: str) -> bool:
        """Whether the last run on the slot stopped before it ended cleanly. Read-only."""
        ...

    def snapshot_lsns(self, slot: str) -> dict[str, str]:
        """Per log-based table of ``slot`` whose destination table exists: the LSN of the snapshot it was
        copied at (its changes apply from transactions committed at or after it). Read-only."""
        ...

    def record_snapshot(self, table: SelectedTable, slot: str, lsn: str) -> None:
        """The table holds its rows as of ``lsn``: write its state row under the slot and drop its chunk
        progress, in one transaction. Idempotent (the row is replaced)."""

    def record_chunk(self, table: SelectedTable, slot: str, upper: int | None, lsn: str) -> None:
        """One chunk of the table's snapshot (its keys below ``upper``, from where the last chunk ended; None:
        to the end) holds its rows as of ``lsn``. One statement; the chunk's rows were committed before it."""

    def snapshot_progress(self, slot: str) -> dict[str, list[tuple[int | None, str]]]:
        """Per table whose snapshot is being copied chunk by chunk under ``slot``: its chunks so far, as
        ``(upper, lsn)`` in key order. Read-only."""
        ...

    def forget_table(self, slot: str, table_id: str) -> None:
        """Void the table's snapshot (and its chunk progress): the next sync copies it again. One transaction;
        idempotent."""

    def forget_slot(self, slot: str, lost: str | None = None) -> int:
        """Forget the slot's position and every table's snapshot under it, in one transaction (after the slot
        was dropped). ``lost``: why the source lost the slot, recorded in the same transaction (see
        ``slot_lost``). Returns how many tables will be copied again. Idempotent (then 0)."""
        ...

    def slot_lost(self, slot: str) -> tuple[dt.datetime, str] | None:
        """When the source last lost the slot and why, as ``forget_slot`` recorded it (None: never). Read-only."""
        ...

    def slot_age_seconds(self, slot: str) -> int | None:
        """Seconds since the slot's position last moved in the destination (None: never). Read-only."""
        ...

    def apply_batch(
        self,
        tables: dict[tuple[str, str], SelectedTable],
        batch: ChangeBatch,
        slot: str,
        soft_deletes: bool = False,
        source: SourceConnect | None = None,
    ) -> ApplyReport:
        """Apply ``batch`` (``tables`` by source (schema, name); changes to other relations are ignored) and move
        the slot's LSN to ``batch.end_lsn``, in one transaction. In order: the last operation per key,
        deletes before upserts, each TRUNCATE in its place, an UNCHANGED (TOASTed) value keeps the replica's,
        a key change carries its UNCHANGED values from the old key; soft deletes set ``_rds_deleted_at``
        instead of deleting (an upsert clears it). Atomic; a table's failure raises ``TableApplyError`` naming
        it, after the rollback. Idempotent only through the LSN: the stream never re-sends an applied batch.
        ``source``: a connection to the source, for conversions only it can make (DuckDB's arrays)."""
        ...


class Verifier(Protocol):
    """The replica's side of ``replication/compare.py``: digests of ranges, and repairs of them."""

    floats_rounded: bool  # its text of a float is not always PostgreSQL's: floats are compared in %.14e

    def splits_on(self, column: Column) -> bool:
        """Whether the replica orders ``column`` as the source does (so a key range holds the same rows)."""
        ...

    def digest(self, table: SelectedTable, key_range: KeyRange, keys_only: bool) -> tuple[int, int]:
        """``(rows, digest)`` of the replica's rows in ``key_range`` (``core/digest.py``; soft-deleted rows
        left out), over every column or the key columns only. Read-only."""
        ...

    def repair_range(self, table: SelectedTable, key_range: KeyRange, copy: CopyOut, batch_id: str) -> LoadingReport:
        """Replace the replica's rows in ``key_range`` by what ``copy`` streams, in one transaction. No state
        row is touched (no bookmark or LSN moves); rows soft-deleted in the range stay unless ``copy`` has
        their key. ``copy`` is aborted on failure."""
        ...

    def delete_missing(self, table: SelectedTable, key_range: KeyRange, keys: CopyOut, soft: bool) -> int:
        """Delete (``soft``: mark ``_rds_deleted_at``) the replica's rows in ``key_range`` whose key text is not
        among ``keys`` (one row text per line, ``core/digest.row_text`` of the key columns); with ``soft``, a
        marked row whose key is back is unmarked. One transaction; returns the rows deleted or marked."""
        ...


class Destination(StateStore, Loader, Verifier, Protocol):
    """A destination: its state, its loader, its verifier and its change applier."""

    kind: str  # for messages and metadata only: the engine never branches on it

    def changes(self) -> ChangeApplier:
        """The destination's change applier (log-based replication), on the same connection."""
        ...


@dataclass
class LoadingReport:
    table: str
    destination_table: str
    mode: str  # full_table, key_based
    rows_inserted: int = 0
    rows_updated: int = 0
    rows_deleted: int = 0
    seconds: float = 0.0
    batch_id: str = ""
    committed_at: dt.datetime | None = None
    warnings: tuple[str, ...] = ()
    # the replica's rows in the loaded range at commit, when known without scanning it: a full-table load
    # empties its range and fills it in one transaction, so the range holds exactly what its COPY stored
    # (COPY's count, after any trigger); None means count them
    rows_at_commit: int | None = None
    # the rows the source gave for the whole table this load completed, when that is not this COPY's count: a
    # generation's swap reports its chunks' rows across runs (see ``core.state.Generation``)
    source_rows: int | None = None

    @property
    def rows_per_second(self) -> float:
        return (self.rows_inserted + self.rows_updated) / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "destination_table": self.destination_table,
            "mode": self.mode,
            "rows_inserted": self.rows_inserted,
            "rows_updated": self.rows_updated,
            "rows_deleted": self.rows_deleted,
            "seconds": round(self.seconds, 3),
            "rows_per_second": round(self.rows_per_second, 1),
            "batch_id": self.batch_id,
            "warnings": list(self.warnings),
        }


REGISTRY = "integration_schemas"  # rds_pipeline_meta.<this>: one row per integration (its schema)


def next_table(destination_table: str) -> str:
    """The name of a table's next generation: short and plain whatever the table's name (quotes, unicode, 63
    bytes), and the same in every run, so a killed sync finds it again."""
    return NEXT_PREFIX + hashlib.sha256(destination_table.encode()).hexdigest()[:20]


def xmin_outcome(before: str | None, set_bookmark: str | None) -> LoadOutcome:
    """An xmin load's effect on the state: the sync's snapshot xmin with its last step, else no move."""
    after = set_bookmark if set_bookmark is not None else before
    return LoadOutcome(before, after, moved_bookmark=after != before)


def check_progress(table: SelectedTable, step: GenerationStep, row: tuple[Any, ...] | None) -> None:
    """Refuse a chunk of a generation another sync has moved on (or swapped in) since this one planned it: its
    rows would go in twice. ``row``: the generation's ``(rows, copied, copy_done, swept)``, locked."""
    at = None if row is None else (int(row[3]) if step.sweep else int(row[1]))
    done = None if row is None else bool(row[2])
    if at == step.resumes_at and done == step.sweep:
        return
    where = "no longer under way" if row is None else f"at page {at} of its {'sweep' if done else 'copy'}"
    raise LoadError(
        f"{table.id}: another sync is building this table's next generation ({where}; this one expected page "
        f"{step.resumes_at}): nothing of this chunk was kept. Fix: none needed, the other sync finishes it; "
        "run one sync of a table at a time (the rds_source pool does)"
    )


def rename_refusal(
    previous_name: str, previous_schema: str, new_name: str, new_schema: str, shared: list[str]
) -> IntegrationRenamed:
    shown = ", ".join(sorted(shared)[:5]) + (" …" if len(shared) > 5 else "")
    return IntegrationRenamed(
        f"integration_name '{new_name}' (schema '{new_schema}') selects {len(shared)} table(s) that integration "
        f"'{previous_name}' already loads from this source into schema '{previous_schema}' ({shown}). If you "
        f"renamed the integration, loading into '{new_schema}' would orphan '{previous_schema}' and start every "
        f"table over. Fix: set integration_name back to '{previous_name}'; for a second integration beside it, "
        "select other tables; or, to start a new schema on purpose, set `allow_integration_rename: true` in "
        "rds_pipeline.yaml (the old schema is left as it is)"
    )


def overlap(mine: set[str], theirs: list[str]) -> list[str]:
    """Tables two integrations of one source would both load (compared as written and without case)."""
    folded = {t.casefold() for t in mine}
    return [t for t in theirs if t in mine or t.casefold() in folded]
