"""Checks on replicated data: row counts in a key range, primary-key uniqueness, columns against the catalog."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg2.extensions
from psycopg2 import sql

from rds_pipeline.engine.core.ranges import KeyRange
from rds_pipeline.engine.core.rows import one
from rds_pipeline.engine.destinations.base import METADATA_COLUMNS
from rds_pipeline.engine.selection import SelectedTable


@dataclass(frozen=True)
class CheckOutcome:
    passed: bool
    description: str
    metadata: dict[str, Any]


def combined(parts: list[tuple[str, CheckOutcome]]) -> CheckOutcome:
    """One check per table: it passes when every part does. The description names each part, failing ones
    first; the metadata keeps each part's figures under ``<part>/``. (One check event per table instead of
    one per part: Dagster writes each event on its own, and at 1,000 tables per tick that is most of the run.)"""
    ordered = [p for p in parts if not p[1].passed] + [p for p in parts if p[1].passed]
    description = "; ".join(f"{'FAILED ' if not o.passed else ''}{name}: {o.description}" for name, o in ordered)
    metadata: dict[str, Any] = {f"{name}/{key}": value for name, o in parts for key, value in o.metadata.items()}
    metadata["failed"] = ", ".join(name for name, o in parts if not o.passed) or "none"
    return CheckOutcome(all(o.passed for _, o in parts), description, metadata)


def source_count(conn: psycopg2.extensions.connection, table: SelectedTable, key_range: KeyRange) -> int:
    query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table.relation.schema, table.relation.name))
    predicate = key_range.predicate()
    if predicate is not None:
        query = sql.SQL("{} WHERE {}").format(query, predicate)
    with conn.cursor() as cur:
        cur.execute(query)
        count = int(one(cur.fetchone())[0])
    conn.rollback()
    return count


def row_count_check(
    source_rows: int, destination_rows: int, key_range: KeyRange, counted: str = "at the source"
) -> CheckOutcome:
    """``counted``: where ``source_rows`` comes from ("at the source": a count query; or the rows this sync's
    COPY read from the source, which costs production nothing)."""
    return CheckOutcome(
        source_rows == destination_rows,
        f"{destination_rows} rows in the destination, {source_rows} {counted} ({key_range.describe()})",
        {"source_rows": source_rows, "destination_rows": destination_rows, "range": key_range.describe()},
    )


def primary_key_check(duplicates: int, table: SelectedTable, enforced: bool = False) -> CheckOutcome:
    """``enforced``: the destination's PRIMARY KEY constraint on exactly these columns guarantees uniqueness,
    so no scan was needed; without the constraint, ``duplicates`` comes from a scan."""
    keys = ", ".join(table.primary_key)
    if enforced:
        return CheckOutcome(
            True,
            f"unique by the destination's PRIMARY KEY ({keys})",
            {"duplicate_keys": 0, "enforced_by": "PRIMARY KEY constraint"},
        )
    return CheckOutcome(
        duplicates == 0,
        f"{duplicates} duplicated primary-key value(s) over ({keys})",
        {"duplicate_keys": duplicates},
    )


def columns_check(destination_columns: list[str], table: SelectedTable) -> CheckOutcome:
    """The destination has every catalog column (extra ones, such as dropped source columns, are reported)."""
    present = set(destination_columns) - set(METADATA_COLUMNS)
    wanted = set(table.column_names)
    missing, extra = sorted(wanted - present), sorted(present - wanted)
    return CheckOutcome(
        not missing,
        "columns match the catalog" if not missing and not extra else f"missing {missing}, not in catalog {extra}",
        {"missing_columns": ", ".join(missing) or "none", "extra_columns": ", ".join(extra) or "none"},
    )
