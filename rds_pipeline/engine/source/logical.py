"""What the source offers log-based replication, read and never changed: ``wal_level``, the right to use slots,
the WAL a slot may hold, and each table's replica identity. ``check`` reports it; the log-based flow refuses to
start without it (``replication/cdc/setup.py``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import psycopg2.extensions
from psycopg2 import sql

from rds_pipeline.engine.core.rows import one
from rds_pipeline.engine.quoting import quote_ident
from rds_pipeline.engine.selection import SelectedTable

IDENTITIES = {"d": "default", "n": "nothing", "f": "full", "i": "index"}
PUBLISHES_GENERATED = 180000  # publish_generated_columns (stored ones only) came with PostgreSQL 18


@dataclass(frozen=True)
class GeneratedColumn:
    """A generated column: its expression (``pg_get_expr``) over the columns it reads."""

    name: str
    expression: str
    virtual: bool  # PostgreSQL 18's default kind: computed on read, never stored, never published
    inputs: tuple[str, ...]


@dataclass(frozen=True)
class RowShape:
    """A table's row type as the source has it now: every column in order, and the generated ones."""

    fields: tuple[str, ...]
    generated: tuple[GeneratedColumn, ...]


def row_shapes(conn: psycopg2.extensions.connection, names: list[str]) -> dict[str, RowShape]:
    """Per quoted ``schema.table`` that has generated columns, its row shape (PostgreSQL 12+: attgenerated)."""
    if not names:
        return {}
    with conn.cursor() as cur:
        cur.execute(
            "SELECT w.name, a.attname, a.attgenerated, pg_get_expr(d.adbin, d.adrelid), "
            "(SELECT array_agg(r.attname::text ORDER BY r.attnum) FROM pg_depend p JOIN pg_attribute r "
            " ON r.attrelid = p.refobjid AND r.attnum = p.refobjsubid WHERE p.classid = 'pg_attrdef'::regclass "
            " AND p.objid = d.oid AND p.refobjid = a.attrelid AND p.refobjsubid > 0) "
            "FROM unnest(%s::text[]) WITH ORDINALITY AS w(name, i) "
            "JOIN pg_attribute a ON a.attrelid = to_regclass(w.name) AND a.attnum > 0 AND NOT a.attisdropped "
            "LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum "
            "ORDER BY w.i, a.attnum",
            (names,),
        )
        rows = cur.fetchall()
    conn.rollback()
    fields: dict[str, list[str]] = {}
    generated: dict[str, list[GeneratedColumn]] = {}
    for name, column, kind, expression, inputs in rows:
        fields.setdefault(name, []).append(column)
        if kind in ("s", "v"):
            generated.setdefault(name, []).append(GeneratedColumn(column, expression, kind == "v", tuple(inputs or ())))
    return {name: RowShape(tuple(fields[name]), tuple(found)) for name, found in generated.items()}


def qualified(table: SelectedTable) -> str:
    return f"{quote_ident(table.relation.schema)}.{quote_ident(table.relation.name)}"


