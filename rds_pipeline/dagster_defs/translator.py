"""Names: asset keys, groups and partition-set names derived from PostgreSQL identifiers.

Dagster names (ops, inputs it derives from asset keys, groups) allow ``[A-Za-z0-9_]`` only, while a
PostgreSQL identifier may hold quotes, spaces, semicolons, dots, unicode and up to 63 bytes. ``key_part``
keeps a valid name as it is, and otherwise spells it in ASCII with underscores plus 8 hex digits of a hash
of the original, so ``Order Items`` (``Order_Items_1b2c…``) never collides with ``Order_Items``, and the
same name gives the same key on every load. The real names stay in the metadata.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

import dagster as dg

from rds_pipeline.engine.selection import SelectedTable
from rds_pipeline.engine.source.catalog import Relation

SOURCE_GROUP = "rds_source"
POOL = "rds_source"
# for what the engine did not absorb (it retries transient errors per range; a failed table is reported with
# its fix and not retried): e.g. the destination down when the step starts
RETRY_POLICY = dg.RetryPolicy(max_retries=2, delay=15, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS)
_VALID = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def key_part(name: str) -> str:
    """A valid, readable, stable and collision-free Dagster name for one identifier."""
    if _VALID.fullmatch(name):
        return name
    ascii_text = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    readable = re.sub(r"[^0-9A-Za-z]+", "_", ascii_text).strip("_")[:60] or "x"
    if readable[0].isdigit():
        readable = f"_{readable}"
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    return f"{readable}_{digest}"


def replica_key(schema: str, table: SelectedTable) -> dg.AssetKey:
    """``[<destination schema>, <destination table>]``."""
    return dg.AssetKey([key_part(schema), key_part(table.destination_table)])


def source_key_for(relation: Relation) -> dg.AssetKey:
    """``["source", <database>, <schema>, <name>]`` for the external source relation."""
    return dg.AssetKey(["source", key_part(relation.database), key_part(relation.schema), key_part(relation.name)])


def group_name(table: SelectedTable, default_database: str) -> str:
    """One group per source schema (prefixed by the database when it is not the configured one)."""
    relation = table.relation
    if relation.database == default_database:
        return key_part(relation.schema)
    return f"{key_part(relation.database)}__{key_part(relation.schema)}"


def dynamic_partitions_name(table: SelectedTable) -> str:
    relation = table.relation
    return f"rds_{key_part(relation.database)}__{key_part(relation.schema)}__{key_part(relation.name)}"
