"""Every error the engine raises on purpose, in one place. Each message names what failed (the field, the table,
the slot) and ends with the fix; the CLI prints it without a traceback, and the Dagster layer shows it as the
step's failure. Anything else that escapes is a programming error and keeps its traceback.

::

    RdsPipelineError                  the project's error: printed without a traceback
    ├── ConfigError                   rds_pipeline.yaml is invalid: one line per field, with the fix
    │   ├── SelectionError            `tables:` does not match the catalog
    │   └── FrequencyError            a schedule (`sync_frequency`) cannot be read
    ├── ConnectionProblem             a connection could not be made (source, tunnel, destination); has a kind
    ├── SetupNeeded                   the source is not ready for log-based replication; holds the SQL
    ├── DestinationBusy               another process kept the DuckDB file's lock past the wait
    ├── LoadError                     one table's load failed for good
    │   └── TableApplyError           one table's log-based changes could not be applied
    ├── IntegrationRenamed            integration_name changed after data was loaded
    ├── SlotBusy                      another client is reading the replication slot
    ├── GapDetected                   the slot lost changes the destination does not hold
    ├── CopyStalled                   the source sent nothing for stall_seconds (also a TimeoutError: retried)
    ├── DecodeError                   bytes that are not a pgoutput message of the expected version
    └── BatchError                    a change a batch cannot place (no key, no Relation message)

``interrupts.Stopped`` is not here: like ``KeyboardInterrupt`` it is a ``BaseException``, so no handler for
these swallows a stop.
"""

from __future__ import annotations

from pathlib import Path


class RdsPipelineError(Exception):
    """The project's error: the CLI prints it without a traceback."""


class ConfigError(RdsPipelineError):
    """The config is invalid; ``problems`` holds one ``key: what is wrong. Fix: …`` per line."""

    def __init__(self, problems: list[str], path: Path | None = None) -> None:
        self.problems = problems
        self.path = path
        where = f" in {path}" if path else ""
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"rds_pipeline config has {len(problems)} problem(s){where}:\n{lines}")


class SelectionError(ConfigError):
    """The selection does not match the catalog; ``problems`` names each table or column and the fix."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        self.path = None
        RdsPipelineError.__init__(
            self, f"{len(problems)} problem(s) in `tables:`:\n" + "\n".join(f"  - {p}" for p in problems)
        )


class FrequencyError(ConfigError):
    """A `sync_frequency` that cannot be read: the message names the key and the forms it takes."""

    def __init__(self, message: str) -> None:
        self.problems = [message]
        self.path = None
        RdsPipelineError.__init__(self, message)


class ConnectionProblem(RdsPipelineError):
    """A connection could not be made. ``kind`` is stable (tests and scripts match on it)."""

    def __init__(self, kind: str, message: str, fix: str) -> None:
        self.kind = kind
        self.message = message
        self.fix = fix
        super().__init__(f"{message}\nFix: {fix}")


class SetupNeeded(RdsPipelineError):
    """The source is not ready for log-based replication; the message holds the SQL to run."""


class DestinationBusy(RdsPipelineError):
    """Another process kept the DuckDB file's single-writer lock past the wait."""


class LoadError(RdsPipelineError):
    """A load failed permanently for one table (named in the message)."""


class TableApplyError(LoadError):
    """One table's changes could not be applied (the whole batch rolled back); names the table."""

    def __init__(self, table_id: str, message: str) -> None:
        self.table_id = table_id
        super().__init__(message if message.startswith(table_id) else f"{table_id}: {message}")


class IntegrationRenamed(RdsPipelineError):
    """integration_name changed after data was loaded: the old schema would be orphaned."""


class SlotBusy(RdsPipelineError):
    """Another client is reading the slot."""


class GapDetected(RdsPipelineError):
    """The slot confirmed changes the destination does not hold: they are gone from the log."""


class CopyStalled(RdsPipelineError, TimeoutError):
    """The source sent no bytes for ``stall_seconds``: the COPY is cancelled, and the range retried."""


class DecodeError(RdsPipelineError):
    """Bytes that are not a pgoutput message of the expected protocol version."""


class BatchError(RdsPipelineError):
    """A change the batch cannot place: a table without a key, or a change before its Relation message."""
