"""What the destination holds for a table, as the planner reads it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TableState:
    """What the destination holds for one table: its bookmark, and whether its table exists at all."""

    table_exists: bool
    bookmark: str | None = None
    covered_to: str | None = None  # every key below this was copied (ranges contiguous with the bookmark)
    generation: Generation | None = None  # a full-table copy under way (its next table exists)

    @property
    def usable(self) -> bool:
        """A bookmark counts only while the data it describes is there."""
        return self.table_exists and self.bookmark is not None


@dataclass(frozen=True)
class Generation:
    """A full-table copy under way: built chunk by chunk over the source's pages in a table readers do not see,
    then swapped in whole. What the destination records with each chunk, so a killed sync resumes at the next.

    ``since`` is the source's snapshot xmin when it began (64-bit): a row version written by a later transaction
    may have moved to a page already copied, so a table with a key is swept for such rows before the swap."""

    since: str
    pages: int  # the source's pages when it began
    copied: int  # pages of the first pass copied so far
    copy_done: bool  # the first pass is complete (its last, open-ended chunk committed)
    swept: int  # pages of the sweep done so far
    rows: int  # rows the next table holds, by the chunks' own counts


@dataclass(frozen=True)
class GenerationStep:
    """What one chunk of a generation does besides copying its rows (see ``Generation``)."""

    since: str
    pages: int
    first: bool  # creates the next table (a new generation)
    resumes_at: int  # the pages of its pass done before it: another sync that moved them on owns the generation
    sweep: bool  # rows changed since the generation began, merged by key into the next table
    copied_after: int
    swept_after: int
    copy_done: bool  # the first pass is complete with this chunk: duplicates out, then the key is built
    swap: bool  # the generation is complete with this chunk: it replaces the table, in the same transaction

    def progress(self, rows: int) -> tuple[str, int, int, bool, int, int]:
        """The generation's row after this chunk: since, pages, copied, copy_done, swept, rows."""
        return self.since, self.pages, self.copied_after, self.copy_done, self.swept_after, rows
