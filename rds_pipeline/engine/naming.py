"""Destination names: the schema is the integration name in snake case; table names are unique by rule.

Table rule (stable: adding a table never renames another):
- a relation in the configured database's ``public`` schema keeps its name: ``public.customer`` -> ``customer``;
- one in another schema of that database gets the schema as prefix: ``legacy.rental`` -> ``legacy__rental``;
- one in another database gets database and schema: ``crm.public.lead`` -> ``crm__public__lead``.
Names keep their case and characters (they are always quoted). A per-table ``destination_table`` overrides
the rule, and two selected tables that would share a name are refused.
"""

from __future__ import annotations

import hashlib
import re

from rds_pipeline.engine.errors import ConfigError

MAX_IDENTIFIER = 63  # PostgreSQL truncates longer identifiers, which would make names collide silently


def snake_case(name: str) -> str:
    """``"Stitch Amazon PostgreSQL RDS"`` -> ``"stitch_amazon_postgresql_rds"``."""
    text = re.sub(r"[^0-9a-z]+", "_", name.strip().lower()).strip("_")
    if not text:
        raise ConfigError(
            [
                f"integration_name: {name!r} has no letters or digits to build a schema name from. Fix: name the "
                "integration with letters or digits, e.g. `integration_name: Amazon RDS replica`"
            ]
        )
    if text[0].isdigit():
        text = f"i_{text}"
    return text[:MAX_IDENTIFIER]


def destination_table_name(database: str, schema: str, table: str, default_database: str) -> str:
    if database != default_database:
        return f"{database}__{schema}__{table}"
    if schema != "public":
        return f"{schema}__{table}"
    return table


def slot_name(schema: str) -> str:
    """A replication slot (and publication) name for an integration: slot names allow only ``[a-z0-9_]``, so
    anything else becomes ``_``, plus a short hash when that changed the name (two schemas never share a slot)."""
    clean = re.sub(r"[^a-z0-9_]", "_", schema.lower())
    if clean != schema:
        clean = f"{clean[:40]}_{hashlib.sha256(schema.encode()).hexdigest()[:8]}"
    return f"rds_pipeline_{clean}"[:MAX_IDENTIFIER]
