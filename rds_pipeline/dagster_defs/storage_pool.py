"""Hold Dagster's PostgreSQL storage connections open while a run or a step syncs tables, then let them go.

dagster-postgres opens a new connection for every storage call (``NullPool``: nothing is held between calls, which
is safe in any process), and a run writes several per event. A tick over 300 tables through the shipped
dagster.yaml opened 1,581 connections: 8.3 s of its 22 s (profiled). While a step runs, its process's storages
use a pool that keeps one connection open (as Dagster's webserver does, ``optimize_for_webserver``): the
destination resource does it for each step, ``rds-pipeline sync`` for its whole run (a step inside it then finds
the pool already there). At the end the original engines are back and the pool is closed. A killed process takes
its connections with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

STATEMENT_TIMEOUT_MS = 300_000  # a storage write that takes longer fails instead of waiting for ever
_EXTRA = 8  # connections opened beyond the held one when threads write at once (closed when returned)


@dataclass
class HeldConnections:
    """The storages switched to a pool, with their own engines to put back."""

    swapped: list[tuple[Any, Any, Any]] = field(default_factory=list)  # (storage, its engine, the pooled engine)

    def release(self) -> None:
        """Put each storage's own engine back and close the pooled connections (idempotent)."""
        while self.swapped:
            storage, own, pooled = self.swapped.pop()
            storage._engine = own
            pooled.dispose()


def hold_storage_connections(instance: Any) -> HeldConnections:
    """Switch the instance's dagster-postgres storages (event log, runs, schedules) to a pool of one held
    connection; any other storage (SQLite, in memory) is left as it is."""
    held = HeldConnections()
    try:
        from dagster_postgres.utils import create_pg_engine, set_pg_statement_timeout
        from sqlalchemy import event
        from sqlalchemy.pool import NullPool
    except ImportError:  # no dagster-postgres here: nothing to hold
        return held
    for name in ("event_log_storage", "run_storage", "schedule_storage"):
        storage = getattr(instance, name, None)
        if storage is None:
            continue
        own = getattr(storage, "_engine", None)
        url = getattr(storage, "postgres_url", None)
        if own is None or not isinstance(url, str) or not isinstance(own.pool, NullPool):
            continue
        options = own.url.query.get("options")
        pooled = create_pg_engine(
            url,
            getattr(storage, "_token_provider", None),
            isolation_level="AUTOCOMMIT",
            pool_size=1,
            max_overflow=_EXTRA,
            pool_recycle=3600,
            **({"connect_args": {"options": options}} if options else {}),
        )
        event.listen(pooled, "connect", lambda conn, _: set_pg_statement_timeout(conn, STATEMENT_TIMEOUT_MS))
        storage._engine = pooled
        held.swapped.append((storage, own, pooled))
    return held