@dataclass(frozen=True)
class Readiness:
    wal_level: str
    rds: bool  # the rds.logical_replication setting exists (Amazon RDS or Aurora)
    can_replicate: bool  # superuser, REPLICATION or rds_replication
    max_slot_wal_keep_size_mb: int  # -1: no limit
    identities: dict[str, tuple[str, bool]]  # table id -> (relreplident, has a primary key)
    server_version: int = 0
    shapes: dict[str, RowShape] = field(default_factory=dict)  # table id -> its row, when it has generated columns

    def problems(
        self, tables: list[SelectedTable], user: str, published: PublicationFacts | None = None
    ) -> list[tuple[str, str, str]]:
        """(subject, what is wrong, the fix) for each blocker. ``published``: the publication as it exists (None:
        it does not yet, and is created publishing stored generated columns where the server can)."""
        found = []
        if self.wal_level != "logical":
            fix = (
                "set rds.logical_replication = 1 in the instance's DB parameter group, then reboot the instance"
                if self.rds
                else "ALTER SYSTEM SET wal_level = logical; -- then restart PostgreSQL"
            )
            found.append(("wal_level", f"is {self.wal_level}; log-based replication needs logical", fix))
        if not self.can_replicate:
            grant = (
                f"GRANT rds_replication TO {quote_ident(user)};"
                if self.rds
                else f"ALTER ROLE {quote_ident(user)} REPLICATION;"
            )
            found.append((f"user {user}", "may not create or read replication slots", grant))
        for table in tables:
            identity, has_pk = self.identities.get(table.id, ("?", False))
            name = qualified(table)
            if identity == "?":
                found.append((table.id, "is not in the source any more", "run `rds-pipeline discover`"))
                continue
            unsendable = self.unpublished(table.id, published)
            if identity == "n" or (identity == "d" and not has_pk):
                full = f"  -- or: ALTER TABLE {name} REPLICA IDENTITY FULL;" if not unsendable else ""
                found.append(
                    (
                        table.id,
                        f"has replica identity {IDENTITIES[identity]} and no primary key: adding it "
                        "to a publication would make its UPDATEs and DELETEs fail on the source",
                        f"ALTER TABLE {name} ADD PRIMARY KEY (…);{full}",
                    )
                )
            elif identity == "f" and unsendable:
                # PostgreSQL 18 refuses an UPDATE whose replica identity (the whole row) holds a column the
                # publication does not send: never add such a table, and never suggest FULL for it
                stored = [c for c in unsendable if not c.virtual]
                publish = (
                    f" -- or, as its generated columns are stored: ALTER PUBLICATION "
                    f"{quote_ident(published.name if published else '…')} SET (publish_generated_columns = stored);"
                    if stored == unsendable
                    else ""
                )
                found.append(
                    (
                        table.id,
                        f"has REPLICA IDENTITY FULL and the generated column(s) {', '.join(c.name for c in unsendable)}"
                        " that the publication does not send: once published, PostgreSQL 18 makes its UPDATEs fail "
                        "(Replica identity must not contain unpublished generated columns)",
                        f"ALTER TABLE {name} ADD PRIMARY KEY (…); ALTER TABLE {name} REPLICA IDENTITY DEFAULT;"
                        f"{publish}",
                    )
                )
            keyed = [c.name for c in self.not_streamed(table.id, published) if c.name in table.primary_key]
            if keyed:
                found.append(
                    (
                        table.id,
                        f"is keyed by the generated column(s) {', '.join(keyed)}, which the stream does not carry",
                        "set `primary_key:` for it in the selection to columns that are not generated",
                    )
                )
        return found

    def not_streamed(self, table_id: str, published: PublicationFacts | None) -> list[GeneratedColumn]:
        """The table's generated columns pgoutput leaves out: all before PostgreSQL 18; the virtual ones, and the
        stored ones unless the publication sets publish_generated_columns = stored, on 18."""
        shape = self.shapes.get(table_id)
        if shape is None:
            return []
        sends_stored = self.server_version >= PUBLISHES_GENERATED and (
            published is None or published.sends_stored_generated
        )
        return [c for c in shape.generated if c.virtual or not sends_stored]

    def unpublished(self, table_id: str, published: PublicationFacts | None) -> list[GeneratedColumn]:
        """The generated columns that make an UPDATE under REPLICA IDENTITY FULL fail once published (18+)."""
        if self.server_version < PUBLISHES_GENERATED:
            return []
        return self.not_streamed(table_id, published)


def readiness(conn: psycopg2.extensions.connection, tables: list[SelectedTable]) -> Readiness:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT current_setting('wal_level'), current_setting('rds.logical_replication', true) IS NOT NULL, "
            "r.rolsuper OR r.rolreplication OR pg_has_role(current_user, 'rds_replication', 'MEMBER') IS TRUE, "
            "current_setting('max_slot_wal_keep_size')::text FROM pg_roles r WHERE r.rolname = current_user"
            if _has_role(cur, "rds_replication")
            else "SELECT current_setting('wal_level'), current_setting('rds.logical_replication', true) IS NOT NULL, "
            "r.rolsuper OR r.rolreplication, current_setting('max_slot_wal_keep_size')::text "
            "FROM pg_roles r WHERE r.rolname = current_user"
        )
        wal_level, rds, can_replicate, keep = one(cur.fetchone())
        by_name = {qualified(t): t.id for t in tables}
        cur.execute(  # every table in one statement
            "SELECT w.name, c.relreplident, EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND "
            "i.indisprimary) FROM unnest(%s::text[]) AS w(name) JOIN pg_class c ON c.oid = to_regclass(w.name)",
            (list(by_name),),
        )
        identities = {by_name[name]: (identity, bool(keyed)) for name, identity, keyed in cur.fetchall()}
    conn.rollback()
    shapes = {by_name[name]: shape for name, shape in row_shapes(conn, list(by_name)).items()}
    return Readiness(
        wal_level, bool(rds), bool(can_replicate), _megabytes(keep), identities, conn.server_version, shapes
    )


def _has_role(cur: psycopg2.extensions.cursor, role: str) -> bool:
    cur.execute("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s)", (role,))
    return bool(one(cur.fetchone())[0])


def _megabytes(setting: str) -> int:
    """``max_slot_wal_keep_size`` as shown (``-1``, ``1024MB``, ``10GB``) in MB."""
    text = setting.strip()
    if text.startswith("-"):
        return -1
    units = {"kB": 1 / 1024, "MB": 1, "GB": 1024, "TB": 1024 * 1024}
    for unit, factor in units.items():
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * factor)
    return int(text)


