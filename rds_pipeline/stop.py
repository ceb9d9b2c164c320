"""Ctrl-C and SIGTERM stop a command cleanly within a bound, in every phase; a second one ends it at once.

The first signal asks the run to stop where it is: Dagster raises it in the step's Python code (a COPY reading
its pipe, the slot's stream, the wait for a pool slot), the step fails, its transaction rolls back, its source
backend is ended, and the run ends. Work waiting inside C (a libpq query, a DuckDB statement) cannot see it, so
a watchdog thread, woken by the signal itself (``signal.set_wakeup_fd``: the kernel-level handler writes to a
pipe even while the main thread is blocked), cancels those waits after ``cancel_after`` seconds
(``engine.interrupts``). Past ``deadline`` seconds, or at a second signal, the watchdog ends the process itself:
first, within a second, it ends the source backends and marks the run (``on_exit``), then ``os._exit``. The exit
code is 128 + the signal: 130 for Ctrl-C, 143 for SIGTERM.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType

from rds_pipeline.engine import interrupts

SIGNALS = (signal.SIGINT, signal.SIGTERM)
CANCEL_AFTER_SECONDS = 1.5
DEADLINE_SECONDS = 7.0
LAST_WORDS_SECONDS = 1.5


@dataclass
class StopState:
    """What the command was asked: ``signum`` is the first stop signal received, if any."""

    signum: int | None = None
    terminal: int | None = None  # the command's own stderr, kept from before Dagster captures the process's output
    on_stop: list[Callable[[], object]] = field(default_factory=list)  # run at the first signal, in a thread
    on_exit: list[Callable[[], object]] = field(default_factory=list)  # run at a forced exit, bounded

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)

    @property
    def name(self) -> str:
        return _name(self.signum) if self.signum else "a stop request"

    def say(self, text: str) -> None:
        """A line for the person at the terminal, even while Dagster captures stderr into its log files (its
        mirror of them is in our process group, so a Ctrl-C ends it too)."""
        try:
            os.write(self.terminal if self.terminal is not None else 2, (text + "\n").encode("utf-8", "replace"))
        except OSError:
            pass


def _name(signum: int) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


@contextmanager
def graceful_stop(
    cancel_after: float = CANCEL_AFTER_SECONDS, deadline: float = DEADLINE_SECONDS
) -> Iterator[StopState]:
    """Within this block (on the main thread), SIGINT and SIGTERM stop the command as the module says. Outside
    Dagster's execution, the first signal raises KeyboardInterrupt, as Python's own handler does."""
    state = StopState()
    if threading.current_thread() is not threading.main_thread():
        yield state
        return
    state.terminal = os.dup(2)

    def handler(signum: int, frame: FrameType | None) -> None:
        state.signum = state.signum or signum  # the watchdog, woken by the same signal, may not have run yet
        raise KeyboardInterrupt(_name(signum))

    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    previous = {s: signal.signal(s, handler) for s in SIGNALS}
    old_wakeup = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    done = threading.Event()
    watchdog = threading.Thread(
        target=_watch, args=(read_fd, state, done, cancel_after, deadline), name="rds-stop-watchdog", daemon=True
    )
    watchdog.start()
    try:
        yield state
    finally:
        done.set()
        signal.set_wakeup_fd(old_wakeup)
        for signum, old in previous.items():
            signal.signal(signum, old)
        os.write(write_fd, b"\0")  # wakes the watchdog, which ends
        watchdog.join(1.0)
        os.close(write_fd)
        os.close(read_fd)
        os.close(state.terminal)
        state.terminal = None
        interrupts.clear_stop()


def _watch(read_fd: int, state: StopState, done: threading.Event, cancel_after: float, deadline: float) -> None:
    first_at: float | None = None
    cancelled = False
    while not done.is_set():
        if first_at is None:
            wait = 1.0
        else:
            wait = max(0.05, first_at + (deadline if cancelled else cancel_after) - time.monotonic())
        ready, _, _ = select.select([read_fd], [], [], wait)
        if done.is_set():
            return
        for signum in os.read(read_fd, 64) if ready else b"":
            if signum not in SIGNALS:
                continue
            if first_at is None:
                first_at, state.signum = time.monotonic(), state.signum or signum
                interrupts.request_stop()  # no range, retry or table starts from now on
                state.say(
                    f"\n{_name(signum)}: stopping (the run ends without committing what it has not finished); "
                    f"{_name(signum)} again to quit at once"
                )
                for action in state.on_stop:
                    threading.Thread(target=_quietly, args=(action,), name="rds-stop", daemon=True).start()
            else:
                state.say(f"{_name(signum)} again: quitting now")
                _exit_now(state)
        if first_at is None:
            continue
        elapsed = time.monotonic() - first_at
        if not cancelled and elapsed >= cancel_after:
            cancelled = True
            interrupts.cancel_all(2.0)  # the waits in C: the main thread's call returns with an error
        if elapsed >= deadline:
            state.say(f"still running {deadline:.0f} s after {_name(state.signum or signal.SIGINT)}: quitting now")
            _exit_now(state)


def _exit_now(state: StopState) -> None:
    """End the process: our source backends and the run's record first, within LAST_WORDS_SECONDS."""
    started = time.monotonic()
    interrupts.cancel_all(1.0)
    for action in state.on_exit:
        left = LAST_WORDS_SECONDS - (time.monotonic() - started)
        thread = threading.Thread(target=_quietly, args=(action,), daemon=True)
        thread.start()
        thread.join(max(0.05, left))
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(state.exit_code)


def _quietly(action: Callable[[], object]) -> None:
    try:
        action()
    except Exception:  # noqa: BLE001, S110 - last words: the next run cleans what is left (stale_runs.py)
        pass
