"""Drift: how the live source differs from the cached catalog (tables, columns, types, primary keys)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from rds_pipeline.engine.config import SourceConfig
from rds_pipeline.engine.source.catalog import Catalog, Relation
from rds_pipeline.engine.source.discovery import discover


@dataclass(frozen=True)
class Change:
    relation: str  # database.schema.name
    kind: str  # table_added, table_removed, column_added, column_removed, type_changed, primary_key_changed
    detail: str

    def __str__(self) -> str:
        return f"{self.relation}: {self.detail}"


@dataclass
class DriftReport:
    changes: list[Change] = field(default_factory=list)

    @property
    def drifted(self) -> bool:
        return bool(self.changes)

    def for_relation(self, relation_id: str) -> list[Change]:
        return [c for c in self.changes if c.relation == relation_id]

    def lines(self) -> list[str]:
        return [str(c) for c in self.changes] or ["No drift: the source matches the catalog."]


def compare(cached: Catalog, live: Catalog, only: Iterable[str] | None = None) -> DriftReport:
    """Changes from ``cached`` to ``live``; ``only`` limits them to those relation ids (e.g. the selection)."""
    wanted = set(only) if only is not None else None
    before, after = cached.by_id(), live.by_id()
    report = DriftReport()
    for rid in sorted(set(before) | set(after)):
        if wanted is not None and rid not in wanted:
            continue
        old, new = before.get(rid), after.get(rid)
        if old is None and new is not None:
            report.changes.append(Change(rid, "table_added", f"new {new.kind.replace('_', ' ')}"))
        elif new is None and old is not None:
            report.changes.append(Change(rid, "table_removed", f"{old.kind.replace('_', ' ')} no longer exists"))
        elif old is not None and new is not None:
            report.changes.extend(_column_changes(old, new))
    return report


def _column_changes(old: Relation, new: Relation) -> list[Change]:
    changes: list[Change] = []
    old_cols = {c.name: c for c in old.columns}
    new_cols = {c.name: c for c in new.columns}
    for name, column in new_cols.items():
        if name not in old_cols:
            changes.append(Change(new.id, "column_added", f"column '{name}' ({column.type}) added"))
        elif old_cols[name].type != column.type:
            changes.append(
                Change(new.id, "type_changed", f"column '{name}' changed type {old_cols[name].type} -> {column.type}")
            )
    for name in old_cols:
        if name not in new_cols:
            changes.append(Change(new.id, "column_removed", f"column '{name}' removed"))
    if old.primary_key != new.primary_key:
        changes.append(
            Change(
                new.id,
                "primary_key_changed",
                f"primary key changed ({', '.join(old.primary_key) or 'none'}) -> "
                f"({', '.join(new.primary_key) or 'none'})",
            )
        )
    return changes


def check_drift(config: SourceConfig, cached: Catalog, only: Iterable[str] | None = None) -> DriftReport:
    """Discover the live source (the databases in the cached catalog) and compare; never rewrites the catalog."""
    live = discover(config, databases=cached.databases or None)
    return compare(cached, live, only)
