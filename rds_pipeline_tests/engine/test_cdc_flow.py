"""Log-based replication as a user runs it (``sync_log_based``), as a timeline on real servers: a first sync
under a concurrent writer, then more changes, a table added later (its own snapshot while the other streams),
TOAST values under DEFAULT and FULL replica identity, deletes and re-inserts, TRUNCATE, a table deselected and
added back, a refused table beside a streaming one, soft deletes, and a slot dropped behind our back (re-created
by itself). After each step the destination equals the source, row for row."""

from __future__ import annotations

import threading

import psycopg2
import pytest

from rds_pipeline.engine.errors import SelectionError, SetupNeeded
from rds_pipeline.engine.replication.cdc.flow import sync_log_based
from rds_pipeline.engine.replication.cdc.slot import slot_status
from rds_pipeline.engine.source.checks import run_checks
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.engine.sync_helpers import Scratch, make_scratch

BIG = "repeat(md5(id::text), 400)"  # 12.8 kB: stored out of line (TOAST) under STORAGE EXTERNAL


def churn(server: LocalPostgres, database: str, table: str, stop: threading.Event, start: int) -> None:
    """Small transactions until stopped: inserts, updates (the TOASTed column left alone) and deletes."""
    conn = psycopg2.connect(**server.dsn(database))
    conn.autocommit = True
    key = start
    with conn.cursor() as cur:
        while not stop.is_set():
            cur.execute(f"INSERT INTO {table} (id, v, big) VALUES (%s, 'new', repeat('x', 9000))", (key,))
            cur.execute(f"UPDATE {table} SET v = v || '+' WHERE id = %s", (key // 2,))
            cur.execute(f"DELETE FROM {table} WHERE id = %s", (key // 3,))
            key += 1
    conn.close()


def equal(scratch: Scratch, dest, *tables) -> None:  # noqa: ANN001
    for table in tables:
        assert dest.fetch_rows(table) == scratch.source_rows(table), table.id


@pytest.mark.parametrize("index", [0, 1], ids=["pg18", "pg15"])
def test_log_based_timeline(logical_servers: list[LocalPostgres], index: int) -> None:
    server = logical_servers[index]
    scratch = make_scratch(server, f"Flow {index}")
    for name in ("t", "u"):
        scratch.sql(
            f"CREATE TABLE {name} (id int PRIMARY KEY, v text, big text); "
            f"ALTER TABLE {name} ALTER COLUMN big SET STORAGE EXTERNAL; "
            f"INSERT INTO {name} SELECT id, 'v' || id, {BIG} FROM generate_series(1, 3000) id"
        )
    t, u = scratch.select([{"name": "public.t", "method": "log_based"}, {"name": "public.u", "method": "log_based"}])
    dest = scratch.destination()
    slot = scratch.config.slot_name

    # 1. the first sync, with a writer running through the snapshot and the stream
    stop = threading.Event()
    writer = threading.Thread(target=churn, args=(server, scratch.source_db, "t", stop, 10_000), daemon=True)
    writer.start()
    try:
        first = sync_log_based(scratch.config, dest, [t])
        assert first.snapshots[t.id] >= 3000 and first.statements and not first.failures
    finally:
        stop.set()
        writer.join(30)
    sync_log_based(scratch.config, dest, [t])
    equal(scratch, dest, t)

    # 2. u added later: its own snapshot from a temporary slot while t streams; both written meanwhile
    scratch.sql("UPDATE t SET v = 'before u' WHERE id <= 100")
    stop = threading.Event()
    writer = threading.Thread(target=churn, args=(server, scratch.source_db, "u", stop, 20_000), daemon=True)
    writer.start()
    try:
        added = sync_log_based(scratch.config, dest, [t, u])
        assert set(added.snapshots) == {u.id} and added.changes(t.id).get("update") == 100
    finally:
        stop.set()
        writer.join(30)
    sync_log_based(scratch.config, dest, [t, u])
    equal(scratch, dest, t, u)
    assert len(scratch.sql("SELECT slot_name FROM pg_replication_slots").split()) == 1  # the temporary one is gone

    # 3. TOAST: partial updates under DEFAULT (t) and FULL (u) identity, an insert then a partial update and a
    #    key change in one batch, a delete and a re-insert of one key, TRUNCATE … RESTART IDENTITY among them
    scratch.sql("ALTER TABLE u REPLICA IDENTITY FULL")
    scratch.sql(
        f"UPDATE t SET v = 'toast kept' WHERE id BETWEEN 200 AND 300; UPDATE u SET v = 'full' WHERE id < 50; "
        f"INSERT INTO t SELECT id, 'fresh', {BIG} FROM generate_series(50001, 50010) id; "
        "UPDATE t SET v = 'fresh+' WHERE id > 50000; UPDATE t SET id = id + 100000 WHERE id = 250; "
        "DELETE FROM t WHERE id = 400; INSERT INTO t VALUES (400, 'again', 'short'); "
        "DELETE FROM u WHERE id = 10"
    )
    third = sync_log_based(scratch.config, dest, [t, u])
    assert third.changes(u.id).get("delete") == 1 and not third.snapshots
    equal(scratch, dest, t, u)
    assert dest.fetch_rows(t)[0][2] is not None  # no TOASTed value became NULL
    scratch.sql(
        "INSERT INTO u VALUES (900001, 'gone soon', 'x'); TRUNCATE u RESTART IDENTITY CASCADE; "
        "INSERT INTO u VALUES (1, 'after truncate', 'y')"
    )
    sync_log_based(scratch.config, dest, [t, u])
    equal(scratch, dest, t, u)

    # 4. u deselected: its snapshot is forgotten (the slot moves past its changes); added back: copied again
    sync_log_based(scratch.config, dest, [t])
    assert u.id not in dest.changes().snapshot_lsns(slot)
    scratch.sql("INSERT INTO u VALUES (2, 'while away', 'z')")
    back = sync_log_based(scratch.config, dest, [t, u])
    assert u.id in back.snapshots
    equal(scratch, dest, t, u)

    # 5. a table that cannot be streamed is refused by name (nothing added to the publication); t goes on
    scratch.sql("CREATE TABLE nokey (a int, b text); INSERT INTO nokey VALUES (1, 'x')")
    nokey = scratch.one({"name": "public.nokey", "method": "log_based", "primary_key": ["a"]})
    scratch.sql("INSERT INTO t VALUES (777777, 'beside a refused table', 'q')")
    mixed = sync_log_based(scratch.config, dest, [t, u, nokey])
    assert "REPLICA IDENTITY FULL" in mixed.failures[nokey.id] and mixed.changes(t.id).get("insert") == 1
    assert "nokey" not in scratch.sql(f"SELECT tablename FROM pg_publication_tables WHERE pubname = '{slot}'")
    scratch.sql("UPDATE nokey SET b = 'y'")  # still works on the source
    scratch.sql("ALTER TABLE nokey REPLICA IDENTITY FULL")
    sync_log_based(scratch.config, dest, [t, u, nokey])
    scratch.sql("UPDATE nokey SET b = 'z'; INSERT INTO nokey VALUES (2, 'w')")
    sync_log_based(scratch.config, dest, [t, u, nokey])
    equal(scratch, dest, t, u, nokey)

    # 6. the slot dropped behind our back, changes meanwhile: the run says so, re-creates it, copies again
    scratch.sql(f"SELECT pg_drop_replication_slot('{slot}')")
    scratch.sql("DELETE FROM t WHERE id < 1000")
    again = sync_log_based(scratch.config, dest, [t, u, nokey])
    assert again.recovered and "is gone from the source" in again.recovered
    assert set(again.snapshots) == {t.id, u.id, nokey.id}
    equal(scratch, dest, t, u, nokey)
    with psycopg2.connect(**server.dsn(scratch.source_db)) as conn:
        status = slot_status(conn, slot)
        assert (
            status is not None and not status.active and dest.changes().applied_lsn(slot) == status.confirmed_flush_lsn
        )
    dest.close()
    scratch.sql(f"SELECT pg_drop_replication_slot('{slot}')")


def test_soft_deletes_keep_the_row_with_its_deletion_time(logical18: LocalPostgres) -> None:
    server = logical18
    scratch = make_scratch(server, "Soft Deletes", log_based={"deletes": "soft"})
    scratch.sql(
        "CREATE TABLE s (id int PRIMARY KEY, v text); INSERT INTO s SELECT g, 'v' FROM generate_series(1, 10) g"
    )
    table = scratch.one({"name": "public.s", "method": "log_based"})
    dest = scratch.destination()
    sync_log_based(scratch.config, dest, [table])
    scratch.sql("DELETE FROM s WHERE id <= 3; INSERT INTO s VALUES (2, 'back')")
    sync_log_based(scratch.config, dest, [table])
    with dest.conn, dest.conn.cursor() as cur:
        cur.execute(f'SELECT id, v, _rds_deleted_at IS NOT NULL FROM "{dest.schema}".s WHERE id <= 4 ORDER BY id')
        assert cur.fetchall() == [(1, "v", True), (2, "back", False), (3, "v", True), (4, "v", False)]
    dest.close()
    scratch.sql(f"SELECT pg_drop_replication_slot('{scratch.config.slot_name}')")


@pytest.mark.parametrize("index", [0, 1], ids=["pg18", "pg15"])
def test_a_publication_that_would_drop_changes_is_refused_by_name(
    logical_servers: list[LocalPostgres], index: int
) -> None:
    """Someone else made the publication this integration uses: a row filter, a column list, operations it does
    not publish. Each is refused by name with its fix, before any copy; the other tables stream meanwhile;
    once fixed, the next sync copies the table and the replica equals the source."""
    scratch = make_scratch(logical_servers[index], f"Odd Publication {index}")
    pub = scratch.config.publication_name
    scratch.sql(
        "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' FROM generate_series(1, 100) g;"
        "CREATE TABLE u (id int PRIMARY KEY, v text); INSERT INTO u SELECT g, 'u' FROM generate_series(1, 10) g;"
        f"CREATE PUBLICATION {pub} FOR TABLE t WHERE (id > 50), u"
    )
    t = scratch.one({"name": "public.t", "method": "log_based"})
    u = scratch.one({"name": "public.u", "method": "log_based"})
    dest = scratch.destination()

    # the filtered table is refused, naming the filter and the fix; `check` says the same; u streams
    first = sync_log_based(scratch.config, dest, [t, u])
    assert set(first.failures) == {t.id}
    assert "row filter WHERE (id > 50)" in first.failures[t.id] and "DROP TABLE" in first.failures[t.id]
    assert t.id not in first.snapshots and t.id not in dest.changes().snapshot_lsns(scratch.config.slot_name)
    findings = {f.subject: f for f in run_checks(scratch.config, [t, u]) if f.severity == "error"}
    assert "row filter" in findings[t.id].message and findings[t.id].fix and "ADD TABLE" in findings[t.id].fix
    equal(scratch, dest, u)
    scratch.sql("UPDATE t SET v = 'changed' WHERE id IN (10, 60); DELETE FROM u WHERE id = 1")
    second = sync_log_based(scratch.config, dest, [t, u])
    assert set(second.failures) == {t.id}
    equal(scratch, dest, u)

    # fixed as the message says: the table is copied whole, then streams
    scratch.sql(f"ALTER PUBLICATION {pub} DROP TABLE t; ALTER PUBLICATION {pub} ADD TABLE t")
    third = sync_log_based(scratch.config, dest, [t, u])
    assert not third.failures and third.snapshots[t.id] == 100
    scratch.sql("UPDATE t SET v = 'after' WHERE id IN (5, 95)")
    sync_log_based(scratch.config, dest, [t, u])
    equal(scratch, dest, t, u)

    # a column list that leaves a selected column out: that table is refused, the other streams
    scratch.sql(f"ALTER PUBLICATION {pub} SET TABLE t (id), u")
    listed = sync_log_based(scratch.config, dest, [t, u])
    assert set(listed.failures) == {t.id} and "leaves out v" in listed.failures[t.id]
    scratch.sql(f"ALTER PUBLICATION {pub} SET TABLE t, u")

    # deletes and truncates not published: the whole run is refused, naming the publication, before any change
    scratch.sql(f"ALTER PUBLICATION {pub} SET (publish = 'insert, update')")
    scratch.sql("DELETE FROM u WHERE id = 2")
    with pytest.raises(SetupNeeded, match=f"publication {pub} does not publish delete, truncate"):
        sync_log_based(scratch.config, dest, [t, u])
    assert (
        "publish = 'insert, update, delete, truncate'"
        in {f.subject: f for f in run_checks(scratch.config, [t, u])}[f"publication {pub}"].fix
    )
    # the delete of 2 never reached the slot: once fixed, every table is copied again, and nothing is lost
    scratch.sql(f"ALTER PUBLICATION {pub} SET (publish = 'insert, update, delete, truncate')")
    scratch.sql("DELETE FROM u WHERE id = 3")
    fixed = sync_log_based(scratch.config, dest, [t, u])
    assert not fixed.failures and set(fixed.snapshots) == {t.id, u.id}
    equal(scratch, dest, t, u)
    scratch.sql("DELETE FROM u WHERE id = 4; UPDATE t SET v = 'streamed' WHERE id = 7")
    assert not sync_log_based(scratch.config, dest, [t, u]).snapshots  # and then it streams again
    equal(scratch, dest, t, u)

    # a partitioned table whose changes would arrive under its partitions' names: refused, with the fix
    scratch.sql(
        "CREATE TABLE p (id int PRIMARY KEY, v text) PARTITION BY RANGE (id);"
        "CREATE TABLE p1 PARTITION OF p FOR VALUES FROM (0) TO (100);"
        "INSERT INTO p SELECT g, 'p' FROM generate_series(1, 20) g;"
        f"ALTER PUBLICATION {pub} ADD TABLE p; ALTER PUBLICATION {pub} SET (publish_via_partition_root = false)"
    )
    parted = scratch.one({"name": "public.p", "method": "log_based"})
    with pytest.raises(SetupNeeded, match="publish_via_partition_root = false: the changes of .*public.p"):
        sync_log_based(scratch.config, dest, [t, u, parted])
    scratch.sql(f"ALTER PUBLICATION {pub} SET (publish_via_partition_root = true); UPDATE p SET v = 'q' WHERE id = 3")
    sync_log_based(scratch.config, dest, [t, u, parted])
    equal(scratch, dest, t, u, parted)
    dest.close()


@pytest.mark.parametrize("index", [0, 1], ids=["pg18", "pg15"])
def test_a_keyless_table_needs_a_key_of_the_users_choosing(logical_servers: list[LocalPostgres], index: int) -> None:
    """A table with REPLICA IDENTITY FULL and no key is refused at selection, with the fix: we do not apply
    changes by matching whole rows, as PostgreSQL's own subscriber does, because a keyless table may hold
    duplicates (one of two equal rows deleted must leave one, which a set-based apply cannot say) and each
    change would scan the replica. With `primary_key:` it streams; a `primary_key:` the rows do not honour is
    refused by name when the copy finds the duplicate, and the other table streams on."""
    scratch = make_scratch(logical_servers[index], f"Keyless {index}")
    scratch.sql(
        "CREATE TABLE k (a int, b text); ALTER TABLE k REPLICA IDENTITY FULL; INSERT INTO k VALUES (1, 'x'), (2, 'y');"
        "CREATE TABLE d (a int, b text); ALTER TABLE d REPLICA IDENTITY FULL; INSERT INTO d VALUES (1, 'x'), (1, 'x');"
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)"
    )
    with pytest.raises(SelectionError, match=r"log_based needs a primary key.*REPLICA IDENTITY FULL.*primary_key:"):
        scratch.one({"name": "public.k", "method": "log_based"})
    k = scratch.one({"name": "public.k", "method": "log_based", "primary_key": ["a"]})
    d = scratch.one({"name": "public.d", "method": "log_based", "primary_key": ["a"]})
    t = scratch.one({"name": "public.t", "method": "log_based"})
    dest = scratch.destination()
    first = sync_log_based(scratch.config, dest, [k, d, t])
    assert set(first.failures) == {d.id} and "not unique on its key: set `primary_key:`" in first.failures[d.id]
    scratch.sql("UPDATE k SET b = 'z' WHERE a = 2; DELETE FROM k WHERE a = 1; INSERT INTO k VALUES (3, 'w')")
    scratch.sql("INSERT INTO t VALUES (2)")
    second = sync_log_based(scratch.config, dest, [k, d, t])
    assert set(second.failures) == {d.id} and second.changes(k.id) == {"update": 1, "delete": 1, "insert": 1}
    equal(scratch, dest, k, t)
    dest.close()
    scratch.sql(f"SELECT pg_drop_replication_slot('{scratch.config.slot_name}')")


@pytest.mark.parametrize("index", [0, 1], ids=["pg18", "pg15"])
def test_publications_for_all_tables_or_a_schema_are_used_as_they_are(
    logical_servers: list[LocalPostgres], index: int
) -> None:
    """A publication made by someone else `FOR TABLES IN SCHEMA` or `FOR ALL TABLES` already sends the tables:
    nothing is altered (ALTER PUBLICATION … ADD TABLE fails on FOR ALL TABLES), a table created later in the
    schema streams once selected, and the replica equals the source."""
    server = logical_servers[index]
    for kind, clause in (("schema", "FOR TABLES IN SCHEMA app"), ("all", "FOR ALL TABLES")):
        scratch = make_scratch(server, f"Wide {kind} {index}")
        pub = scratch.config.publication_name
        scratch.sql(
            "CREATE SCHEMA app; CREATE TABLE app.a (id int PRIMARY KEY, v text); INSERT INTO app.a VALUES (1, 'a');"
            f"CREATE PUBLICATION {pub} {clause}"
        )
        a = scratch.one({"name": "app.a", "method": "log_based"})
        dest = scratch.destination()
        first = sync_log_based(scratch.config, dest, [a])
        assert not first.failures and not first.statements and first.snapshots == {a.id: 1}
        scratch.sql("CREATE TABLE app.b (id int PRIMARY KEY, v text); INSERT INTO app.b VALUES (1, 'b')")
        scratch.sql("UPDATE app.a SET v = 'changed'")
        b = scratch.one({"name": "app.b", "method": "log_based"})
        added = sync_log_based(scratch.config, dest, [a, b])
        assert not added.failures and not added.statements and set(added.snapshots) == {b.id}
        scratch.sql("DELETE FROM app.a; INSERT INTO app.b VALUES (2, 'c')")
        sync_log_based(scratch.config, dest, [a, b])
        equal(scratch, dest, a, b)
        dest.close()
        scratch.sql(f"SELECT pg_drop_replication_slot('{scratch.config.slot_name}')")
