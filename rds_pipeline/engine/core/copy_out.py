"""Reading a source query's COPY output: ``COPY (…) TO STDOUT`` streamed through an OS pipe, with a stall
watchdog, progress lines and a bounded cancel.

Rows never become Python objects: bytes flow from the source's COPY into the destination's COPY through a
1 MiB kernel pipe and a 1 MiB write buffer, so peak memory does not depend on table size.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg2.extensions
from psycopg2 import sql

from rds_pipeline.engine.core.rows import one
from rds_pipeline.engine.errors import CopyStalled
from rds_pipeline.engine.progress import copying

log = logging.getLogger(__name__)

PROGRESS_SECONDS = float(os.environ.get("RDS_PIPELINE_PROGRESS_SECONDS", "10"))  # a long copy reports this often
CANCEL_WAIT_SECONDS = 5.0  # a close that gets no answer (a frozen tunnel) is given up after this
ABORT_WAIT_SECONDS = 2.0  # a COPY thread still running this long after its pipe closed is stuck
DEFAULT_STALL_SECONDS = 300
PIPE_BYTES = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


@dataclass
class ExtractionLog:
    """What was read and how: for the loading report, the UI and audits."""

    table: str
    query: str
    parameters: dict[str, Any]
    started_at: dt.datetime
    ended_at: dt.datetime | None = None
    rows: int = 0
    bytes: int = 0
    bookmark_before: str | None = None
    bookmark_after: str | None = None
    source_in_recovery: bool = False
    null_key_rows: int = 0
    progress: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "query": self.query,
            "parameters": {k: str(v) for k, v in self.parameters.items()},
            "started_at": self.started_at.isoformat(),
            "ended_at": self.ended_at.isoformat() if self.ended_at else None,
            "rows": self.rows,
            "bytes": self.bytes,
            "bookmark_before": self.bookmark_before,
            "bookmark_after": self.bookmark_after,
            "source_in_recovery": self.source_in_recovery,
            "null_key_rows": self.null_key_rows,
        }


class PipeReader:
    """The reading end of an OS pipe, for the destination's COPY FROM; counts bytes and reports progress.

    The source's COPY TO writes into the other end through a C ``BufferedWriter`` (psycopg2 calls ``write``
    once per row, so a Python-level writer would cost a Python call per row). The kernel pipe (1 MiB) plus
    the writer's buffer bound the memory in flight."""

    def __init__(
        self,
        fd: int,
        on_progress: Callable[[int], None] | None = None,
        stall_seconds: float = DEFAULT_STALL_SECONDS,
        table: str = "",
    ) -> None:
        self._raw = os.fdopen(fd, "rb", buffering=0)
        self.bytes = 0
        self._on_progress = on_progress
        self._stall = stall_seconds
        self._table = table

    def read(self, size: int = -1) -> bytes:
        ready, _, _ = select.select([self._raw], [], [], self._stall)
        if not ready:
            raise CopyStalled(
                f"{self._table}: the source sent no data for {self._stall:.0f}s (source.stall_seconds); "
                "the copy was cancelled"
            )
        data = self._raw.read(size if size and size > 0 else PIPE_BYTES)
        if data:
            self.bytes += len(data)
            if self._on_progress:
                self._on_progress(self.bytes)
        return data or b""

    def readline(self, size: int = -1) -> bytes:  # file-likeness; psycopg2 uses read()
        return self.read(size)

    def close(self) -> None:
        self._raw.close()


def source_in_recovery(conn: psycopg2.extensions.connection) -> bool:
    with conn.cursor() as cur:
        cur.execute("SELECT pg_is_in_recovery()")
        value = bool(one(cur.fetchone())[0])
    conn.commit()
    return value


class CopyOut:
    """Runs the source COPY TO in a thread, writing into an OS pipe that ``pipe`` (a PipeReader) drains."""

    def __init__(
        self,
        conn: psycopg2.extensions.connection,
        query: sql.Composed,
        table: str,
        extraction: ExtractionLog,
        stall_seconds: float = DEFAULT_STALL_SECONDS,
        binary: bool = False,
        expected_bytes: int | None = None,
        expected_rows: int | None = None,
    ) -> None:
        self.conn = conn
        self.expected = (expected_bytes, expected_rows)  # from the catalog: for the progress line's ETA
        self.binary = binary  # the rows are COPY's binary format: the destination reads them as such
        self.query_text = query.as_string(conn)
        self.table = table
        self.extraction = extraction
        self._last_progress = time.monotonic()
        self._started = time.monotonic()
        read_fd, write_fd = os.pipe()
        try:
            fcntl.fcntl(write_fd, F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:
            pass  # a smaller pipe only costs speed
        self.pipe = PipeReader(read_fd, self._progress, stall_seconds, table)
        self.stuck = False  # the COPY thread did not end after abort(): its connection must be abandoned
        self._writer = os.fdopen(write_fd, "wb", buffering=PIPE_BYTES)
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"rds-copy-out-{table}", daemon=True)

    def _progress(self, total_bytes: int) -> None:
        now = time.monotonic()
        if now - self._last_progress >= PROGRESS_SECONDS:
            self._last_progress = now
            message = copying(self.table, total_bytes, now - self._started, *self.expected)
            self.extraction.progress.append(message)

    def start(self) -> CopyOut:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            with self.conn.cursor() as cur:
                cur.copy_expert(self.query_text, self._writer)
                self.extraction.rows = cur.rowcount
        except BaseException as exc:  # noqa: BLE001 - re-raised by the loader before it commits
            self.error = exc
        finally:
            try:
                self._writer.close()  # EOF for the reader (after a failure too: the loader checks .error)
            except OSError as exc:
                self.error = self.error or exc

    def join(self) -> None:
        self._thread.join()
        self.extraction.bytes = self.pipe.bytes
        self.pipe.close()

    def abort(self) -> None:
        """Stop reading after a load failure: close our end, so the source COPY's writes fail at once. No libpq
        cancel request: PQcancel holds the GIL while it waits, with no timeout, and through a frozen tunnel it
        waits forever. A COPY thread that does not end in a moment marks the copy ``stuck``; the session then
        closes the tunnel under it and terminates its backend from a fresh connection."""
        try:
            self.pipe.close()
        except OSError:
            pass
        if not self._thread.is_alive() and self._thread.ident is None:  # never started
            self._writer.close()
            return
        self._thread.join(timeout=ABORT_WAIT_SECONDS)
        self.stuck = self._thread.is_alive()
        if self.stuck:
            log.warning("%s: the source COPY is not answering; abandoning its connection", self.table)


def bounded(action: Callable[[], object], seconds: float, name: str) -> bool:
    """Run ``action`` in a daemon thread and wait at most ``seconds``; True when it finished in time.
    For calls that can block without a timeout of their own (libpq's cancel request, closing a socket
    through a frozen tunnel)."""

    def run() -> None:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - best effort: the caller moves on either way
            log.debug("%s: %s", name, exc)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive()
