"""A string that never prints itself, so passwords cannot leak through logs, errors or metadata."""

from __future__ import annotations

from collections.abc import Iterable


class Secret:
    """Holds a secret value; ``str()``/``repr()`` show ``***``. Call ``reveal()`` where the value is needed."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    def __str__(self) -> str:
        return "***"

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def redact(text: str, secrets: Iterable[Secret | str | None]) -> str:
    """Replace every occurrence of each secret value in ``text`` with ``***`` (defence in depth)."""
    for secret in secrets:
        value = secret.reveal() if isinstance(secret, Secret) else secret
        if value and len(value) >= 3:
            text = text.replace(value, "***")
    return text
