"""Log-based changes from a real slot, decoded, batched and applied to PostgreSQL: TOAST values over 8 KB that
updates leave alone, key changes, delete and re-insert, TRUNCATE in its place; the LSN commits with the rows."""

from __future__ import annotations

import psycopg2
import pytest

from rds_pipeline.engine.core.changes import ChangeBatch
from rds_pipeline.engine.core.messages import Begin, Commit, lsn_text
from rds_pipeline.engine.errors import LoadError
from rds_pipeline.engine.replication.cdc.pgoutput import PgOutputDecoder
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.engine.sync_helpers import make_scratch

BIG = "repeat(md5(id::text), 400)"  # 12.8 kB per value, stored out of line


def changes(server: LocalPostgres, database: str, slot: str) -> ChangeBatch:
    """Everything the slot holds, committed transactions only, as one batch (consumed from the slot)."""
    conn = psycopg2.connect(**server.dsn(database))
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT data FROM pg_logical_slot_get_binary_changes(%s, NULL, NULL, 'proto_version', '1', "
                "'publication_names', 'apply_pub')",
                (slot,),
            )
            rows = [bytes(r[0]) for r in cur.fetchall()]
        conn.commit()
    finally:
        conn.close()
    decoder, batch, current = PgOutputDecoder(1), ChangeBatch(), []
    for data in rows:
        message = decoder.decode(data)
        if isinstance(message, Begin):  # as the stream does: deletes carry their transaction's commit time
            current, batch.commit_time = [], message.commit_time
        elif isinstance(message, Commit):
            batch.add_transaction(current, message.end_lsn)
        else:
            current.append(message)
    return batch


def test_changes_apply_exactly_with_their_lsn(logical18: LocalPostgres) -> None:
    server = logical18
    scratch = make_scratch(server)
    scratch.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v text, big text); ALTER TABLE t ALTER COLUMN big SET STORAGE "
        "EXTERNAL; CREATE PUBLICATION apply_pub FOR TABLE t"
    )
    slot = f"apply_{scratch.source_db}"
    scratch.sql(f"SELECT pg_create_logical_replication_slot('{slot}', 'pgoutput')")
    table = scratch.one({"name": "public.t"})
    tables = {("public", "t"): table}
    dest = scratch.destination()

    # batch 1: inserts with large values, an update that leaves them (sent as 'u'), a key change that leaves
    # them, a delete and a re-insert of one key
    scratch.sql(
        f"INSERT INTO t SELECT id, 'v' || id, {BIG} FROM generate_series(1, 5) id;"
        "UPDATE t SET v = 'changed' WHERE id = 2; UPDATE t SET id = 30 WHERE id = 3;"
        "DELETE FROM t WHERE id = 4; INSERT INTO t VALUES (4, 'again', 'small')"
    )
    batch = changes(server, scratch.source_db, slot)
    report = dest.changes().apply_batch(tables, batch, slot)
    assert dest.fetch_rows(table) == scratch.source_rows(table)
    assert dest.changes().applied_lsn(slot) == report.lsn == lsn_text(batch.end_lsn)  # type: ignore[arg-type]

    # batch 2: updates whose large values only the destination holds (one also moving its key), a TRUNCATE
    # between other changes, an insert and an update of one key in one batch
    scratch.sql("UPDATE t SET v = 'later' WHERE id = 1; UPDATE t SET id = 31 WHERE id = 30;")
    before_truncate = changes(server, scratch.source_db, slot)
    pending = [c for s in before_truncate.segments for rows in s.changes.values() for c in rows.values()]
    assert any(c.moved_from for c in pending)  # 30 -> 31: its large value is under 30 in the destination
    assert any(not c.complete and not c.moved_from for c in pending)  # 1: the destination keeps its value
    dest.changes().apply_batch(tables, before_truncate, slot)
    assert dest.fetch_rows(table) == scratch.source_rows(table)
    scratch.sql(
        f"INSERT INTO t VALUES (9, 'gone', 'x'); TRUNCATE t; INSERT INTO t SELECT id, 'new', {BIG} "
        "FROM generate_series(7, 8) id; UPDATE t SET v = 'newer' WHERE id = 8"
    )
    batch = changes(server, scratch.source_db, slot)
    assert len(batch.segments) == 2
    dest.changes().apply_batch(tables, batch, slot)
    assert dest.fetch_rows(table) == scratch.source_rows(table)
    dest.changes().apply_batch(tables, batch, slot)  # applied twice (a crash before the slot was told): the same rows
    assert dest.fetch_rows(table) == scratch.source_rows(table)

    # a replica missing a row that the stream updates with an unchanged large value: refused, nothing written
    scratch.sql("DELETE FROM test_replica.t WHERE id = 7", scratch.dest_db)
    scratch.sql("UPDATE t SET v = 'needs the row' WHERE id = 7")
    lsn = dest.changes().applied_lsn(slot)
    with pytest.raises(LoadError, match="re-snapshot"):
        dest.changes().apply_batch(tables, changes(server, scratch.source_db, slot), slot)
    assert dest.changes().applied_lsn(slot) == lsn
    dest.close()
    scratch.sql(f"SELECT pg_drop_replication_slot('{slot}')")
