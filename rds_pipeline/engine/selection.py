"""Selection: which tables and columns to replicate, and how, resolved against the catalog and validated.

Each ``tables:`` entry names a relation as it appears in the source (no SQL quoting): ``schema.table`` in the
configured database, or ``database.schema.table``; or, when a name itself holds dots, with the keys
``database``, ``schema`` and ``table``.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rds_pipeline.engine.errors import FrequencyError, SelectionError
from rds_pipeline.engine.frequency import parse_frequency
from rds_pipeline.engine.naming import MAX_IDENTIFIER, destination_table_name
from rds_pipeline.engine.ownership import parse_owners, parse_tags
from rds_pipeline.engine.quoting import quote_ident
from rds_pipeline.engine.source.catalog import Catalog, Column, Relation

METHODS = ("full_table", "key_based", "xmin", "log_based")
LOG_KINDS = ("table", "partitioned_table")
ENTRY_KEYS = (
    "name",
    "database",
    "schema",
    "table",
    "method",
    "replication_key",
    "columns",
    "primary_key",
    "destination_table",
    "schedule",
    "granularity",
    "chunk_rows",
    "lookback",
    "owners",
    "tags",
    "deletes",
    "soft_deletes",
)
DELETES = ("ignore", "detect")
GRANULARITIES = ("hourly", "daily", "weekly", "monthly")
DEFAULT_CHUNK_ROWS = 1_000_000
# fmt: off
_UNORDERED_TYPES = {
    "json", "jsonb", "xml", "tsvector", "tsquery", "point", "line", "lseg", "box", "path", "polygon", "circle",
    "bytea", "txid_snapshot", "pg_snapshot",
}
# fmt: on


@dataclass(frozen=True)
class SelectedTable:
    relation: Relation
    method: str
    replication_key: str | None
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...]
    destination_table: str
    notices: tuple[str, ...] = field(default_factory=tuple)
    schedule: Any = None  # per-table override of the integration's schedule (raw)
    granularity: str | None = None  # time-window partitions of a date/timestamp key; None: from the key's span
    chunk_rows: int = DEFAULT_CHUNK_ROWS  # rows per key-range partition
    lookback: str | int | None = None
    all_columns: bool = True  # no `columns:` list: a column added at the source is replicated too
    owners: tuple[str, ...] | None = None  # None: the integration's `owners:`
    tags: dict[str, str] = field(default_factory=dict)  # added to the integration's `tags:`
    deletes: str = "ignore"  # detect: rows gone at the source are found by key after each sync (compare.py)
    soft_deletes: bool = False  # with detect: mark _rds_deleted_at instead of deleting

    @property
    def id(self) -> str:
        return self.relation.id

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


def find_relation(catalog: Catalog, name: str, default_database: str) -> list[Relation]:
    """Relations whose ``schema.name`` (in the default database) or ``database.schema.name`` equals ``name``."""
    return [
        r
        for r in catalog.relations
        if (r.database == default_database and f"{r.schema}.{r.name}" == name) or r.id == name
    ]


def display_name(relation: Relation, default_database: str) -> str:
    return relation.qualified_name if relation.database == default_database else relation.id


def orderable(column: Column) -> bool:
    """Whether a column can serve as a replication key (has a meaningful ordering)."""
    if column.kind in ("array", "composite", "range", "multirange", "pseudo") or column.category in ("A", "G"):
        return False
    base = (column.base_type if column.kind == "domain" else column.type) or column.type
    return base.split("(")[0] not in _UNORDERED_TYPES


def resolve_selection(entries: list[Any], catalog: Catalog, default_database: str) -> list[SelectedTable]:
    """Validate every entry against the catalog; raise ``SelectionError`` listing all problems."""
    problems: list[str] = []
    selected: list[SelectedTable] = []
    seen: dict[str, str] = {}
    for index, entry in enumerate(entries):
        where = f"tables[{index}]"
        result = _resolve_entry(where, entry, catalog, default_database, problems)
        if result is None:
            continue
        if result.id in seen:
            problems.append(
                f"{where}: {display_name(result.relation, default_database)} is selected twice "
                f"(also {seen[result.id]}). Fix: keep one entry"
            )
            continue
        seen[result.id] = where
        selected.append(result)
    names: dict[str, SelectedTable] = {}
    for table in selected:
        # compared without case: DuckDB (and many warehouses) treat "Orders" and "orders" as one table
        other = names.get(table.destination_table.casefold())
        if other is not None:
            same = other.destination_table == table.destination_table
            problems.append(
                f"{display_name(table.relation, default_database)} and {display_name(other.relation, default_database)}"
                f" would both load into destination table '{table.destination_table}'"
                f"{'' if same else f' (and {other.destination_table!r}: they differ only in case)'}. Fix: set "
                "`destination_table:` on one of them"
            )
        names[table.destination_table.casefold()] = table
    if problems:
        raise SelectionError(problems)
    return selected


class _Refused(Exception):
    """An entry that cannot be selected: its problem is already in the list."""


def _refuse(problems: list[str], problem: str) -> _Refused:
    problems.append(problem)
    return _Refused(problem)


def _resolve_entry(
    where: str, entry: Any, catalog: Catalog, default_database: str, problems: list[str]
) -> SelectedTable | None:
    """One `tables:` entry checked against the catalog, each problem named with its fix (None: refused)."""
    if isinstance(entry, str):
        entry = {"name": entry}
    if not isinstance(entry, dict):
        problems.append(f"{where}: expected a mapping with at least `name:`, got {entry!r}")
        return None
    try:
        relation = _entry_relation(where, entry, catalog, default_database, problems)
        label = f"{where} ({display_name(relation, default_database)})"
        method, key = _method_and_key(label, entry, relation, problems)
        primary_key = _primary_key(label, entry, relation, problems)
        if method == "log_based":
            _check_log_based(label, relation, primary_key, default_database, problems)
        if method == "xmin":
            _check_xmin(label, relation, primary_key, problems)
        notices: list[str] = []
        columns = _columns(label, entry, relation, primary_key, key, default_database, notices, problems)
        if not relation.can_select:
            notices.append(
                f"{display_name(relation, default_database)}: this user lacks SELECT on it; "
                "`rds-pipeline check` gives the GRANT"
            )
        destination, granularity, chunk_rows = _entry_options(label, entry, relation, default_database, problems)
        deletes, soft = _deletes(label, entry, method, primary_key, problems)
    except _Refused:
        return None
    before = len(problems)
    owners = parse_owners(entry.get("owners"), f"{label}.owners", problems)
    tags = parse_tags(entry.get("tags"), f"{label}.tags", problems)
    if len(problems) > before:
        return None
    return SelectedTable(
        relation,
        method,
        key,
        columns,
        primary_key,
        destination,
        tuple(notices),
        entry.get("schedule"),
        granularity,
        chunk_rows,
        entry.get("lookback"),
        entry.get("columns") is None,
        owners,
        tags,
        deletes,
        soft,
    )


def _entry_relation(
    where: str, entry: dict[str, Any], catalog: Catalog, default_database: str, problems: list[str]
) -> Relation:
    """The one catalog relation the entry names (its unknown keys reported on the way)."""
    for key in entry:
        if key not in ENTRY_KEYS:
            close = difflib.get_close_matches(str(key), ENTRY_KEYS, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; allowed: {', '.join(ENTRY_KEYS)}"
            problems.append(f"{where}.{key}: unknown key. Fix: remove or rename it{hint}")
    if "name" in entry:
        name = str(entry["name"])
        matches = find_relation(catalog, name, default_database)
    elif "schema" in entry and "table" in entry:
        database = str(entry.get("database") or default_database)
        name = f"{database}.{entry['schema']}.{entry['table']}"
        matches = [
            r
            for r in catalog.relations
            if (r.database, r.schema, r.name) == (database, entry["schema"], entry["table"])
        ]
    else:
        raise _refuse(problems, f"{where}: has no `name:`. Fix: add `name: schema.table`")
    label = f"{where} ({name})"
    if not matches:
        known = [display_name(r, default_database) for r in catalog.relations]
        close = difflib.get_close_matches(name, known, n=3)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise _refuse(
            problems,
            f"{label}: no table or view '{name}' in the catalog (databases: {', '.join(catalog.databases)}); "
            f"it does not exist, or it was dropped or renamed at the source.{hint} Fix: correct the name, or run "
            "`rds-pipeline discover` if it is new, or remove the entry",
        )
    if len(matches) > 1:
        raise _refuse(
            problems,
            f"{label}: the name is ambiguous ({', '.join(r.id for r in matches)}). Fix: use the keys "
            "`database:`, `schema:` and `table:` instead of `name:`",
        )
    return matches[0]


def _method_and_key(
    label: str, entry: dict[str, Any], relation: Relation, problems: list[str]
) -> tuple[str, str | None]:
    """The method, and the replication key a key-based table orders by (only it has one)."""
    method = str(entry.get("method") or "full_table")
    if method not in METHODS:
        raise _refuse(problems, f"{label}.method: '{method}' is not a method. Fix: use one of {', '.join(METHODS)}")
    key = entry.get("replication_key")
    if method != "key_based":
        if key:
            raise _refuse(
                problems,
                f"{label}.replication_key: applies only to method key_based. Fix: remove it, or set "
                "`method: key_based`",
            )
        return method, None
    if not key:
        candidates = ", ".join(relation.replication_key_candidates) or "none found"
        raise _refuse(
            problems,
            f"{label}: method key_based needs a replication_key. Fix: add `replication_key:` "
            f"(candidates, indexed first: {candidates})",
        )
    column = relation.column(str(key))
    if column is None:
        raise _refuse(problems, _unknown_column(label + ".replication_key", str(key), relation))
    if not orderable(column):
        raise _refuse(
            problems,
            f"{label}.replication_key: column '{key}' is of type {column.type}, which cannot be ordered, so it "
            f"cannot mark progress. Fix: choose a timestamp, date or integer column "
            f"(candidates: {', '.join(relation.replication_key_candidates) or 'none found'})",
        )
    return method, str(key)


def _primary_key(label: str, entry: dict[str, Any], relation: Relation, problems: list[str]) -> tuple[str, ...]:
    """The source's primary key, or the entry's own (`primary_key:`), every column known."""
    if not entry.get("primary_key"):
        return tuple(relation.primary_key)
    override = [str(c) for c in _as_list(entry["primary_key"])]
    missing = [c for c in override if relation.column(c) is None]
    if missing:
        raise _refuse(problems, _unknown_column(label + ".primary_key", missing[0], relation))
    return tuple(override)


def _deletes(
    label: str, entry: dict[str, Any], method: str, primary_key: tuple[str, ...], problems: list[str]
) -> tuple[str, bool]:
    """`deletes: detect` (and `soft_deletes:`), for the methods that cannot see a delete."""
    deletes = str(entry.get("deletes") or "ignore")
    soft = entry.get("soft_deletes", False)
    if deletes not in DELETES:
        raise _refuse(problems, f"{label}.deletes: '{deletes}' is not a mode. Fix: use {' or '.join(DELETES)}")
    if not isinstance(soft, bool):
        raise _refuse(problems, f"{label}.soft_deletes: expected true or false, got {soft!r}")
    if deletes == "detect" and method not in ("key_based", "xmin"):
        seen = "each sync replaces the table" if method == "full_table" else "the log carries every delete"
        raise _refuse(
            problems,
            f"{label}.deletes: detect is for key_based and xmin tables; a {method} table sees deletes already "
            f"({seen}). Fix: remove `deletes:`",
        )
    if deletes == "detect" and not primary_key:
        raise _refuse(
            problems,
            f"{label}.deletes: detect compares the keys at the source and in the replica, and this table has no "
            "primary key. Fix: add `primary_key: [columns]` to the entry",
        )
    if soft and deletes != "detect":
        raise _refuse(problems, f"{label}.soft_deletes: applies with `deletes: detect`. Fix: add it, or remove this")
    return deletes, soft


def _check_xmin(label: str, relation: Relation, primary_key: tuple[str, ...], problems: list[str]) -> None:
    """What xmin replication needs: row versions (a table's, not a view's), and a key to merge re-read rows by."""
    if relation.kind not in LOG_KINDS:
        raise _refuse(
            problems,
            f"{label}.method: xmin reads which row versions a transaction wrote, and a "
            f"{relation.kind.replace('_', ' ')} has none of its own. Fix: use full_table, or select the tables "
            "it reads",
        )
    if not primary_key:
        raise _refuse(
            problems,
            f"{label}.method: xmin re-reads a row each time it changes and merges it by key, and this table has "
            "no primary key. Fix: add `primary_key: [columns]` (a unique, non-null set of columns) to the entry",
        )


def _check_log_based(
    label: str, relation: Relation, primary_key: tuple[str, ...], default_database: str, problems: list[str]
) -> None:
    """What log-based replication needs of the relation itself: a table, in the slot's database, with a key."""
    quoted = f"{quote_ident(relation.schema)}.{quote_ident(relation.name)}"
    if relation.kind not in LOG_KINDS:
        raise _refuse(
            problems,
            f"{label}.method: log_based reads the write-ahead log, which holds no changes for a "
            f"{relation.kind.replace('_', ' ')}. Fix: use full_table, or select the tables it reads",
        )
    if relation.database != default_database:
        raise _refuse(
            problems,
            f"{label}.method: a replication slot reads one database, the configured one "
            f"({default_database}). Fix: use full_table or key_based for tables of other databases",
        )
    if not primary_key:
        raise _refuse(
            problems,
            f"{label}: log_based needs a primary key to apply updates and deletes by. Fix: "
            f"`ALTER TABLE {quoted} ADD PRIMARY KEY (…);` at the source, or `ALTER TABLE {quoted} "
            "REPLICA IDENTITY FULL;` and `primary_key: [columns that identify a row]` here",
        )


