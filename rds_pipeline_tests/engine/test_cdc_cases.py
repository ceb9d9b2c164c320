"""Log-based replication, case by case on real servers; each compares the destination with the source, row
for row: the type zoo through the log (under a source whose own settings differ: Kolkata time, SQL dates,
sql_standard intervals), schema changes mid-stream (ADD COLUMN, ALTER TYPE, DROP COLUMN), a partitioned table,
transactions that abort (a large one, and a rolled-back subtransaction), and an idle database whose slot still
advances."""

from __future__ import annotations

import psycopg2
import pytest

from rds_pipeline.engine.core.messages import lsn_int
from rds_pipeline.engine.replication.cdc.flow import sync_log_based
from rds_pipeline.engine.replication.cdc.slot import slot_status
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.engine.sync_helpers import Scratch, make_scratch, rows_as_text
from rds_pipeline_tests.engine.test_sync_postgres import ZOO_DDL


def same(scratch: Scratch, dest, name: str, key: str = "id") -> None:  # noqa: ANN001
    """The replica equals the source on the source's current columns (re-discovered)."""
    table = scratch.one({"name": f"public.{name}"})
    copied = rows_as_text(scratch.server, scratch.dest_db, dest.target(table), table.column_names, (key,))
    assert copied == scratch.source_rows(table)


def drop_slot(scratch: Scratch) -> None:
    scratch.sql(f"SELECT pg_drop_replication_slot('{scratch.config.slot_name}')")


@pytest.mark.parametrize("index", [0, 1], ids=["pg18", "pg15"])
def test_type_zoo_through_the_log(logical_servers: list[LocalPostgres], index: int) -> None:
    server = logical_servers[index]
    scratch = make_scratch(server, f"Zoo Log {index}")
    scratch.sql(
        f"ALTER DATABASE {scratch.source_db} SET timezone = 'Asia/Kolkata'; ALTER DATABASE {scratch.source_db} "
        "SET DateStyle = 'SQL, DMY'; ALTER DATABASE {db} SET IntervalStyle = 'sql_standard'; "
        "ALTER DATABASE {db} SET extra_float_digits = 0".replace("{db}", scratch.source_db)
    )
    ddl = ZOO_DDL if index else ZOO_DDL.replace("""'<a x="1">t&amp;</a>'""", "NULL").replace("'<empty/>'", "NULL")
    create, _, inserts = ddl.partition("INSERT INTO zoo (id) VALUES (1);")
    scratch.sql(create)
    table = scratch.one({"name": "public.zoo", "method": "log_based"})
    dest = scratch.destination()
    sync_log_based(scratch.config, dest, [table])  # the snapshot: an empty table
    scratch.sql("INSERT INTO zoo (id) VALUES (1);" + inserts)  # every value arrives through the log
    streamed = sync_log_based(scratch.config, dest, [table])
    assert streamed.changes(table.id) == {"insert": 5}
    assert streamed.stream is not None and streamed.stream.undecoded == 5  # whole rows: COPY rows, cast there
    same(scratch, dest, "zoo")
    scratch.sql("UPDATE zoo SET i2 = coalesce(i2, 0) WHERE id IN (2, 3); DELETE FROM zoo WHERE id = 4")
    sync_log_based(scratch.config, dest, [table])
    same(scratch, dest, "zoo")
    dest.close()
    drop_slot(scratch)


