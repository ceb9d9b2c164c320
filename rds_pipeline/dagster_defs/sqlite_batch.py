"""One transaction per database file for a batch of asset events in Dagster's SQLite event log.

Dagster's default instance (no dagster.yaml) keeps its event log in SQLite, and its ``store_event_batch`` writes
a batch one event at a time. Each event creates two engines, opens two database files and commits twice, and each
commit waits for the disk. A first key-based sync of a small table with 957 monthly windows records a
materialization per window: 9.3 s of its 11 s went there (profiled).

``store_event_batch`` here writes a batch of asset events and check evaluations of one run as ``store_event``
would, in two transactions:
- the events into the run's file;
- their mirror into the index file, with the asset events' tags and each asset key's latest entry.

In the index transaction, each check evaluation then updates its check's execution record through Dagster's own
``store_asset_check_event``, lent the open connection (each call would otherwise open the file and commit on its
own: about 11 ms a check, most of a tick's cost). A tick over many tables writes its events this way
(``materializations.TableEvents``).

Anything else goes through Dagster's own loop. If the index step fails after the run's file committed, it is
redone event by event, checks one by one as Dagster writes them (never the run's part, so nothing is written
twice). If the run's part itself fails, Dagster falls back to writing the events one by one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import Any

from dagster._core.events import ASSET_CHECK_EVENTS, ASSET_EVENTS

INSTALLED = "_rds_pipeline_batched"


def install() -> None:
    """Give ``SqliteEventLogStorage`` the batched ``store_event_batch`` (idempotent; other storages untouched)."""
    from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

    if getattr(SqliteEventLogStorage.store_event_batch, INSTALLED, False):
        return
    original = SqliteEventLogStorage.store_event_batch

    def store_event_batch(self: Any, events: Sequence[Any]) -> None:
        if not _batchable(events):
            original(self, events)
            return
        statements = [self.prepare_insert_event(event) for event in events]
        with self.run_connection(events[0].run_id) as conn:
            for statement in statements:
                conn.execute(statement)
        try:
            with self.index_transaction() as conn:
                ids = _mirror(self, conn, events, statements)
                with _lent(self, conn):
                    _store_checks(self, events, ids)
        except Exception:  # noqa: BLE001 - the run's part is stored: redo only the index, event by event
            ids = []
            for event, statement in zip(events, statements, strict=True):
                with self.index_transaction() as conn:
                    ids += _mirror(self, conn, [event], [statement])
            _store_checks(self, events, ids)

    setattr(store_event_batch, INSTALLED, True)
    SqliteEventLogStorage.store_event_batch = store_event_batch  # type: ignore[method-assign]


def _store_checks(storage: Any, events: Sequence[Any], ids: Sequence[int]) -> None:
    """Each check evaluation's execution record, as ``store_event`` writes it."""
    for event, event_id in zip(events, ids, strict=True):
        if event.dagster_event_type in ASSET_CHECK_EVENTS:
            storage.store_asset_check_event(event, event_id)


_lender = threading.local()


@contextmanager
def _lent(storage: Any, conn: Any) -> Iterator[None]:
    """Within the block, this thread's ``storage.index_connection()`` is ``conn`` (its open transaction); other
    threads keep their own connections."""
    own = type(storage).index_connection

    def index_connection(self: Any) -> Any:
        lent = getattr(_lender, "lent", None)
        return nullcontext(lent[1]) if lent is not None and lent[0] is self else own(self)

    if not getattr(own, INSTALLED, False):
        setattr(index_connection, INSTALLED, True)
        type(storage).index_connection = index_connection
    _lender.lent = (storage, conn)
    try:
        yield
    finally:
        _lender.lent = None


def _batchable(events: Sequence[Any]) -> bool:
    """Asset events (materializations, observations, planned) and check evaluations, all of one run: what
    ``store_event`` handles with no more than the run's file and the index."""
    return len(events) > 1 and all(
        e.is_dagster_event
        and (e.dagster_event_type in ASSET_EVENTS or e.dagster_event_type in ASSET_CHECK_EVENTS)
        and e.run_id == events[0].run_id
        for e in events
    )


def _mirror(storage: Any, conn: Any, events: Sequence[Any], statements: Sequence[Any]) -> list[int]:
    """What ``store_event`` writes to the index: every event; for asset events their tags and the key's latest
    entry (written once per key and event type, from its last event: the same final row as one write per
    event). Returns the events' ids in the index."""
    from dagster._core.errors import DagsterInvariantViolationError
    from dagster._core.storage.sqlalchemy_compat import db_result

    ids = []
    for statement in statements:
        with db_result(conn, statement) as result:
            event_id = result.inserted_primary_key[0]
        if event_id is None:
            raise DagsterInvariantViolationError("Cannot store asset event tags for null event id.")
        ids.append(event_id)
    assets = [(e, i) for e, i in zip(events, ids, strict=True) if e.dagster_event_type not in ASSET_CHECK_EVENTS]
    if assets:
        storage._store_asset_event_tags(conn, [e for e, _ in assets], [i for _, i in assets])
    latest = {}
    for event, event_id in assets:
        latest[(event.dagster_event.asset_key, event.dagster_event_type)] = (event, event_id)
    for event, event_id in latest.values():
        storage._store_asset_event(conn, event, event_id)
    return ids
