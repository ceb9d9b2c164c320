"""What every destination shares: the protocol, the loading report, the bookmark rule, the registry rule, errors.

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
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from rds_pipeline.engine.config import IntegrationConfig
from rds_pipeline.engine.errors import RdsPipelineError

if TYPE_CHECKING:
    from rds_pipeline.engine.core.copy_out import CopyOut
    from rds_pipeline.engine.core.ranges import KeyRange
    from rds_pipeline.engine.core.state import TableState
    from rds_pipeline.engine.selection import SelectedTable

STATE_TABLE = "_rds_pipeline_state"
META_SCHEMA = "rds_pipeline_meta"
EXTRACTED_AT = "_rds_extracted_at"
BATCH_ID = "_rds_batch_id"
METADATA_COLUMNS = (EXTRACTED_AT, BATCH_ID)
# methods whose load replaces the range's rows (the others merge them by key); a log-based table's state row is
# written by its change applier (the snapshot's LSN), never by a load
REPLACING = ("full_table", "log_based")


@dataclass(frozen=True)
class LoadOutcome:
    """What a committed load did to the table's state."""

    bookmark_before: str | None
    bookmark_after: str | None
    null_keys: int = 0
    moved_bookmark: bool = False
    covered_to: str | None = None


class Destination(Protocol):
    kind: str
    copy_csv: bool
    array_as_json: bool

    def prepare(self, config: IntegrationConfig) -> None: ...
    def table_state(self, table: SelectedTable) -> TableState: ...
    def read_bookmarks(self) -> dict[str, str | None]: ...
    def read_sync_times(self) -> dict[str, dt.datetime]: ...
    def reset(self, table: SelectedTable) -> None: ...
    def reconnect(self) -> None: ...
    def load(self, table: SelectedTable, key_range: KeyRange, copy: CopyOut, batch_id: str,
             source_max: str | None, turn: Callable[[], None] | None = None,
             ) -> tuple[LoadingReport, LoadOutcome]: ...  # fmt: skip
    def count_rows(self, table: SelectedTable, key_range: KeyRange) -> int: ...
    def duplicate_keys(self, table: SelectedTable) -> int: ...
    def primary_key_enforced(self, table: SelectedTable) -> bool: ...
    def column_names(self, table: SelectedTable) -> list[str]: ...
    def close(self) -> None: ...


class LoadError(RdsPipelineError):
    """A load failed permanently for one table (named in the message)."""


class IntegrationRenamed(RdsPipelineError):
    """integration_name changed after data was loaded: the old schema would be orphaned."""


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


def rename_refusal(previous_name: str, previous_schema: str, new_name: str, new_schema: str,
                   shared: list[str]) -> IntegrationRenamed:  # fmt: skip
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
