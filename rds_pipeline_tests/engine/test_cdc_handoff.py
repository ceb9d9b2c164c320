"""Snapshot, then stream, under a concurrent writer (inserts, updates and deletes all along): the destination
equals the source, row for row (PG18 and PG15)."""

from __future__ import annotations

import random
import threading

import psycopg2
import pytest

from rds_pipeline.engine.replication.cdc.slot import create_publication
from rds_pipeline.engine.replication.cdc.snapshot import snapshot_tables
from rds_pipeline.engine.replication.cdc.stream import catch_up
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.engine.sync_helpers import make_scratch


def writer(server: LocalPostgres, database: str, stop: threading.Event, seed: int) -> None:
    """Small transactions until stopped: inserts of new keys, updates and deletes of existing ones."""
    rng = random.Random(seed)
    conn = psycopg2.connect(**server.dsn(database))
    conn.autocommit = True
    next_id = 100_001
    with conn.cursor() as cur:
        while not stop.is_set():
            choice = rng.random()
            if choice < 0.5:
                cur.execute("INSERT INTO h VALUES (%s, %s)", (next_id, f"new {next_id}"))
                next_id += 1
            elif choice < 0.8:
                cur.execute("UPDATE h SET v = v || '+' WHERE id = %s", (rng.randint(1, next_id),))
            else:
                cur.execute("DELETE FROM h WHERE id = %s", (rng.randint(1, next_id),))
    conn.close()


@pytest.mark.parametrize("index", [0, 1], ids=["pg18", "pg15"])
def test_snapshot_then_stream_under_a_concurrent_writer(logical_servers: list[LocalPostgres], index: int) -> None:
    server = logical_servers[index]
    scratch = make_scratch(server)
    scratch.sql(
        "CREATE TABLE h (id int PRIMARY KEY, v text); "
        "INSERT INTO h SELECT g, 'v' || g FROM generate_series(1, 100000) g"
    )
    conn = psycopg2.connect(**server.dsn(scratch.source_db))
    create_publication(conn, "handoff_pub", [("public", "h")])
    conn.close()
    table = scratch.one({"name": "public.h", "method": "full_table"})
    dest = scratch.destination()
    stop = threading.Event()
    thread = threading.Thread(target=writer, args=(server, scratch.source_db, stop, index), daemon=True)
    thread.start()
    try:
        slot = f"handoff_{scratch.source_db}"
        snapshot = snapshot_tables(scratch.config.source, dest, [table], slot)
        assert (
            snapshot.rows[table.id] >= 100_000 - 5_000 and dest.changes().applied_lsn(slot) == snapshot.consistent_point
        )
        first = catch_up(scratch.config.source, dest, {("public", "h"): table}, slot, "handoff_pub")
        assert first.transactions > 0  # the writer's changes during the snapshot came through the slot
    finally:
        stop.set()
        thread.join(30)
    catch_up(scratch.config.source, dest, {("public", "h"): table}, slot, "handoff_pub")
    assert dest.fetch_rows(table) == scratch.source_rows(table)
    dest.close()
    scratch.sql(f"SELECT pg_drop_replication_slot('{slot}')")
