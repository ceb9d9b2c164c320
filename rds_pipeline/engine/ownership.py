"""``owners:`` and ``tags:`` for the replicas, for all tables or per table, checked here with the fix (Dagster
would refuse a bad one while loading definitions, taking the whole code location down with it)."""

from __future__ import annotations

import re
from typing import Any

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_TEAM = re.compile(r"team:[A-Za-z0-9_-]+")
_TAG_KEY = re.compile(r"([A-Za-z0-9_.-]{1,63}/)?[A-Za-z0-9_.-]{1,63}")
_TAG_VALUE = re.compile(r"[A-Za-z0-9_.-]{0,63}")
RESERVED_PREFIXES = ("dagster/", "rds_pipeline/")


def parse_owners(value: Any, key: str, problems: list[str]) -> tuple[str, ...] | None:
    """A list of emails or ``team:<name>``; None when not given."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        problems.append(
            f"{key}: expected a list of owners, got {type(value).__name__}. Fix: write e.g. "
            '`owners: [data@example.com, "team:analytics"]`'
        )
        return None
    owners = []
    for owner in value:
        text = str(owner)
        if not (_EMAIL.fullmatch(text) or _TEAM.fullmatch(text)):
            problems.append(
                f"{key}: '{text}' is not an owner. Fix: use an email or team:<name> (letters, digits, _ and -)"
            )
            continue
        owners.append(text)
    return tuple(owners)


def parse_tags(value: Any, key: str, problems: list[str]) -> dict[str, str]:
    """A mapping of tag keys to short values (Dagster's rules: letters, digits, ``_ . -``; a key may have one
    ``prefix/``; at most 63 characters each)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(
            f"{key}: expected a mapping, got {type(value).__name__}. Fix: write e.g. "
            "`tags: {domain: sales, tier: gold}`"
        )
        return {}
    tags = {}
    for name, raw in value.items():
        name, text = str(name), "" if raw is None else str(raw)
        if name.startswith(RESERVED_PREFIXES):
            problems.append(f"{key}.{name}: the prefixes dagster/ and rds_pipeline/ are reserved. Fix: rename it")
        elif not _TAG_KEY.fullmatch(name):
            problems.append(
                f"{key}.{name}: not a valid tag key. Fix: letters, digits, _ . - (at most 63), with at most one prefix/"
            )
        elif not _TAG_VALUE.fullmatch(text):
            problems.append(
                f"{key}.{name}: '{text}' is not a valid tag value. Fix: letters, digits, _ . - (at most 63)"
            )
        else:
            tags[name] = text
    return tags