PUBLISHED_OPERATIONS = ("insert", "update", "delete", "truncate")


@dataclass(frozen=True)
class PublicationFacts:
    """What an existing publication sends: an exact replica needs every operation, the partition root's name
    for a partitioned table, and each selected table whole (no row filter, no column list leaving one out)."""

    name: str
    missing_operations: tuple[str, ...]  # of PUBLISHED_OPERATIONS
    via_root: bool
    filters: dict[str, str]  # table id -> its row filter (PostgreSQL 15+)
    left_out: dict[str, tuple[str, ...]]  # table id -> selected columns its column list leaves out (15+)
    sends_stored_generated: bool = False  # publish_generated_columns = stored (PostgreSQL 18+)

    def problems(self, tables: list[SelectedTable]) -> list[tuple[str, str, str]]:
        """(subject, what is wrong, the fix): the publication itself (every table), or one table by id."""
        pub = quote_ident(self.name)
        found = []
        if self.missing_operations:
            every = ", ".join(PUBLISHED_OPERATIONS)
            found.append(
                (
                    f"publication {self.name}",
                    f"does not publish {', '.join(self.missing_operations)}: those changes would never reach "
                    "the replica",
                    f"ALTER PUBLICATION {pub} SET (publish = '{every}'); -- or set log_based.publication to a "
                    "publication of our own",
                )
            )
        partitioned = [t.id for t in tables if t.relation.kind == "partitioned_table"]
        if partitioned and not self.via_root:
            found.append(
                (
                    f"publication {self.name}",
                    f"has publish_via_partition_root = false: the changes of {', '.join(partitioned)} would "
                    "arrive under their partitions' names, which are not selected",
                    f"ALTER PUBLICATION {pub} SET (publish_via_partition_root = true);",
                )
            )
        for table in tables:
            name = qualified(table)
            readd = f"ALTER PUBLICATION {pub} DROP TABLE {name}; ALTER PUBLICATION {pub} ADD TABLE {name};"
            if table.id in self.filters:
                found.append(
                    (
                        table.id,
                        f"is published by {self.name} with the row filter WHERE {self.filters[table.id]}: changes "
                        "to other rows would never reach the replica",
                        readd,
                    )
                )
            elif table.id in self.left_out:
                found.append(
                    (
                        table.id,
                        f"is published by {self.name} with a column list that leaves out "
                        f"{', '.join(self.left_out[table.id])}: the replica would lose those values",
                        readd,
                    )
                )
        return found


def publication_facts(
    conn: psycopg2.extensions.connection, publication: str, tables: list[SelectedTable]
) -> PublicationFacts | None:
    """The existing publication's settings, and its filters on the selected tables (None: it does not exist)."""
    with conn.cursor() as cur:
        root_column = sql.SQL("pubviaroot" if conn.server_version >= 130000 else "true")  # PostgreSQL 13+
        generated = sql.SQL("pubgencols = 's'" if conn.server_version >= PUBLISHES_GENERATED else "false")
        cur.execute(
            sql.SQL(
                "SELECT oid, pubinsert, pubupdate, pubdelete, pubtruncate, {}, {} FROM pg_publication "
                "WHERE pubname = %s"
            ).format(root_column, generated),
            (publication,),
        )
        row = cur.fetchone()
        if row is None:
            conn.rollback()
            return None
        oid, *flags, via_root, sends_stored = row
        missing = tuple(op for op, on in zip(PUBLISHED_OPERATIONS, flags, strict=True) if not on)
        filters: dict[str, str] = {}
        left_out: dict[str, tuple[str, ...]] = {}
        if conn.server_version >= 150000 and tables:  # row filters and column lists came with PostgreSQL 15
            by_name = {qualified(t): t for t in tables}
            cur.execute(
                "SELECT w.name, pg_get_expr(p.prqual, p.prrelid), "
                "(SELECT array_agg(a.attname::text) FROM pg_attribute a "
                " WHERE a.attrelid = p.prrelid AND a.attnum = ANY(p.prattrs)) "
                "FROM unnest(%s::text[]) AS w(name) JOIN pg_publication_rel p "
                "ON p.prrelid = to_regclass(w.name) AND p.prpubid = %s",
                (list(by_name), oid),
            )
            for name, qual, attributes in cur.fetchall():
                table = by_name[name]
                if qual is not None:
                    filters[table.id] = qual
                if attributes is not None:
                    gone = tuple(c for c in table.column_names if c not in set(attributes))
                    if gone:
                        left_out[table.id] = gone
    conn.rollback()
    return PublicationFacts(publication, missing, bool(via_root), filters, left_out, bool(sends_stored))


