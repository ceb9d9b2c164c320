"""How to cut short the waits that Python's signal handlers cannot reach.

Ctrl-C or SIGTERM raises in the main thread only between two Python instructions; a libpq query on the source or
the destination, or a DuckDB statement, waits inside C until it returns, which may be minutes. Each connection
that can wait so registers how to end its wait: the source ends its own backend from a fresh connection (so it is
never left behind on production), a PostgreSQL destination cancels its statement (its transaction rolls back),
DuckDB interrupts its statement. A stop request (``rds_pipeline.stop``) calls them all; the blocked call then
returns with an error, and the run ends through its usual failure path: nothing half-committed, no bookmark moved.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

_lock = threading.Lock()
_stop = threading.Event()


class Stopped(BaseException):  # noqa: N818 - like KeyboardInterrupt: not an Exception, so no handler swallows it
    """A stop was requested (Ctrl-C, SIGTERM): raised at the engine's checkpoints, never retried."""


def request_stop() -> None:
    """From then on, every checkpoint raises Stopped: no new range, retry or table starts."""
    _stop.set()


def stop_requested() -> bool:
    return _stop.is_set()


def checkpoint() -> None:
    """Raise Stopped if a stop was requested: where work may start (a range, a retry, a table, a batch)."""
    if _stop.is_set():
        raise Stopped("a stop was requested (Ctrl-C or SIGTERM)")


def clear_stop() -> None:
    """For a process that goes on after a stopped run (tests, a long-lived caller)."""
    _stop.clear()


_waits: dict[int, tuple[str, Callable[[], object]]] = {}
_ids = itertools.count()


def register(name: str, cancel: Callable[[], object]) -> int:
    """``cancel`` ends whatever the connection ``name`` waits for now (harmless when it waits for nothing).
    Returns the handle for ``unregister``."""
    handle = next(_ids)
    with _lock:
        _waits[handle] = (name, cancel)
    return handle


def unregister(handle: int | None) -> None:
    if handle is not None:
        with _lock:
            _waits.pop(handle, None)


def cancel_all(seconds: float) -> list[str]:
    """Call every registered cancel, each in its own thread, waiting at most ``seconds`` for them all; returns
    the names of those that finished in time."""
    with _lock:
        waits = list(_waits.values())
    done: list[str] = []

    def run(name: str, cancel: Callable[[], object]) -> None:
        try:
            cancel()
            done.append(name)
        except Exception as exc:  # noqa: BLE001 - best effort: the caller's deadline still ends the process
            log.debug("cancelling %s: %s", name, exc)

    threads = [threading.Thread(target=run, args=w, name=f"rds-cancel-{w[0]}", daemon=True) for w in waits]
    deadline = time.monotonic() + seconds
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    return list(done)