def _columns(
    label: str,
    entry: dict[str, Any],
    relation: Relation,
    primary_key: tuple[str, ...],
    key: str | None,
    default_database: str,
    notices: list[str],
    problems: list[str],
) -> tuple[Column, ...]:
    """The selected columns (`columns:`, or all), with the key columns always in."""
    wanted = entry.get("columns")
    if wanted is None:
        return tuple(relation.columns)
    names = [str(c) for c in _as_list(wanted)]
    unknown = [c for c in names if relation.column(c) is None]
    for name in unknown:
        problems.append(_unknown_column(label + ".columns", name, relation))
    if unknown:
        raise _Refused(label)
    required = [*primary_key, *([key] if key else [])]
    for name in required:
        if name not in names:
            role = "replication-key" if name == key else "primary-key"
            notices.append(
                f"{display_name(relation, default_database)}: {role} column '{name}' is always "
                "replicated, so it was added to the selected columns"
            )
    keep = set(names) | set(required)
    return tuple(c for c in relation.columns if c.name in keep)


def _entry_options(
    label: str, entry: dict[str, Any], relation: Relation, default_database: str, problems: list[str]
) -> tuple[str, str | None, int]:
    """The destination table's name, the time-window granularity and the chunk size; the schedule is checked."""
    destination = str(
        entry.get("destination_table")
        or destination_table_name(relation.database, relation.schema, relation.name, default_database)
    )
    if len(destination.encode()) > MAX_IDENTIFIER:
        raise _refuse(
            problems,
            f"{label}: destination table name '{destination}' is longer than {MAX_IDENTIFIER} bytes. "
            "Fix: set a shorter `destination_table:`",
        )
    granularity = str(entry["granularity"]) if entry.get("granularity") else None
    if granularity is not None and granularity not in GRANULARITIES:
        raise _refuse(problems, f"{label}.granularity: '{granularity}' is not one of {', '.join(GRANULARITIES)}")
    chunk_rows = entry.get("chunk_rows") or DEFAULT_CHUNK_ROWS
    if not isinstance(chunk_rows, int) or chunk_rows < 1000:
        raise _refuse(problems, f"{label}.chunk_rows: expected a whole number of at least 1000, got {chunk_rows!r}")
    if entry.get("schedule") is not None:
        try:
            parse_frequency(entry["schedule"], key=f"{label}.schedule")
        except FrequencyError as exc:
            raise _refuse(problems, str(exc)) from None
    return destination, granularity, chunk_rows


