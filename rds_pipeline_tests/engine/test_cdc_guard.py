"""The slot-lag guard on a real server: with a small ``max_slot_wal_keep_size``, a slot left behind goes from
reserved to unreserved (the check warns) to lost (the check fails). With ``on_slot_lost: fail`` the sync refuses
loudly with the fix (``cdc drop``, then sync, copies the table again); with ``resnapshot`` (the default) a lost
or dropped slot recovers by itself: a new slot, its tables copied again, and the loss said by the run, the
check and ``status``, while another integration's slot streams on. Also: a second reader of a busy slot is
refused by name."""

from __future__ import annotations

import dataclasses
import threading
import time

import psycopg2
import pytest

from rds_pipeline.dagster_defs.log_based import slot_check
from rds_pipeline.engine.errors import GapDetected, SlotBusy
from rds_pipeline.engine.replication.cdc import admin
from rds_pipeline.engine.replication.cdc.flow import LogBasedResult, sync_log_based
from rds_pipeline.engine.replication.cdc.slot import replication_connection, slot_status
from rds_pipeline.engine.replication.status import standings
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.engine.sync_helpers import make_scratch


def status_of(server: LocalPostgres, database: str, slot: str):  # noqa: ANN201
    with psycopg2.connect(**server.dsn(database)) as conn:
        found = slot_status(conn, slot)
    conn.close()
    return found


def test_the_lag_guard_from_reserved_to_lost(logical18: LocalPostgres) -> None:
    server = logical18
    scratch = make_scratch(server, "Guard", log_based={"lag_warn_mb": 8, "lag_fail_mb": 512, "on_slot_lost": "fail"})
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
        with pytest.raises(GapDetected, match="lost the WAL it needed.*rds-pipeline cdc drop"):
            sync_log_based(scratch.config, dest, [table])
    finally:
        server.psql("ALTER SYSTEM RESET max_slot_wal_keep_size; SELECT pg_reload_conf()")
    assert [line.split("(")[0] for line in admin.drop(scratch.config, dest)][:1] == ["SELECT pg_drop_replication_slot"]
    again = sync_log_based(scratch.config, dest, [table])
    assert again.snapshots == {table.id: 2}
    assert dest.fetch_rows(table) == scratch.source_rows(table)
    dest.close()
    scratch.sql(f"SELECT pg_drop_replication_slot('{slot}')")


def lose_slot(server: LocalPostgres, database: str, slot: str) -> None:
    """Write WAL past a 32 MB max_slot_wal_keep_size while the slot is not read, until the server gives it up."""
    server.psql("ALTER SYSTEM SET max_slot_wal_keep_size = '32MB'; SELECT pg_reload_conf()")
    try:
        for _ in range(3):
            server.psql(
                "INSERT INTO junk SELECT repeat(md5(g::text), 32) FROM generate_series(1, 20000) g; "
                "SELECT pg_switch_wal()",
                database,
            )
        server.psql("CHECKPOINT", database)
        assert status_of(server, database, slot).wal_status == "lost"
    finally:
        server.psql("ALTER SYSTEM RESET max_slot_wal_keep_size; SELECT pg_reload_conf()")


