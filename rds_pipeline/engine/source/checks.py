"""``rds-pipeline check``: is the source ready for this selection? Each finding has a severity and the fix,
as the exact statement to run."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import psycopg2.extensions

from rds_pipeline.engine.config import IntegrationConfig
from rds_pipeline.engine.core.rows import one
from rds_pipeline.engine.quoting import quote_ident
from rds_pipeline.engine.selection import SelectedTable
from rds_pipeline.engine.source.catalog import Relation
from rds_pipeline.engine.source.connection import connect_source, open_tunnel
from rds_pipeline.engine.source.diagnostics import MIN_SERVER_VERSION_NUM, inspect_connection, standby_advice
from rds_pipeline.engine.source.discovery import discover_database
from rds_pipeline.engine.source.logical import (
    IDENTITIES,
    publication_facts,
    readiness,
    replica_facts,
    replica_findings,
)

# A deliberately pessimistic read rate for a production source, to size statement_timeout.
ASSUMED_READ_BYTES_PER_SECOND = 20 * 1024 * 1024
SEVERITIES = ("error", "warning", "ok")


@dataclass(frozen=True)
class Finding:
    severity: str  # error, warning, ok
    subject: str
    message: str
    fix: str | None = None

    def lines(self) -> list[str]:
        out = [f"[{self.severity.upper():7}] {self.subject}: {self.message}"]
        if self.fix:
            out.extend(f"          fix: {line}" for line in self.fix.splitlines())
        return out


def run_checks(config: IntegrationConfig, selection: list[SelectedTable]) -> list[Finding]:
    """Connect to each database of the selection (one connection each, one tunnel) and check it."""
    by_database: dict[str, list[SelectedTable]] = defaultdict(list)
    for table in selection:
        by_database[table.relation.database].append(table)
    by_database.setdefault(config.source.database, [])
    findings: list[Finding] = []
    tunnel = open_tunnel(config.source)
    try:
        for database in sorted(by_database, key=lambda d: d != config.source.database):
            conn = connect_source(config.source, tunnel, database=database)
            try:
                findings.extend(
                    check_database(
                        conn, config, database, by_database[database], server_checks=database == config.source.database
                    )
                )
            finally:
                conn.close()
    finally:
        if tunnel is not None:
            tunnel.close()
    return sorted(findings, key=lambda f: SEVERITIES.index(f.severity))


def check_database(
    conn: psycopg2.extensions.connection,
    config: IntegrationConfig,
    database: str,
    tables: list[SelectedTable],
    server_checks: bool = True,
) -> list[Finding]:
    """The user's rights in one database, its schemas and selected tables (and the server, once)."""
    findings: list[Finding] = []
    facts = inspect_connection(conn)
    with conn.cursor() as cur:
        cur.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user")
        user, superuser = one(cur.fetchone())
        cur.execute("SELECT has_database_privilege(current_database(), 'CONNECT')")
        can_connect = one(cur.fetchone())[0]
    quser = quote_ident(user)
    if server_checks:
        findings.extend(_server_findings(facts, superuser, user))
    findings.append(
        Finding("ok", f"database {database}", "CONNECT granted")
        if can_connect
        else Finding(
            "error",
            f"database {database}",
            f"{user} lacks CONNECT",
            f"GRANT CONNECT ON DATABASE {quote_ident(database)} TO {quser};",
        )
    )
    if not tables:
        conn.rollback()
        return findings
    live = {(r.schema, r.name): r for r in discover_database(conn, database)}
    schema_rows, can_select = _schema_and_table_rights(conn, tables)
    for row in schema_rows:
        findings.extend(_schema_findings(database, row, user, superuser))
    for table in tables:
        name = (table.relation.schema, table.relation.name)
        findings.extend(
            _table_findings(table, live.get(name), can_select.get(name), quser, config.source.statement_timeout_seconds)
        )
    logged = [t for t in tables if t.method == "log_based"]
    if logged and server_checks:
        findings.extend(log_based_findings(conn, config, logged, user))
    return findings


