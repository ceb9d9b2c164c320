"""The slot-lag guard on a real server: with a small ``max_slot_wal_keep_size``, a slot left behind goes from
reserved to unreserved (the check warns) to lost (the check fails, the sync refuses loudly with the fix); the
fix (``cdc drop``, then sync) copies the table again. Also: a second reader of a busy slot is refused by name."""

from __future__ import annotations

import threading
import time

import psycopg2
import pytest

from rds_pipeline.dagster_defs.log_based import slot_check
from rds_pipeline.engine.errors import GapDetected, SlotBusy
from rds_pipeline.engine.replication.cdc import admin
from rds_pipeline.engine.replication.cdc.flow import LogBasedResult, sync_log_based
from rds_pipeline.engine.replication.cdc.slot import replication_connection, slot_status
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.engine.sync_helpers import make_scratch


def status_of(server: LocalPostgres, database: str, slot: str):  # noqa: ANN201
    with psycopg2.connect(**server.dsn(database)) as conn:
        found = slot_status(conn, slot)
    conn.close()
    return found


def test_the_lag_guard_from_reserved_to_lost(logical18: LocalPostgres) -> None:
    server = logical18
    scratch = make_scratch(server, "Guard", log_based={"lag_warn_mb": 8, "lag_fail_mb": 512})
    scratch.sql(
        "CREATE TABLE g (id int PRIMARY KEY, v text); INSERT INTO g VALUES (1, 'a'); CREATE TABLE junk (v text)"
    )
    table = scratch.one({"name": "public.g", "method": "log_based"})
    dest = scratch.destination()
    slot = scratch.config.slot_name
    sync_log_based(scratch.config, dest, [table])
    server.psql("ALTER SYSTEM SET max_slot_wal_keep_size = '32MB'; SELECT pg_reload_conf()")
    try:
        reserved = status_of(server, scratch.source_db, slot)
        assert (
            reserved.wal_status == "reserved"
            and slot_check(LogBasedResult(slot, slot, status=reserved), scratch.config.log_based).passed
        )
        for _ in range(3):  # WAL the slot must keep, past max_slot_wal_keep_size
            scratch.sql(
                "INSERT INTO junk SELECT repeat(md5(g::text), 32) FROM generate_series(1, 20000) g; "
                "SELECT pg_switch_wal()"
            )
        behind = status_of(server, scratch.source_db, slot)
        assert behind.wal_status in ("extended", "unreserved")
        warned = slot_check(LogBasedResult(slot, slot, status=behind), scratch.config.log_based)
        assert not warned.passed and warned.metadata["severity"] == "WARN"
        scratch.sql("CHECKPOINT")
        lost = status_of(server, scratch.source_db, slot)
        assert lost.wal_status == "lost"
        failed = slot_check(LogBasedResult(slot, slot, status=lost), scratch.config.log_based)
        assert not failed.passed and failed.metadata["severity"] == "ERROR"
        scratch.sql("INSERT INTO g VALUES (2, 'during the outage')")
        with pytest.raises(GapDetected, match="lost WAL it needed.*rds-pipeline cdc drop"):
            sync_log_based(scratch.config, dest, [table])
    finally:
        server.psql("ALTER SYSTEM RESET max_slot_wal_keep_size; SELECT pg_reload_conf()")
    assert [line.split("(")[0] for line in admin.drop(scratch.config, dest)][:1] == ["SELECT pg_drop_replication_slot"]
    again = sync_log_based(scratch.config, dest, [table])
    assert again.snapshots == {table.id: 2}
    assert dest.fetch_rows(table) == scratch.source_rows(table)
    dest.close()
    scratch.sql(f"SELECT pg_drop_replication_slot('{slot}')")


def test_a_busy_slot_is_refused_by_name(logical18: LocalPostgres) -> None:
    server = logical18
    scratch = make_scratch(server, "Busy", log_based={"takeover_after_seconds": 3})
    scratch.sql("CREATE TABLE b (id int PRIMARY KEY)")
    table = scratch.one({"name": "public.b", "method": "log_based"})
    dest = scratch.destination()
    slot = scratch.config.slot_name
    sync_log_based(scratch.config, dest, [table])
    # another client reading the slot, alive (it sends status updates) but confirming nothing; it never reads
    # messages, so psycopg2 cannot move its confirmed position to a keepalive's WAL end on its own
    other = replication_connection(scratch.config.source)
    cur = other.cursor()
    cur.start_replication(slot_name=slot, decode=False, options={"proto_version": "1", "publication_names": slot})
    stop = threading.Event()

    def keep_answering() -> None:
        while not stop.is_set():
            cur.send_feedback(force=True)
            time.sleep(0.2)

    thread = threading.Thread(target=keep_answering, daemon=True)
    thread.start()
    try:
        with pytest.raises(SlotBusy, match=f"slot '{slot}' is being read by another client .*Fix: wait"):
            sync_log_based(scratch.config, dest, [table])
        stop.set()  # the other client goes silent, its connection still open (a hung or frozen process)
        thread.join(5)
        time.sleep(4)
        scratch.sql("INSERT INTO b VALUES (1)")
        taken = sync_log_based(scratch.config, dest, [table])  # silent past takeover_after_seconds: taken over
        assert taken.changes(table.id) == {"insert": 1}
    finally:
        stop.set()
        other.close()
    dest.close()
    scratch.sql(f"SELECT pg_drop_replication_slot('{slot}')")
