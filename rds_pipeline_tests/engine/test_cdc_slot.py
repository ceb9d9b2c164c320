"""Publication and slot primitives on real servers: a slot created with an exported snapshot, a copy under that
snapshot while writes go on, and the slot's changes after it: together, every row once (PG18 and PG15)."""

from __future__ import annotations

import psycopg2
import pytest

from rds_pipeline.engine.core.messages import Delete, Insert, Relation
from rds_pipeline.engine.replication.cdc.pgoutput import PgOutputDecoder
from rds_pipeline.engine.replication.cdc.slot import (
    create_publication,
    create_slot,
    drop_slot,
    replication_connection,
    slot_status,
    use_snapshot,
)
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.conftest import make_config

ODD = 'Odd "Name"'
QUOTED = '"' + ODD.replace('"', '""') + '"'  # as SQL writes it


@pytest.mark.parametrize("index", [0, 1], ids=["pg18", "pg15"])
def test_snapshot_plus_changes_hold_every_row_once(logical_servers: list[LocalPostgres], index: int) -> None:
    server = logical_servers[index]
    database = "cdc_slot"
    server.psql(f"CREATE DATABASE {database}")
    server.psql(
        f"CREATE TABLE {QUOTED} (id int PRIMARY KEY, v text);"
        f"INSERT INTO {QUOTED} SELECT g, 'v' || g FROM generate_series(1, 100) g;"
        "CREATE TABLE plain (id int PRIMARY KEY);",
        database,
    )
    config = make_config(server, database=database)
    conn = psycopg2.connect(**server.dsn(database))
    try:
        text = create_publication(conn, "rds_pipeline_pub", [("public", ODD), ("public", "plain")])
        assert text == (
            f'CREATE PUBLICATION "rds_pipeline_pub" FOR TABLE "public".{QUOTED}, "public"."plain" '
            "WITH (publish_via_partition_root = true"
            + (", publish_generated_columns = stored)" if conn.server_version >= 180000 else ")")
        )
        published = server.psql(
            "SELECT string_agg(tablename, ',' ORDER BY tablename), bool_and(p.pubviaroot) "
            "FROM pg_publication_tables t JOIN pg_publication p USING (pubname)",
            database,
        )
        assert published.strip() == f"{ODD},plain|t"

        replication = replication_connection(config.source)
        snapshot, statement = create_slot(replication, "rds_pipeline_slot")
        assert statement == 'CREATE_REPLICATION_SLOT "rds_pipeline_slot" LOGICAL "pgoutput" EXPORT_SNAPSHOT'
        # writes after the slot's consistent point: the snapshot must not see them, the slot must carry them
        server.psql(
            f"INSERT INTO {QUOTED} SELECT g, 'late' FROM generate_series(101, 150) g;"
            f"DELETE FROM {QUOTED} WHERE id <= 10;",
            database,
        )
        reader = psycopg2.connect(**server.dsn(database))
        use_snapshot(reader, snapshot)
        with reader.cursor() as cur:
            cur.execute(f"SELECT id FROM {QUOTED}")
            copied = {row[0] for row in cur.fetchall()}
        reader.close()
        replication.close()  # the copy has its snapshot: the exporting connection may go
        assert copied == set(range(1, 101))

        with conn.cursor() as cur:
            cur.execute(
                "SELECT data FROM pg_logical_slot_peek_binary_changes('rds_pipeline_slot', NULL, NULL, "
                "'proto_version', '1', 'publication_names', 'rds_pipeline_pub')"
            )
            decoder = PgOutputDecoder(1)
            changes = [decoder.decode(bytes(row[0])) for row in cur.fetchall()]
        conn.rollback()
        names = {m.oid: m.name for m in changes if isinstance(m, Relation)}
        inserted = {int(m.new[0]) for m in changes if isinstance(m, Insert)}  # type: ignore[arg-type]
        deleted = {int(m.old[0]) for m in changes if isinstance(m, Delete)}  # type: ignore[arg-type]
        assert set(names.values()) == {ODD}
        assert inserted == set(range(101, 151)) and deleted == set(range(1, 11))
        final = {int(i) for i in server.psql(f"SELECT id FROM {QUOTED}", database).split()}
        assert (copied | inserted) - deleted == final  # no row missed at the handoff, none doubled

        status = slot_status(conn, "rds_pipeline_slot")
        assert status is not None and not status.active and status.wal_status == "reserved"
        assert status.lag_bytes is not None and status.lag_bytes > 0  # nothing confirmed yet: WAL is held
        assert status.confirmed_flush_lsn is not None and status.safe_wal_size is None  # no max_slot_wal_keep_size
        assert "pg_drop_replication_slot('rds_pipeline_slot')" in drop_slot(conn, "rds_pipeline_slot")
        assert slot_status(conn, "rds_pipeline_slot") is None
    finally:
        conn.close()
