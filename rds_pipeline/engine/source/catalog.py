"""The catalog: what discovery found, as plain data, saved to a deterministic, sorted, diff-friendly JSON file.

The Dagster code location reads this file and never touches the source at load time. We chose a plain file
written by ``rds-pipeline discover`` over Dagster's StateBackedComponent: the file is reviewed and committed
with the code (a schema change shows up as a diff in a pull request), the CLI, the drift check and the code
location share it without a running Dagster instance, and loading it is one ``json.load``.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rds_pipeline.engine.errors import RdsPipelineError

CATALOG_VERSION = 1
RELATION_KINDS = ("table", "partitioned_table", "view", "materialized_view", "foreign_table")


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # format_type(): the exact declared type, e.g. "numeric(5,2)", "text[]", "mpaa_rating"
    nullable: bool
    default: str | None = None
    kind: str = "base"  # base, array, enum, domain, range, multirange, composite, pseudo
    base_type: str | None = None  # a domain's base type, an array's element type
    category: str = "X"  # pg_type.typcategory of the (base) type: D datetime, N numeric, S string, A array, ...


@dataclass(frozen=True)
class Relation:
    database: str
    schema: str
    name: str
    kind: str
    columns: tuple[Column, ...]
    primary_key: tuple[str, ...] = ()
    primary_key_inferred: bool = False  # partitioned table: the leaves' common key plus the partition key
    replication_key_candidates: tuple[str, ...] = ()
    indexed_columns: tuple[str, ...] = ()
    row_estimate: int | None = None
    size_bytes: int | None = None
    comment: str | None = None
    reads: tuple[str, ...] = ()  # for views: "schema.name" of the relations it reads (same database)
    can_select: bool = True
    partitions: int = 0
    key_stats: tuple[tuple[str, str | None, str | None], ...] = ()  # (column, min, max) of selected keys

    def stats_for(self, column: str) -> tuple[str | None, str | None]:
        for name, low, high in self.key_stats:
            if name == column:
                return low, high
        return None, None

    @property
    def id(self) -> str:
        return f"{self.database}.{self.schema}.{self.name}"

    @property
    def qualified_name(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def is_view(self) -> bool:
        return self.kind in ("view", "materialized_view")

    def column(self, name: str) -> Column | None:
        return next((c for c in self.columns if c.name == name), None)


_COLUMN_FIELDS = fields(Column)


@dataclass
class Catalog:
    relations: list[Relation] = field(default_factory=list)
    databases: list[str] = field(default_factory=list)
    server_version: str | None = None

    def by_id(self) -> dict[str, Relation]:
        return {r.id: r for r in self.relations}

    def sorted(self) -> Catalog:
        return Catalog(
            relations=sorted(self.relations, key=lambda r: (r.database, r.schema, r.name)),
            databases=sorted(set(self.databases)),
            server_version=self.server_version,
        )

    # -- file format ---------------------------------------------------------------------------------------
    def to_json(self) -> str:
        """One line per relation header and one line per column: a column change is a one-line diff.

        (``json.dumps(indent=...)`` would do the same layout, but with Python's slow encoder: 10k tables
        took 2.5 s that way; compact lines use the C encoder.)"""
        ordered = self.sorted()
        dump = functools.partial(json.dumps, ensure_ascii=False, sort_keys=True)
        out = [
            "{",
            f' "catalog_version": {CATALOG_VERSION},',
            f' "databases": {dump(ordered.databases)},',
            f' "server_version": {dump(ordered.server_version)},',
            ' "relations": [',
        ]
        for index, relation in enumerate(ordered.relations):
            header = _relation_dict(relation)
            columns = header.pop("columns")
            head = dump(header)[:-1]
            out.append(f'  {head}, "columns": [')
            out.append(",\n".join(f"   {dump(c)}" for c in columns))
            out.append("  ]}" + ("," if index < len(ordered.relations) - 1 else ""))
        out.append(" ]")
        out.append("}")
        return "\n".join(out) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Catalog:
        data = json.loads(text)
        if data.get("catalog_version") != CATALOG_VERSION:
            raise RdsPipelineError(
                f"the catalog's catalog_version {data.get('catalog_version')} is not {CATALOG_VERSION}. "
                "Fix: run `rds-pipeline discover` to rewrite it"
            )
        relations = []
        for raw in data["relations"]:
            columns = tuple(Column(**c) for c in raw.pop("columns"))
            for key in ("primary_key", "replication_key_candidates", "indexed_columns", "reads"):
                raw[key] = tuple(raw.get(key) or ())
            raw["key_stats"] = tuple(tuple(item) for item in raw.get("key_stats") or ())
            relations.append(Relation(columns=columns, **raw))
        return cls(relations, list(data.get("databases") or []), data.get("server_version"))

    def save(self, path: Path) -> None:
        """Write atomically: a reader never sees a half-written catalog."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json(), encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> Catalog:
        if not path.is_file():
            raise RdsPipelineError(f"catalog {path} not found. Fix: run `rds-pipeline discover` first")
        return cls.from_json(path.read_text(encoding="utf-8"))


def _relation_dict(relation: Relation) -> dict[str, Any]:
    data = {f.name: getattr(relation, f.name) for f in fields(Relation)}  # asdict() deep-copies: 10x slower
    data["columns"] = [{f.name: getattr(c, f.name) for f in _COLUMN_FIELDS} for c in relation.columns]
    return data
