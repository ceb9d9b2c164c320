"""Log-based replication into DuckDB: the type zoo through the log lands exactly as the snapshot (full-table)
path writes it, and TOAST values left unchanged, key changes, deletes, TRUNCATE and soft deletes behave as in
PostgreSQL; a second sync after a restart applies nothing twice."""

from __future__ import annotations

from pathlib import Path

import pytest

from rds_pipeline.engine.destinations.factory import open_destination
from rds_pipeline.engine.replication.cdc.flow import sync_log_based
from rds_pipeline.engine.replication.sync import sync_table
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.engine.sync_helpers import make_scratch
from rds_pipeline_tests.engine.test_sync_postgres import ZOO_DDL

BIG = "repeat(md5(id::text), 400)"


@pytest.mark.parametrize("index", [0, 1], ids=["pg18", "pg15"])
def test_type_zoo_through_the_log_into_duckdb(logical_servers: list[LocalPostgres], tmp_path: Path, index: int) -> None:
    server = logical_servers[index]
    scratch = make_scratch(
        server, f"Zoo Duck {index}", destination={"type": "duckdb", "path": str(tmp_path / "log.duckdb")}
    )
    ddl = ZOO_DDL if index else ZOO_DDL.replace("""'<a x="1">t&amp;</a>'""", "NULL").replace("'<empty/>'", "NULL")
    create, _, inserts = ddl.partition("INSERT INTO zoo (id) VALUES (1);")
    scratch.sql(create)
    table = scratch.one({"name": "public.zoo", "method": "log_based"})
    dest = open_destination(scratch.config)
    sync_log_based(scratch.config, dest, [table])
    scratch.sql("INSERT INTO zoo (id) VALUES (1);" + inserts)
    scratch.sql("UPDATE zoo SET i2 = coalesce(i2, 0) WHERE id IN (2, 3); DELETE FROM zoo WHERE id = 5")
    streamed = sync_log_based(scratch.config, dest, [table])
    assert not streamed.failures and streamed.changes(table.id) == {"insert": 5, "update": 2, "delete": 1}
    assert streamed.stream is not None and streamed.stream.undecoded == 0  # DuckDB reads values: all decoded
    through_log = dest.fetch_rows(table)
    dest.close()
    # the same rows through the snapshot path (a full-table copy) into another file: identical values
    full = make_scratch(
        server, f"Zoo Full {index}", destination={"type": "duckdb", "path": str(tmp_path / "full.duckdb")}
    )
    full_config = full.config.__class__(**{**full.config.__dict__, "source": scratch.config.source})
    copied = open_destination(full_config)
    with scratch.session() as session:
        sync_table(session, copied, scratch.one({"name": "public.zoo", "method": "full_table"}))
    snapshot = copied.fetch_rows(table)
    names = table.column_names
    differ = [
        (names[i], a[i], b[i])
        for a, b in zip(through_log, snapshot, strict=True)
        for i in range(len(names))
        if a[i] != b[i] and not (a[i] != a[i] and b[i] != b[i])
    ]  # both NaN counts as equal
    assert not differ and len(through_log) == len(snapshot) == 4
    copied.close()
    scratch.sql(f"SELECT pg_drop_replication_slot('{scratch.config.slot_name}')")


def test_toast_keys_truncate_and_soft_deletes_into_duckdb(logical18: LocalPostgres, tmp_path: Path) -> None:
    server = logical18
    scratch = make_scratch(
        server,
        "Toast Duck",
        destination={"type": "duckdb", "path": str(tmp_path / "t.duckdb")},
        log_based={"deletes": "soft"},
    )
    scratch.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v text, big text); ALTER TABLE t ALTER COLUMN big SET STORAGE "
        f"EXTERNAL; INSERT INTO t SELECT id, 'v' || id, {BIG} FROM generate_series(1, 100) id"
    )
    table = scratch.one({"name": "public.t", "method": "log_based"})
    dest = open_destination(scratch.config)
    sync_log_based(scratch.config, dest, [table])
    scratch.sql(
        "UPDATE t SET v = 'kept big' WHERE id <= 10; UPDATE t SET id = 1000 WHERE id = 20; "
        "INSERT INTO t VALUES (500, 'new', 'small'); UPDATE t SET v = 'then partial' WHERE id = 500; "
        "DELETE FROM t WHERE id = 30"
    )
    sync_log_based(scratch.config, dest, [table])
    source = {row[0]: row for row in scratch.source_rows(table)}
    rows = {
        row[0]: row
        for row in dest.conn.execute(
            f'SELECT id::VARCHAR, v, big, _rds_deleted_at IS NOT NULL FROM "{dest.schema}".t'
        ).fetchall()
    }
    assert rows["30"][3] and not rows["1000"][3]  # soft: the deleted row stays, marked
    assert {k: r[:3] for k, r in rows.items() if not r[3] and k != "20"} == source
    assert rows["20"][3]  # the old key of a key change is a delete too
    assert rows["5"][2] == source["5"][2] and len(rows["5"][2]) == 12800  # the TOASTed value, never NULL
    scratch.sql("TRUNCATE t; INSERT INTO t VALUES (1, 'after', 'x')")
    sync_log_based(scratch.config, dest, [table])
    live = dest.conn.execute(f'SELECT id, v FROM "{dest.schema}".t WHERE _rds_deleted_at IS NULL').fetchall()
    assert live == [(1, "after")]
    again = sync_log_based(scratch.config, dest, [table])  # nothing new: nothing applied twice
    assert again.changes(table.id) == {} and not again.snapshots
    dest.close()
    scratch.sql(f"SELECT pg_drop_replication_slot('{scratch.config.slot_name}')")