DECODES_ON_STANDBY = 160000  # logical decoding on a hot standby came with PostgreSQL 16
FAILOVER_SLOTS = 170000  # failover slots, synchronized to standbys, came with 17


@dataclass(frozen=True)
class ReplicaFacts:
    """Where the slot lives, for the read-replica and failover advice of ``check``."""

    standby: bool
    server_version: int
    hot_standby_feedback: bool
    sync_replication_slots: bool | None  # a 17+ standby synchronizes the primary's failover slots
    synchronized_standby_slots: str | None  # a 17+ primary waits for these standbys before sending changes
    slot_failover: bool | None  # the slot exists and is a failover slot (17+); None: no slot, or before 17


def replica_facts(conn: psycopg2.extensions.connection, slot: str) -> ReplicaFacts:
    version = conn.server_version
    with conn.cursor() as cur:
        cur.execute("SELECT pg_is_in_recovery(), current_setting('hot_standby_feedback') = 'on'")
        standby, feedback = one(cur.fetchone())
        synced = waits = failover = None
        if version >= FAILOVER_SLOTS:
            cur.execute(
                "SELECT current_setting('sync_replication_slots') = 'on', "
                "current_setting('synchronized_standby_slots'), "
                "(SELECT failover FROM pg_replication_slots WHERE slot_name = %s)",
                (slot,),
            )
            synced, waits, failover = one(cur.fetchone())
    conn.rollback()
    return ReplicaFacts(bool(standby), version, bool(feedback), synced, waits or None, failover)


def replica_findings(facts: ReplicaFacts, slot: str) -> list[tuple[str, str, str, str | None]]:
    """(severity, subject, what, fix): a standby as the source, and whether a failover keeps the slot."""
    major = facts.server_version // 10000
    if facts.standby:
        if facts.server_version < DECODES_ON_STANDBY:
            return [
                (
                    "error",
                    "standby",
                    f"the source is a standby running PostgreSQL {major}, which cannot decode logical changes "
                    "(16+ can)",
                    "point source at the primary for log-based tables, or upgrade the replica to 16 or newer",
                )
            ]
        found: list[tuple[str, str, str, str | None]] = [
            (
                "ok",
                "standby",
                "the source is a standby: snapshots and the stream read it, and the primary carries only its WAL. "
                "The heartbeat cannot be written here; lag is measured against the replay position",
                None,
            )
        ]
        if not facts.hot_standby_feedback:
            found.append(
                (
                    "warning",
                    "hot_standby_feedback",
                    "is off: the primary's VACUUM may remove rows a slot here still needs, and the server then "
                    "invalidates the slot (rows_removed); the next sync copies every log-based table again",
                    "set hot_standby_feedback = on in the replica's parameter group (a self-managed replica also "
                    "wants a physical slot on the primary: primary_slot_name)",
                )
            )
        if facts.server_version >= FAILOVER_SLOTS and facts.sync_replication_slots:
            found.append(
                (
                    "ok",
                    "failover",
                    "this standby synchronizes the primary's failover slots; a slot made here is its own and is lost "
                    "if the standby is promoted (the tables are then copied again)",
                    None,
                )
            )
        return found
    if facts.server_version < FAILOVER_SLOTS:
        return [
            (
                "ok",
                "failover",
                f"PostgreSQL {major} has no failover slots: after a failover the new primary has no slot "
                "and the next sync copies every log-based table again (on_slot_lost: resnapshot)",
                None,
            )
        ]
    found = []
    if facts.slot_failover is False:
        found.append(
            (
                "warning",
                f"slot {slot}",
                "is not a failover slot: a standby cannot keep it, so a failover means copying every table again",
                f'psql "dbname=… replication=database" -c \'ALTER_REPLICATION_SLOT {quote_ident(slot)} '
                "(FAILOVER true)'  -- or `rds-pipeline cdc drop` and sync (a new slot is made with failover)",
            )
        )
    if facts.synchronized_standby_slots:
        found.append(
            (
                "ok",
                "failover",
                f"the slot is a failover slot and the primary sends changes only once the standby slot(s) "
                f"{facts.synchronized_standby_slots} have them: after a failover the stream goes on, nothing lost",
                None,
            )
        )
    else:
        found.append(
            (
                "warning",
                "failover",
                "synchronized_standby_slots is empty: the slot may reach a standby late (or never), and changes "
                "we applied may be missing on a promoted standby",
                "on the primary: ALTER SYSTEM SET synchronized_standby_slots = '<the standby's physical slot>'; "
                "on the standby: sync_replication_slots = on, hot_standby_feedback = on, primary_slot_name, and a "
                "dbname in primary_conninfo. On RDS, a Multi-AZ instance fails over with its slots; see the README",
            )
        )
    return found
