"""What the destination holds for a table, as the planner reads it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TableState:
    """What the destination holds for one table: its bookmark, and whether its table exists at all."""

    table_exists: bool
    bookmark: str | None = None
    covered_to: str | None = None  # every key below this was copied (ranges contiguous with the bookmark)

    @property
    def usable(self) -> bool:
        """A bookmark counts only while the data it describes is there."""
        return self.table_exists and self.bookmark is not None
