"""One source connection (and SSH tunnel) per run, reopened only after a transient failure.

A connection whose COPY was abandoned is never reused nor closed from the caller's thread (psycopg2 would wait
on it): it is closed in a bounded background thread, the tunnel under it is closed, and its backend is
terminated from a fresh connection, so the production database is never left with a blocked COPY holding a
snapshot.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import psycopg2
import psycopg2.extensions

from rds_pipeline.engine import interrupts
from rds_pipeline.engine.config import SourceConfig
from rds_pipeline.engine.core.copy_out import CANCEL_WAIT_SECONDS, bounded
from rds_pipeline.engine.core.rows import one
from rds_pipeline.engine.core.session_settings import apply_session_settings
from rds_pipeline.engine.source.connection import connect_source, open_tunnel

if TYPE_CHECKING:  # paramiko loads only when a tunnel is opened
    from rds_pipeline.engine.source.tunnel import SshTunnel

log = logging.getLogger(__name__)


class SourceSession:
    """One source connection (and tunnel) per run, reopened only after a transient failure."""

    def __init__(self, config: SourceConfig) -> None:
        self.config = config
        self._tunnel: SshTunnel | None = None
        self._conn: psycopg2.extensions.connection | None = None
        self._database: str | None = None
        self._backend_pid: int | None = None
        self._live: set[int] = set()  # our backends that may still run a statement (an abandoned one too)
        self._stop_handle: int | None = None

    def connection(self, database: str | None = None) -> psycopg2.extensions.connection:
        database = database or self.config.database
        if self._conn is not None and (self._conn.closed or self._database != database):
            self._close_conn()
        if self._conn is None:
            if self.config.ssh is not None and (self._tunnel is None or not self._tunnel.is_active):
                if self._tunnel is not None:
                    self._tunnel.close()
                self._tunnel = open_tunnel(self.config)
            self._conn = connect_source(self.config, self._tunnel, database=database)
            self._database = database
            self._backend_pid = self._conn.get_backend_pid()
            self._live.add(self._backend_pid)
            apply_session_settings(self._conn)
            if self._stop_handle is None:
                self._stop_handle = interrupts.register("source", self.stop)
        return self._conn

    def end_transaction(self) -> None:
        """After a completed COPY: end its snapshot's transaction, keep the connection."""
        if self._conn is not None and not self._conn.closed:
            try:
                self._conn.rollback()
            except psycopg2.Error:
                self._close_conn()

    def abandon(self, stuck: bool = False) -> None:
        """After a failed COPY: never reuse its connection. A COPY thread that still runs (``stuck``: a frozen
        tunnel, a silent server) loses the tunnel under it first, then its backend is terminated from a fresh
        connection (``pg_terminate_backend``, as the same user); the close itself is bounded either way."""
        conn, pid, database = self._conn, self._backend_pid, self._database
        self._conn = None
        if stuck and self._tunnel is not None:
            bounded(self._tunnel.close, CANCEL_WAIT_SECONDS, "rds-close-tunnel")
            self._tunnel = None
        if stuck and pid is not None and self.terminate_backend(pid, database):
            self._live.discard(pid)
        if conn is not None and not conn.closed and bounded(conn.close, CANCEL_WAIT_SECONDS, "rds-close-source"):
            self._live.discard(pid)
        if not stuck:
            self.reset()

    def terminate_backend(self, pid: int, database: str | None = None) -> bool:
        """End our own backend ``pid`` if it is still there; True once it is gone (ended now, or before).
        Bounded by the connect and statement timeouts."""
        try:
            conn = self.connection(database)
            if _end_backends(conn, [pid]):
                log.warning("terminated the abandoned source backend %s", pid)
            conn.rollback()
            return True
        except (psycopg2.Error, OSError) as exc:
            log.warning(
                "could not check the abandoned source backend %s (%s); a DBA can end it with "
                "SELECT pg_terminate_backend(%s)",
                pid,
                str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__,
                pid,
            )
            self.reset()
            return False
        except Exception as exc:  # noqa: BLE001 - a ConnectionProblem: reported, the retry reconnects
            log.warning("could not reconnect to end the abandoned source backend %s: %s", pid, exc)
            return False

    def stop(self) -> None:
        """Asked to stop (Ctrl-C, SIGTERM) while our statements may be running: end our backends from a fresh
        connection, so nothing of ours stays on the source; a call waiting on one then returns with an error.
        Called from another thread: it never touches the session's own connection."""
        pids = list(self._live.copy())  # a copy: the session's own thread may change the set meanwhile
        if not pids:
            return
        other = connect_source(self.config, self._tunnel, database=self._database)
        try:
            other.autocommit = True
            _end_backends(other, pids)
        finally:
            other.close()

    def reset(self) -> None:
        self._close_conn()
        if self._tunnel is not None and not self._tunnel.is_active:
            self._tunnel.close()
            self._tunnel = None

    def _close_conn(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg2.Error:
                pass
            self._live.discard(self._backend_pid)
        self._conn = None

    def close(self) -> None:
        interrupts.unregister(self._stop_handle)
        self._stop_handle = None
        self._close_conn()
        if self._tunnel is not None:
            self._tunnel.close()
            self._tunnel = None

    def __enter__(self) -> SourceSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _end_backends(conn: psycopg2.extensions.connection, pids: list[int]) -> int:
    """End those of ``pids`` that are still ours (rds_pipeline, this user); returns how many were there."""
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE pid = ANY(%s) "
            "AND application_name = 'rds_pipeline' AND usename = current_user",
            (pids,),
        )
        return int(one(cur.fetchone())[0])
