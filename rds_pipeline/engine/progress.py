"""Progress a person watches: one line per table as it finishes, and for a long copy its rate and an ETA.

Lines go to the ``rds_pipeline.progress`` logger, whoever runs the sync (the CLI, the demo, a Dagster step):
the CLI prints them compactly (``console_progress``), Dagster's own logs keep everything else."""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

PROGRESS = logging.getLogger("rds_pipeline.progress")


def table_done(table: str, inserted: int, updated: int, deleted: int, seconds: float, note: str = "") -> None:
    moved = inserted + updated
    rate = f", {moved / seconds:,.0f} rows/s" if seconds > 0 and moved else ""
    changes = (
        f"{inserted:,} inserted"
        + (f", {updated:,} updated" if updated else "")
        + (f", {deleted:,} deleted" if deleted else "")
    )
    PROGRESS.info(f"done    {table}: {changes} in {seconds:.1f}s{rate}{f' ({note})' if note else ''}")


def copying(
    table: str, copied_bytes: int, seconds: float, expected_bytes: int | None, expected_rows: int | None
) -> str:
    """A long copy's line: bytes so far, the rate, and (from the catalog's size and row estimate) roughly how
    many rows that is and when it should end."""
    rate = copied_bytes / max(seconds, 1e-9)
    line = f"copying {table}: {copied_bytes / 2**20:,.1f} MiB in {seconds:.0f}s ({rate / 2**20:.1f} MiB/s"
    if expected_bytes and expected_rows and expected_bytes > 0:
        rows = copied_bytes * expected_rows / expected_bytes
        line += f", about {rows / max(seconds, 1e-9):,.0f} rows/s"
        left = max(0.0, (expected_bytes - copied_bytes) / rate) if rate > 0 else None
        done = min(99, int(100 * copied_bytes / expected_bytes))
        line += f"; ~{done}% of ~{expected_rows:,} rows" + (f", ETA {left:.0f}s" if left is not None else "")
    PROGRESS.info(line + ")")
    return line + ")"


@contextmanager
def console_progress(verbose: bool = False, stream: TextIO = sys.stderr) -> Iterator[None]:
    """Print progress lines as they come; without ``verbose``, keep library warnings (and Dagster's event
    lines, which the caller silences) off the console: they are in the Dagster UI."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("  %(message)s"))
    previous = PROGRESS.level
    PROGRESS.addHandler(handler)
    PROGRESS.setLevel(logging.INFO)
    PROGRESS.propagate = False  # printed once, here (with -v the root logger prints everything else)
    try:
        with warnings.catch_warnings():
            if not verbose:
                warnings.simplefilter("ignore")
            yield
    finally:
        PROGRESS.removeHandler(handler)
        PROGRESS.setLevel(previous)
        PROGRESS.propagate = True