@pytest.mark.parametrize("index", [0, 1], ids=["pg18", "pg15"])
def test_a_lost_slot_recovers_by_itself(logical_servers: list[LocalPostgres], index: int) -> None:
    server = logical_servers[index]
    scratch = make_scratch(server, f"Lost {index}")
    scratch.sql(
        "CREATE TABLE g (id int PRIMARY KEY, v text); INSERT INTO g SELECT i, 'v' FROM generate_series(1, 500) i;"
        "CREATE TABLE h (id int PRIMARY KEY, v text); INSERT INTO h SELECT i, 'h' FROM generate_series(1, 50) i;"
        "CREATE TABLE junk (v text)"
    )
    g, h = scratch.select([{"name": "public.g", "method": "log_based"}, {"name": "public.h", "method": "log_based"}])
    dest = scratch.destination()
    slot = scratch.config.slot_name
    assert not sync_log_based(scratch.config, dest, [g, h]).recovered
    scratch.sql("UPDATE g SET v = 'before' WHERE id < 10")
    sync_log_based(scratch.config, dest, [g, h])

    # 1. the slot falls behind max_slot_wal_keep_size while nothing reads it, and changes go on meanwhile
    lose_slot(server, scratch.source_db, slot)
    scratch.sql("INSERT INTO g VALUES (501, 'during the outage'); UPDATE g SET v = 'lost?' WHERE id = 20")
    scratch.sql("DELETE FROM g WHERE id = 21; DELETE FROM h WHERE id = 1")
    failed = slot_check(
        LogBasedResult(slot, slot, status=status_of(server, scratch.source_db, slot)), scratch.config.log_based
    )
    assert not failed.passed
    recovered = sync_log_based(scratch.config, dest, [g, h])
    assert recovered.recovered and "wal_removed" in recovered.recovered and "2 table(s)" in recovered.recovered
    assert recovered.snapshots == {g.id: 500, h.id: 49} and not recovered.failures
    assert dest.fetch_rows(g) == scratch.source_rows(g) and dest.fetch_rows(h) == scratch.source_rows(h)
    check = slot_check(recovered, scratch.config.log_based)
    assert not check.passed and check.metadata["severity"] == "ERROR" and "re-created" in check.description
    when, why = dest.changes().slot_lost(slot) or (None, "")
    assert when is not None and "wal_removed" in why
    (line,) = [s.lost for s in standings(scratch.config, [g], dest)]
    assert line and "wal_removed" in line

    # 2. time passes: the new slot streams, and the check passes again
    scratch.sql("UPDATE g SET v = 'after' WHERE id < 5; DELETE FROM h WHERE id = 2")
    streamed = sync_log_based(scratch.config, dest, [g, h])
    assert not streamed.snapshots and not streamed.recovered and streamed.changes(g.id) == {"update": 4}
    assert slot_check(streamed, scratch.config.log_based).passed
    assert dest.fetch_rows(g) == scratch.source_rows(g) and dest.fetch_rows(h) == scratch.source_rows(h)

    # 3. the slot dropped behind our back (or a failover to a server that never had it): the same recovery,
    # while another integration on the same source keeps streaming from its own slot
    other = make_scratch(server, f"Lost Other {index}")
    other.sql("CREATE TABLE o (id int PRIMARY KEY, v text); INSERT INTO o VALUES (1, 'o')")
    o = other.one({"name": "public.o", "method": "log_based"})
    other_dest = other.destination()
    sync_log_based(other.config, other_dest, [o])
    scratch.sql(f"SELECT pg_drop_replication_slot('{slot}')")
    scratch.sql("UPDATE g SET v = 'gone' WHERE id = 30")
    other.sql("UPDATE o SET v = 'still streaming'")
    assert sync_log_based(other.config, other_dest, [o]).changes(o.id) == {"update": 1}
    dropped = sync_log_based(scratch.config, dest, [g, h])
    assert dropped.recovered and "is gone from the source" in dropped.recovered
    assert set(dropped.snapshots) == {g.id, h.id}
    assert dest.fetch_rows(g) == scratch.source_rows(g) and other_dest.fetch_rows(o) == other.source_rows(o)

    # 4. on_slot_lost: fail keeps the loud stop, and nothing is forgotten
    failing = dataclasses.replace(
        scratch.config, log_based=dataclasses.replace(scratch.config.log_based, on_slot_lost="fail")
    )
    scratch.sql(f"SELECT pg_drop_replication_slot('{slot}')")
    applied = dest.changes().applied_lsn(slot)
    with pytest.raises(GapDetected, match="is gone from the source.*cdc drop"):
        sync_log_based(failing, dest, [g, h])
    assert dest.changes().applied_lsn(slot) == applied and set(dest.changes().snapshot_lsns(slot)) == {g.id, h.id}
    dest.close()
    other_dest.close()
    other.sql(f"SELECT pg_drop_replication_slot('{other.config.slot_name}')")


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