def _schema_and_table_rights(
    conn: psycopg2.extensions.connection, tables: list[SelectedTable]
) -> tuple[list[tuple[Any, ...]], dict[tuple[str, str], bool]]:
    """Per selected schema: exists, USAGE, a default SELECT grant, its main owner; per table: SELECT."""
    schemas = sorted({t.relation.schema for t in tables})
    with conn.cursor() as cur:
        cur.execute(
            """
            SELECT s.name, n.oid IS NOT NULL, coalesce(has_schema_privilege(n.oid, 'USAGE'), false),
                   EXISTS (SELECT 1 FROM pg_default_acl a, aclexplode(a.defaclacl) x
                           WHERE a.defaclobjtype = 'r' AND a.defaclnamespace IN (n.oid, 0)
                             AND x.grantee = (SELECT oid FROM pg_roles WHERE rolname = current_user)
                             AND x.privilege_type = 'SELECT'),
                   (SELECT pg_get_userbyid(c.relowner) FROM pg_class c
                    WHERE c.relnamespace = n.oid AND c.relkind IN ('r', 'p')
                    GROUP BY c.relowner ORDER BY count(*) DESC LIMIT 1)
            FROM unnest(%s::text[]) AS s(name) LEFT JOIN pg_namespace n ON n.nspname = s.name
            """,
            (schemas,),
        )
        schema_rows = cur.fetchall()
        cur.execute(
            """
            SELECT w.s, w.t, has_table_privilege(c.oid, 'SELECT')
            FROM unnest(%s::text[], %s::text[]) AS w(s, t)
            JOIN pg_namespace n ON n.nspname = w.s
            JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = w.t
            """,
            ([t.relation.schema for t in tables], [t.relation.name for t in tables]),
        )
        can_select = {(s, t): bool(ok) for s, t, ok in cur.fetchall()}
    conn.rollback()
    return schema_rows, can_select


def _schema_findings(database: str, row: tuple[Any, ...], user: str, superuser: bool) -> list[Finding]:
    schema, exists, usage, default_select, owner = row
    subject = f"schema {database}.{schema}"
    if not exists:
        return [Finding("error", subject, "does not exist", "run `rds-pipeline discover` and fix `tables:`")]
    quser = quote_ident(user)
    found = [
        Finding("ok", subject, "USAGE granted")
        if usage or superuser
        else Finding(
            "error", subject, f"{user} lacks USAGE", f"GRANT USAGE ON SCHEMA {quote_ident(schema)} TO {quser};"
        )
    ]
    if default_select or superuser:
        found.append(Finding("ok", subject, "default privileges grant SELECT on future tables"))
    else:
        for_role = f" FOR ROLE {quote_ident(owner)}" if owner and owner != user else ""
        found.append(
            Finding(
                "warning",
                subject,
                "no default privileges: tables created later will not be readable by " + user,
                f"ALTER DEFAULT PRIVILEGES{for_role} IN SCHEMA {quote_ident(schema)} GRANT SELECT ON "
                f"TABLES TO {quser};",
            )
        )
    return found


def log_based_findings(
    conn: psycopg2.extensions.connection, config: IntegrationConfig, tables: list[SelectedTable], user: str
) -> list[Finding]:
    """wal_level, the replication right, each table's replica identity, and a bound on the WAL a slot holds."""
    ready = readiness(conn, tables)
    published = publication_facts(conn, config.publication_name, tables)
    publication = published.problems(tables) if published is not None else []
    problems: dict[str, tuple[str | None, str | None]] = {}
    for subject, first, remedy in ready.problems(tables, user, published):  # a table's first problem is shown
        problems.setdefault(subject, (first, remedy))
    for table_id, problem, remedy in publication:  # a table's own replica-identity problem is shown first
        if table_id in {t.id for t in tables}:
            problems.setdefault(table_id, (problem, remedy))
    findings = []
    for subject, ok in (("wal_level", "is logical"), (f"user {user}", "may create and read replication slots")):
        what, fix = problems.pop(subject, (None, None))
        findings.append(Finding("error", subject, what, fix) if what else Finding("ok", subject, ok))
    findings.extend(Finding("error", s, w, f) for s, w, f in publication if s.startswith("publication "))
    for table in tables:
        what, fix = problems.pop(table.id, (None, None))
        identity = IDENTITIES.get(ready.identities.get(table.id, ("?", False))[0], "unknown")
        computed = [c.name for c in ready.not_streamed(table.id, published)]
        generated = (
            f"; the generated column(s) {', '.join(computed)} are not in the stream: the source computes them "
            "for each changed row"
            if computed
            else ""
        )
        findings.append(
            Finding("error", table.id, what, fix)
            if what
            else Finding("ok", table.id, f"replica identity {identity}: updates and deletes can be streamed{generated}")
        )
    for severity, subject, what, fix in replica_findings(replica_facts(conn, config.slot_name), config.slot_name):
        findings.append(Finding(severity, subject, what, fix))
    if ready.max_slot_wal_keep_size_mb < 0:
        setting = (
            "in the DB parameter group (no reboot needed)"
            if ready.rds
            else "with ALTER SYSTEM SET max_slot_wal_keep_size = '…'; SELECT pg_reload_conf();"
        )
        findings.append(
            Finding(
                "warning",
                "max_slot_wal_keep_size",
                "is unlimited: a slot nobody reads keeps WAL until the disk is full",
                f"set max_slot_wal_keep_size {setting}, e.g. to a quarter of the free storage; a slot "
                f"that falls further behind is invalidated instead (the next sync says so and copies "
                f"the tables again). Watch it with `rds-pipeline cdc status`",
            )
        )
    else:
        findings.append(
            Finding(
                "ok", "max_slot_wal_keep_size", f"{ready.max_slot_wal_keep_size_mb} MB bounds the WAL a slot can hold"
            )
        )
    return findings


