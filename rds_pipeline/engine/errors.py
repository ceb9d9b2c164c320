"""Connection failures, each with a kind, a plain-language cause and the fix to apply."""

from __future__ import annotations


class RdsPipelineError(Exception):
    """Base class for errors that the CLI prints without a traceback."""


class ConnectionProblem(RdsPipelineError):
    """A connection could not be made. ``kind`` is stable (tests and scripts match on it)."""

    def __init__(self, kind: str, message: str, fix: str) -> None:
        self.kind = kind
        self.message = message
        self.fix = fix
        super().__init__(f"{message}\nFix: {fix}")
