"""The slot reader: catch up to the WAL position of the run's start, apply, confirm only after the commit;
resume after a stop between the commit and the confirmation; refuse a slot ahead of the destination."""

from __future__ import annotations

import psycopg2
import pytest

from rds_pipeline.engine.core.messages import lsn_int
from rds_pipeline.engine.destinations.base import SLOTS_TABLE
from rds_pipeline.engine.errors import GapDetected
from rds_pipeline.engine.replication.cdc import stream
from rds_pipeline.engine.replication.cdc.slot import (
    create_publication,
    create_slot,
    replication_connection,
    slot_status,
)
from rds_pipeline.engine.replication.cdc.stream import catch_up
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.engine.sync_helpers import make_scratch


def test_catch_up_applies_then_confirms(logical18: LocalPostgres, monkeypatch: pytest.MonkeyPatch) -> None:
    server = logical18
    scratch = make_scratch(server)
    scratch.sql("CREATE TABLE t (id int PRIMARY KEY, v text); CREATE TABLE other (id int)")
    conn = psycopg2.connect(**server.dsn(scratch.source_db))
    create_publication(conn, "stream_pub", [("public", "t")])
    conn.close()
    slot = f"stream_{scratch.source_db}"
    replication = replication_connection(scratch.config.source)
    create_slot(replication, slot)
    replication.close()
    table = scratch.one({"name": "public.t"})
    tables = {("public", "t"): table}
    dest = scratch.destination()

    scratch.sql(
        "INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 500) g; UPDATE t SET v = 'u' WHERE id <= 10;"
        "DELETE FROM t WHERE id > 490; INSERT INTO other VALUES (1)"
    )
    first = catch_up(scratch.config.source, dest, tables, slot, "stream_pub")
    assert dest.fetch_rows(table) == scratch.source_rows(table)
    # three transactions: the one on the unpublished table sends nothing
    assert first.transactions == 3 and first.counts["insert"] == 500 and first.counts["delete"] == 10
    status = slot_status(psycopg2.connect(**server.dsn(scratch.source_db)), slot)
    assert status is not None and status.confirmed_flush_lsn == first.end_lsn == dest.changes().applied_lsn(slot)

    # nothing new (only writes to an unpublished table): the run reaches its target and stops
    scratch.sql("INSERT INTO other SELECT generate_series(1, 100)")
    idle = catch_up(scratch.config.source, dest, tables, slot, "stream_pub", timeout_seconds=30)
    assert idle.transactions == 0

    # the destination committed a batch, then the client stopped before confirming it to the server: the next
    # run gets that transaction again from the slot, and skips it (no double apply)
    scratch.sql("UPDATE t SET v = 'second' WHERE id = 1")

    class Crash(Exception):
        pass

    def apply_then_die(self, cur, batch, result, partial=False):  # noqa: ANN001, ANN202 - the real apply, then a crash
        self.destination.changes().apply_batch(self.tables, batch, self.slot)
        raise Crash

    with monkeypatch.context() as patch, pytest.raises(Crash):
        patch.setattr(stream._Reader, "flush", apply_then_die)
        catch_up(scratch.config.source, dest, tables, slot, "stream_pub")
    assert dest.fetch_rows(table) == scratch.source_rows(table)
    unconfirmed = slot_status(psycopg2.connect(**server.dsn(scratch.source_db)), slot)
    crashed = dest.changes().applied_lsn(
        slot
    )  # the batch's LSN: committed in the destination, never told to the server
    assert unconfirmed is not None and lsn_int(unconfirmed.confirmed_flush_lsn) < lsn_int(crashed)  # type: ignore[arg-type]
    again = catch_up(scratch.config.source, dest, tables, slot, "stream_pub")
    # resumed from the destination's LSN: the transaction is not applied twice (the server does not resend what
    # starts before the requested position; anything it does resend is skipped by its LSN)
    assert again.transactions == 0 and dest.fetch_rows(table) == scratch.source_rows(table)
    confirmed = slot_status(psycopg2.connect(**server.dsn(scratch.source_db)), slot).confirmed_flush_lsn  # type: ignore[union-attr]
    assert confirmed == dest.changes().applied_lsn(slot) == again.end_lsn  # and now the server is told
    # a slot ahead of the destination (the destination's LSN rewound): changes were lost; refused loudly
    scratch.sql(f"UPDATE test_replica.{SLOTS_TABLE} SET lsn = '0/1'", scratch.dest_db)
    with pytest.raises(GapDetected, match="cdc drop"):
        catch_up(scratch.config.source, dest, tables, slot, "stream_pub")
    dest.close()
    scratch.sql(f"SELECT pg_drop_replication_slot('{slot}')")
