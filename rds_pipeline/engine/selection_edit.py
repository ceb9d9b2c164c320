"""``rds-pipeline select``: edit ``tables:`` in rds_pipeline.yaml, keeping its comments and order."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from rds_pipeline.engine.config import quote_env_refs
from rds_pipeline.engine.errors import RdsPipelineError
from rds_pipeline.engine.selection import SelectedTable, find_relation, resolve_selection
from rds_pipeline.engine.source.catalog import Catalog


def _yaml() -> YAML:
    yaml = YAML()  # round-trip: comments, order and styles survive
    yaml.preserve_quotes = True
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def edit_selection(
    config_path: Path,
    catalog: Catalog,
    default_database: str,
    name: str,
    *,
    method: str | None = None,
    replication_key: str | None = None,
    columns: list[str] | None = None,
    remove: bool = False,
) -> list[SelectedTable]:
    """Add, change or remove one entry; validate the whole selection first, and write nothing if it fails."""
    yaml = _yaml()
    document = yaml.load(quote_env_refs(config_path.read_text(encoding="utf-8")))
    tables = document.get("tables")
    if tables is None:
        tables = CommentedSeq()
        document["tables"] = tables
    index = _find(tables, name, catalog, default_database)
    if remove:
        if index is None:
            raise RdsPipelineError(
                f"{name} is not selected; nothing to remove. Fix: `rds-pipeline tables` lists the selection"
            )
        del tables[index]
    else:
        entry: Any = tables[index] if index is not None else CommentedMap([("name", name)])
        if isinstance(entry, str):
            entry = CommentedMap([("name", entry)])
        if method:
            entry["method"] = method
            if method != "key_based":
                entry.pop("replication_key", None)
        if replication_key:
            entry["replication_key"] = replication_key
        if columns is not None:
            if columns:
                entry["columns"] = CommentedSeq(columns)
                entry["columns"].fa.set_flow_style()
            else:
                entry.pop("columns", None)
        if index is None:
            tables.append(entry)
        else:
            tables[index] = entry
    selected = resolve_selection(list(_plain(tables)), catalog, default_database)
    buffer = io.StringIO()
    yaml.dump(document, buffer)
    tmp = config_path.with_name(config_path.name + ".tmp")
    tmp.write_text(buffer.getvalue(), encoding="utf-8")
    os.replace(tmp, config_path)
    return selected


def _find(tables: list[Any], name: str, catalog: Catalog, default_database: str) -> int | None:
    wanted = {r.id for r in find_relation(catalog, name, default_database)}
    for index, entry in enumerate(tables):
        entry_name = entry if isinstance(entry, str) else entry.get("name")
        if entry_name == name or (
            entry_name and {r.id for r in find_relation(catalog, str(entry_name), default_database)} & wanted
        ):
            return index
    return None


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