def _unknown_column(label: str, name: str, relation: Relation) -> str:
    names = [c.name for c in relation.columns]
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return (
        f"{label}: no column '{name}' in {relation.qualified_name} (columns: {', '.join(names)}).{hint} "
        "Fix: correct the column name, or run `rds-pipeline discover` if it was just added"
    )


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


INTEGER_TYPES = ("smallint", "integer", "bigint")


def chunkable_key(relation: Relation) -> str | None:
    """The single integer primary-key column a full-table sync can be chunked by, if there is one."""
    if len(relation.primary_key) != 1:
        return None
    column = relation.column(relation.primary_key[0])
    if column is None:
        return None
    base = column.base_type if column.kind == "domain" else column.type
    return column.name if base in INTEGER_TYPES else None


def stats_wanted(entries: list[Any], default_database: str) -> Callable[[list[Relation]], list[tuple[Relation, str]]]:
    """For discovery: which (relation, column) min/max to collect for the selected tables."""

    def wanted(found: list[Relation]) -> list[tuple[Relation, str]]:
        catalog = Catalog(found, sorted({r.database for r in found}))
        pairs: list[tuple[Relation, str]] = []
        for entry in entries:
            data = entry if isinstance(entry, dict) else {"name": entry}
            name = data.get("name")
            if not name:
                continue
            for relation in find_relation(catalog, str(name), default_database):
                if data.get("method") == "key_based" and data.get("replication_key"):
                    if relation.column(str(data["replication_key"])) is not None:
                        pairs.append((relation, str(data["replication_key"])))
                elif (key := chunkable_key(relation)) is not None:
                    pairs.append((relation, key))
        return pairs

    return wanted
