"""The fault harness: a source reached through a real sshd, a destination on another server, a sync running
in a thread (or a child process), a fault injected mid-copy, and a row-for-row verdict.

Each fault's result is a row of the table ``make faults`` prints: injected, survived, rows lost, rows
duplicated, seconds to recover, and whether a source backend was left behind.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psutil
import psycopg2

from rds_pipeline.engine.config import IntegrationConfig
from rds_pipeline.engine.destinations.factory import open_destination
from rds_pipeline.engine.replication.sync import SyncResult, sync_table
from rds_pipeline.engine.selection import SelectedTable
from rds_pipeline.engine.source.session import SourceSession
from rds_pipeline.local_postgres import LocalPostgres

FINISH_SECONDS = 240  # a sync that has not ended this long after the fault is a hang


@dataclass
class FaultResult:
    fault: str
    injected: bool = False
    survived: bool = False
    rows_lost: int = 0
    rows_duplicated: int = 0
    recover_seconds: float = 0.0
    backend_left: bool = False
    detail: str = ""

    def row(self) -> str:
        yes = {True: "yes", False: "no"}
        return (
            f"| {self.fault} | {yes[self.injected]} | {yes[self.survived]} | {self.rows_lost:,} | "
            f"{self.rows_duplicated:,} | {self.recover_seconds:.1f} | {yes[self.backend_left]} |"
        )


RESULTS: list[FaultResult] = []
HEADER = (
    "| fault | injected | survived | rows lost | rows duplicated | seconds to recover | source backend left |\n"
    "| --- | --- | --- | ---: | ---: | ---: | --- |"
)


def table_text() -> str:
    return "\n".join([HEADER, *(r.row() for r in RESULTS)])


class SyncThread(threading.Thread):
    """One engine sync of one table, as ``rds-pipeline sync`` runs it (retries included)."""

    def __init__(self, config: IntegrationConfig, table: SelectedTable) -> None:
        super().__init__(name="fault-sync", daemon=True)
        self.config, self.table = config, table
        self.result: SyncResult | None = None
        self.error: BaseException | None = None
        self.ended_at = 0.0

    def run(self) -> None:
        try:
            destination = open_destination(self.config)
            try:
                with SourceSession(self.config.source) as session:
                    self.result = sync_table(session, destination, self.table, max_attempts=6, backoff_seconds=0.5)
            finally:
                destination.close()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            self.ended_at = time.monotonic()


def scalar(server: LocalPostgres, database: str, query: str, params: tuple[Any, ...] = ()) -> Any:
    conn = psycopg2.connect(**server.dsn(database), connect_timeout=5, application_name="fault_harness")
    try:
        with conn.cursor() as cur:
            cur.execute(query, params)
            row = cur.fetchone()
        return row[0] if row else None
    finally:
        conn.close()


def wait_mid_copy(destination: LocalPostgres, database: str, min_bytes: int, timeout: float = 120) -> None:
    """Until the destination's COPY has taken ``min_bytes`` (pg_stat_progress_copy)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = scalar(
            destination,
            "postgres",
            "SELECT max(bytes_processed) FROM pg_stat_progress_copy WHERE datname = %s",
            (database,),
        )
        if done and done >= min_bytes:
            return
        time.sleep(0.05)
    raise AssertionError(f"the copy into {database} never reached {min_bytes} bytes")


def fingerprint(server: LocalPostgres, database: str, relation: str) -> tuple[int, int, str]:
    """(rows, distinct keys, a hash of every row's content): equal on both sides means equal tables."""
    row = scalar(
        server,
        database,
        f"SELECT ARRAY[count(*)::text, count(DISTINCT id)::text, "
        f"coalesce(sum(hashtextextended(id::text || '|' || pad || '|' || n::text, 0)::numeric), 0)::text] "
        f"FROM {relation}",
    )
    return int(row[0]), int(row[1]), row[2]


def compare(
    result: FaultResult,
    source: LocalPostgres,
    source_db: str,
    destination: LocalPostgres,
    dest_db: str,
    relation: str,
    dest_relation: str,
) -> bool:
    src = fingerprint(source, source_db, relation)
    dst = fingerprint(destination, dest_db, dest_relation)
    result.rows_lost = max(0, src[1] - dst[1])
    result.rows_duplicated = dst[0] - dst[1]
    return src == dst


def backend_left(source: LocalPostgres, wait: float = 10) -> bool:
    """Whether an rds_pipeline backend is still on the source once every client has given up."""
    deadline = time.monotonic() + wait
    while True:
        left = scalar(
            source,
            "postgres",
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = "
            "'rds_pipeline' AND backend_type = 'client backend'",
        )
        if not left or time.monotonic() > deadline:
            return bool(left)
        time.sleep(0.2)


def session_processes(sshd_pid: int) -> list[psutil.Process]:
    """sshd's per-connection processes (everything below the listener)."""
    try:
        return psutil.Process(sshd_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def signal_all(processes: list[psutil.Process], sig: int) -> None:
    for process in processes:
        try:
            os.kill(process.pid, sig)
        except ProcessLookupError:
            pass


@dataclass
class Injection:
    """What a fault did, and how to undo what must not outlive the test (a frozen process)."""

    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def cleanup(self) -> None:
        for action in self.cleanups:
            try:
                action()
            except Exception:  # noqa: BLE001 - best effort
                pass


def freeze(sshd_pid: int, injection: Injection) -> bool:
    frozen = session_processes(sshd_pid)
    signal_all(frozen, signal.SIGSTOP)
    injection.cleanups.append(lambda: (signal_all(frozen, signal.SIGKILL), signal_all(frozen, signal.SIGCONT)))
    return bool(frozen)


def kill_monitor(sshd_pid: int) -> bool:
    """Kill only the per-connection monitor (the listener's direct child), leaving whatever runs below it."""
    try:
        monitors = psutil.Process(sshd_pid).children(recursive=False)
    except psutil.NoSuchProcess:
        return False
    signal_all(monitors, signal.SIGKILL)
    return bool(monitors)


def cut(sshd_pid: int) -> bool:
    victims = session_processes(sshd_pid)
    signal_all(victims, signal.SIGKILL)
    return bool(victims)