def _server_findings(facts: dict[str, object], superuser: bool, user: str) -> list[Finding]:
    findings: list[Finding] = []
    version, number = facts["server_version"], int(facts["server_version_num"])  # type: ignore[call-overload]
    if number < MIN_SERVER_VERSION_NUM:
        findings.append(
            Finding(
                "error",
                "server",
                f"PostgreSQL {version} is not supported (12 or newer needed)",
                "upgrade the instance (on RDS: Modify > DB engine version)",
            )
        )
    else:
        findings.append(Finding("ok", "server", f"PostgreSQL {version} is supported"))
    if superuser:
        findings.append(
            Finding(
                "warning",
                "user",
                f"{user} is a superuser; replication needs only SELECT",
                "create a least-privilege user: `rds-pipeline grants --user stitch --password-prompt`",
            )
        )
    if facts["in_recovery"]:
        settings = facts["settings"]
        assert isinstance(settings, list)
        millis = {name: int(value) for name, value, unit in settings if unit == "ms"}
        hot = next((value for name, value, _ in settings if name == "hot_standby"), "on")
        for advice in standby_advice(millis, hot):
            name = advice.split(" ", 1)[0]
            findings.append(
                Finding(
                    "warning",
                    "read replica",
                    advice,
                    f"set {name} = 28800000 in the replica's parameter group during historical syncs"
                    if name.startswith("max_standby")
                    else "set hot_standby = on",
                )
            )
        findings.append(Finding("ok", "read replica", "reads come from a hot standby, not the primary"))
    return findings


def _table_findings(
    table: SelectedTable,
    live: Relation | None,
    can_select: bool | None,
    quser: str,
    timeout_seconds: int,
) -> list[Finding]:
    relation = table.relation
    subject = relation.id
    qname = f"{quote_ident(relation.schema)}.{quote_ident(relation.name)}"
    if live is None or can_select is None:
        return [
            Finding(
                "error",
                subject,
                "selected, but it no longer exists at the source",
                "run `rds-pipeline discover`, then remove or rename the entry in `tables:`",
            )
        ]
    findings: list[Finding] = []
    if can_select:
        findings.append(Finding("ok", subject, "SELECT granted"))
    else:
        findings.append(Finding("error", subject, "no SELECT privilege", f"GRANT SELECT ON TABLE {qname} TO {quser};"))
    if table.method == "key_based" and table.replication_key:
        if table.replication_key in live.indexed_columns:
            findings.append(Finding("ok", subject, f"replication key {table.replication_key} is indexed"))
        else:
            concurrently = "" if relation.kind == "partitioned_table" else " CONCURRENTLY"
            findings.append(
                Finding(
                    "warning",
                    subject,
                    f"replication key {table.replication_key} is not the leading column of any index, so every "
                    "sync scans the whole table",
                    f"CREATE INDEX{concurrently} ON {qname} ({quote_ident(table.replication_key)});",
                )
            )
    size = live.size_bytes or 0
    if timeout_seconds and size:
        needed = size / ASSUMED_READ_BYTES_PER_SECOND
        if needed > timeout_seconds:
            findings.append(
                Finding(
                    "warning",
                    subject,
                    f"{size / 2**30:.1f} GiB may take ~{needed:.0f}s to read in one statement, longer than "
                    f"statement_timeout ({timeout_seconds}s)",
                    f"source.statement_timeout_seconds: {int(needed * 2)}   # in rds_pipeline.yaml; or sync it "
                    "in partitions (the Dagster layer does)",
                )
            )
    return findings