def test_schema_changes_mid_stream_and_a_partitioned_table(logical18: LocalPostgres) -> None:
    scratch = make_scratch(logical18, "Evolve Log")
    scratch.sql(
        "CREATE TABLE e (id int PRIMARY KEY, n int, gone text); INSERT INTO e VALUES (1, 1, 'g'); "
        "CREATE TABLE p (id int, region text, v text, PRIMARY KEY (id, region)) PARTITION BY LIST (region); "
        "CREATE TABLE p_eu PARTITION OF p FOR VALUES IN ('eu'); "
        "CREATE TABLE p_us PARTITION OF p FOR VALUES IN ('us'); "
        "INSERT INTO p VALUES (1, 'eu', 'a'), (2, 'us', 'b')"
    )
    tables = scratch.select([{"name": "public.e", "method": "log_based"}, {"name": "public.p", "method": "log_based"}])
    dest = scratch.destination()
    first = sync_log_based(scratch.config, dest, tables)
    assert first.snapshots == {tables[0].id: 1, tables[1].id: 2}
    scratch.sql(
        "INSERT INTO e VALUES (2, 2, 'before'); ALTER TABLE e ADD COLUMN extra text; "
        "INSERT INTO e VALUES (3, 3, 'added', 'x'); ALTER TABLE e ALTER COLUMN n TYPE bigint; "
        "INSERT INTO e VALUES (4, 1099511627776, 'big', 'y'); ALTER TABLE e DROP COLUMN gone; "
        "INSERT INTO e VALUES (5, 5, 'z'); UPDATE e SET extra = 'late' WHERE id = 1; "
        "INSERT INTO p VALUES (3, 'us', 'c'); UPDATE p SET v = 'moved', region = 'us' WHERE id = 1; "
        "DELETE FROM p WHERE id = 2"
    )
    streamed = sync_log_based(scratch.config, dest, tables)  # the old catalog: evolution comes from the source
    assert any("extra: added" in c for c in streamed.evolved[tables[0].id])
    same(scratch, dest, "e")
    same(scratch, dest, "p")  # changes of the partitions arrive under the root (publish_via_partition_root)
    with psycopg2.connect(**scratch.server.dsn(scratch.dest_db)) as conn, conn.cursor() as cur:
        cur.execute(f'SELECT id, gone FROM "{dest.schema}".e ORDER BY id')
        assert cur.fetchall() == [
            (1, "g"),
            (2, "before"),
            (3, "added"),
            (4, "big"),
            (5, None),
        ]  # kept, NULL in new rows
        cur.execute(
            f"SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = '\"{dest.schema}\".e'"
            "::regclass AND attname = 'n'"
        )
        assert cur.fetchone()[0] == "bigint"
    conn.close()
    dest.close()
    drop_slot(scratch)


def test_aborted_transactions_and_an_idle_database(logical15: LocalPostgres) -> None:
    scratch = make_scratch(logical15, "Abort Log")
    scratch.sql("CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE unpublished (x int)")
    table = scratch.one({"name": "public.a", "method": "log_based"})
    dest = scratch.destination()
    sync_log_based(scratch.config, dest, [table])
    # a large transaction that aborts (spilled to disk by the server, past logical_decoding_work_mem), and a
    # rolled-back subtransaction inside a committed one
    scratch.sql("BEGIN; INSERT INTO a SELECT g, 'never' FROM generate_series(1, 50000) g; ROLLBACK")
    scratch.sql(
        "BEGIN; INSERT INTO a VALUES (1, 'kept'); SAVEPOINT s; INSERT INTO a VALUES (2, 'undone'); "
        "UPDATE a SET v = 'undone' WHERE id = 1; ROLLBACK TO SAVEPOINT s; INSERT INTO a VALUES (3, 'kept'); "
        "COMMIT"
    )
    result = sync_log_based(scratch.config, dest, [table])
    assert result.changes(table.id) == {"insert": 2}
    same(scratch, dest, "a")
    # idle: only an unpublished table is written, then the WAL switches segment; the slot still advances
    with psycopg2.connect(**scratch.server.dsn(scratch.source_db)) as conn:
        before = slot_status(conn, scratch.config.slot_name)
    scratch.sql("INSERT INTO unpublished SELECT generate_series(1, 10000); SELECT pg_switch_wal()")
    idle = sync_log_based(scratch.config, dest, [table])
    assert idle.changes(table.id) == {} and idle.heartbeat
    after = idle.status
    assert before is not None and after is not None
    assert lsn_int(after.confirmed_flush_lsn) > lsn_int(before.confirmed_flush_lsn)  # type: ignore[arg-type]
    assert after.lag_bytes is not None and after.lag_bytes < 1024 * 1024  # nothing held back but this run's tail
    dest.close()
    drop_slot(scratch)
