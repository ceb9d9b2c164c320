"""The replication engine into PostgreSQL, against real servers: fidelity, incremental semantics, failures."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg2
import pytest

from rds_pipeline.engine.core.ranges import KeyRange
from rds_pipeline.engine.errors import IntegrationRenamed, LoadError
from rds_pipeline.engine.replication.extract import binary_copy
from rds_pipeline.engine.replication.sync import sync_table
from rds_pipeline.engine.selection import resolve_selection
from rds_pipeline.engine.source.catalog import Catalog
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.engine.sync_helpers import Scratch, active_copies, make_scratch, rows_as_text

ZOO_DDL = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS integer CHECK (VALUE > 0);
CREATE TYPE pair AS (a int, b text);
CREATE TABLE zoo (
  id bigint PRIMARY KEY, i2 smallint, i4 integer, i8 bigint, num numeric, num_p numeric(12,4), r real,
  d double precision, m money, b boolean, t text, vc varchar(10), ch char(5), by bytea, u uuid, j json, jb jsonb,
  x xml, dt date, ts timestamp, tstz timestamptz, tm time, tmtz timetz, iv interval, ip inet, net cidr,
  mac macaddr, bits bit(8), vbits varbit, tsv tsvector, tsq tsquery, ir int4range, tr tstzrange, dr daterange,
  nmr nummultirange, arr_i int[], arr_t text[], arr_2d int[][], arr_jb jsonb[], e mood, e_arr mood[],
  dom posint, comp pair, pt point
);
INSERT INTO zoo (id) VALUES (1);  -- every column NULL
INSERT INTO zoo VALUES (
  2, -32768, -2147483648, -9223372036854775808, 'NaN', -99999999.9999, 'NaN', '-0', '-$1,234.56', false,
  E'tab\\there\\nnew line \\\\ back "quote" ''single'' \\u00e9\\u4e2d', '', 'ab', '\\x00ff5c0a', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  '{"b": 1,   "a": [1, 2.50]}', '{"b": 1, "a": [1, 2.50, null], "nested": {"x": "\\u00e9"}}', '<a x="1">t&amp;</a>',
  '-infinity', 'infinity', '-infinity', '24:00:00', '23:59:59.999999+14', '1 year 2 mons -3 days 04:05:06.789',
  '2001:db8::1/64', '10.0.0.0/8', '08:00:2b:01:02:03', B'10100101', B'1', 'a:1 fat:2 cat:3', 'fat & !rat',
  '[1,5)', '[2020-01-01 00:00+00,)', 'empty', '{[1,2.5], [10,11)}', '{1,NULL,3}', '{"a b","c,d","e\\"f",NULL,""}',
  '{{1,2},{3,4}}', ARRAY['{"k": 1}'::jsonb, 'null'::jsonb], 'happy', '{sad,happy}', 7, '(1,"x y")', '(1.5,-2)'
);
INSERT INTO zoo VALUES (
  3, 32767, 2147483647, 9223372036854775807, '123456789012345678901234567890.123456789012345678901234567890',
  0.0001, '3.4028235e38', '1.7976931348623157e308', '0', true, repeat('long ', 2000), 'ten chars!', 'x',
  '', '00000000-0000-0000-0000-000000000000', '[]', '{}', '<empty/>', '0044-03-15 BC', '2024-02-29 23:59:59.999999',
  '1999-12-31 23:59:59.999999+00', '00:00:00', '00:00:00-12', '-178000000 years', '0.0.0.0', '::/0',
  'ff:ff:ff:ff:ff:ff', B'00000000', B'', '', 'a', '(,)', 'empty', '(,)', '{}', '{}', '{}', '{}', '{}', 'sad', '{}',
  2147483647, '(,)', '(0,0)'
);
INSERT INTO zoo (id, num, d, tstz) VALUES (4, 'Infinity', 'Infinity', 'infinity'), (5, '-Infinity', '-Infinity', '2000-01-01 12:00:00.5-07:30');
"""


def zoo_scratch(server_name: str, request: pytest.FixtureRequest) -> Scratch:
    """A scratch source holding the type zoo on PostgreSQL 18 (the embedded wheel has no libxml: its XML values
    are NULL) or on Debian's PostgreSQL 15 (with libxml)."""
    server = request.getfixturevalue("pg18") if server_name == "pg18" else request.getfixturevalue("pg15_ssl").server
    scratch = make_scratch(server)
    ddl = ZOO_DDL
    if server_name == "pg18":
        ddl = ddl.replace("""'<a x="1">t&amp;</a>'""", "NULL").replace("'<empty/>'", "NULL")
    scratch.sql(ddl)
    return scratch


@pytest.mark.parametrize("server_name", ["pg18", "pg15"])
def test_type_zoo_round_trips_exactly(server_name: str, request: pytest.FixtureRequest) -> None:
    """PostgreSQL 18 (embedded wheel, built without libxml: XML values are NULL there) and 15 (Debian, with)."""
    scratch = zoo_scratch(server_name, request)
    pg18 = scratch.server
    table = scratch.one({"name": "public.zoo"})
    dest = scratch.destination()
    with scratch.session() as session:
        result = sync_table(session, dest, table)
    assert result.report.rows_inserted == 5 and result.extraction.rows == 5
    copied = rows_as_text(pg18, scratch.dest_db, dest.target(table), table.column_names, ("id",))
    assert copied == scratch.source_rows(table)
    assert copied[1][table.column_names.index("num")] == "NaN"
    assert copied[2][table.column_names.index("dt")] == "0044-03-15 BC"
    with psycopg2.connect(**pg18.dsn(scratch.dest_db)) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = "
            "'test_replica.zoo'::regclass AND attnum > 0 ORDER BY attnum"
        )
        types = dict(cur.fetchall())
    conn.close()
    assert types["e"] == "text" and types["e_arr"] == "text[]"  # enums -> text
    assert types["dom"] == "integer"  # domains -> base type
    assert types["comp"] == "text"  # composite -> text
    assert types["num_p"] == "numeric(12,4)" and types["arr_2d"] == "integer[]" and types["tr"] == "tstzrange"
    assert types["_rds_extracted_at"] == "timestamp with time zone" and types["_rds_batch_id"] == "text"
    dest.close()


def test_pagila_every_table_and_view_round_trips(pg18: LocalPostgres, pagila_catalog: Catalog) -> None:
    scratch = make_scratch(pg18, integration="Pagila Copy")
    dest = scratch.destination()
    selection = resolve_selection(
        [{"name": r.qualified_name} for r in pagila_catalog.relations], pagila_catalog, "pagila"
    )
    from rds_pipeline.engine.source.session import SourceSession

    source = scratch.config.source.__class__(**{**scratch.config.source.__dict__, "database": "pagila"})
    with SourceSession(source) as session:
        for table in selection:
            result = sync_table(session, dest, table)
            src = rows_as_text(
                pg18,
                "pagila",
                __import__("psycopg2").sql.Identifier(table.relation.schema, table.relation.name),
                table.column_names,
                table.primary_key or table.column_names,
            )
            got = rows_as_text(
                pg18, scratch.dest_db, dest.target(table), table.column_names, table.primary_key or table.column_names
            )
            assert got == src, table.id
            assert result.report.rows_inserted == len(src)
    assert dest.row_count(next(t for t in selection if t.relation.name == "payment")) == 16044
    dest.close()


def test_incremental_inserts_updates_boundary_late_rows_and_null_keys(pg18: LocalPostgres) -> None:
    scratch = make_scratch(pg18)
    scratch.sql(
        "CREATE TABLE events (id int PRIMARY KEY, updated_at timestamptz, v text);"
        "INSERT INTO events VALUES (1, '2024-01-01 10:00+00', 'a'), (2, '2024-01-01 11:00+00', 'b'),"
        "(3, NULL, 'null key')"
    )
    table = scratch.one({"name": "public.events", "method": "key_based", "replication_key": "updated_at"})
    dest = scratch.destination()
    with scratch.session() as session:
        first = sync_table(session, dest, table)
        assert (first.report.rows_inserted, first.report.rows_updated) == (3, 0)
        assert first.bookmark == "2024-01-01 11:00:00+00" and first.extraction.null_key_rows == 1
        assert dest.read_bookmark(table) == "2024-01-01 11:00:00+00"

        # an update, a new row sharing the boundary value, a late row 2 minutes behind, a new NULL-key row
        scratch.sql(
            "UPDATE events SET v = 'a2', updated_at = '2024-01-01 12:00+00' WHERE id = 1;"
            "INSERT INTO events VALUES (4, '2024-01-01 11:00+00', 'same boundary'),"
            "(5, '2024-01-01 10:58+00', 'late'), (6, NULL, 'another null key')"
        )
        second = sync_table(session, dest, table)
        assert second.extraction.parameters["range"].startswith("updated_at in ['2024-01-01 10:55:00+00'")
        assert second.report.rows_inserted == 3  # ids 4, 5, 6
        assert second.report.rows_updated == 3  # id 1 changed; ids 2 and 3 re-read (boundary, NULL key)
        assert second.bookmark == "2024-01-01 12:00:00+00" and second.extraction.null_key_rows == 2
        assert dest.fetch_rows(table) == scratch.source_rows(table)

        # without lookback a late row is missed; with it, it is caught
        scratch.sql("INSERT INTO events VALUES (7, '2024-01-01 11:59+00', 'late again')")
        no_lookback = sync_table(session, dest, table, lookback=0)
        assert no_lookback.report.rows_inserted == 0
        caught = sync_table(session, dest, table, lookback="5 minutes")
        assert caught.report.rows_inserted == 1
        assert dest.fetch_rows(table) == scratch.source_rows(table)
    dest.close()


def test_integer_key_window_and_table_without_primary_key(pg18: LocalPostgres) -> None:
    scratch = make_scratch(pg18)
    scratch.sql(
        "CREATE TABLE log_lines (seq bigint, line text); INSERT INTO log_lines SELECT g, 'l' || g "
        "FROM generate_series(1, 100) g"
    )
    table = scratch.one({"name": "public.log_lines", "method": "key_based", "replication_key": "seq"})
    assert table.primary_key == ()
    dest = scratch.destination()
    with scratch.session() as session:
        later = sync_table(session, dest, table, KeyRange("seq", lower=51, upper=61))
        assert later.report.rows_inserted == 10 and later.bookmark is None  # keys below 51 not copied: a gap
        window = sync_table(session, dest, table, KeyRange("seq", upper=51, include_nulls=True))
        assert window.report.rows_inserted == 50 and window.bookmark == "50"  # from the start: contiguous
        rest = sync_table(session, dest, table)  # from the bookmark: appends (no primary key), rows >= 50
        assert rest.report.rows_inserted == 51 and rest.bookmark == "100"
    assert dest.row_count(table) == 111  # 50 and 51..60 twice: without a key, appends are not merged
    dest.close()


def test_full_table_range_replaces_only_its_range_atomically(pg18: LocalPostgres) -> None:
    scratch = make_scratch(pg18)
    scratch.sql(
        "CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items SELECT g, 'v' || g "
        "FROM generate_series(1, 1000) g"
    )
    table = scratch.one({"name": "public.items"})
    dest = scratch.destination()
    with scratch.session() as session:
        sync_table(session, dest, table)
        scratch.sql("DELETE FROM items WHERE id IN (10, 600); UPDATE items SET v = 'changed' WHERE id = 20")
        chunk = sync_table(session, dest, table, KeyRange("id", lower=1, upper=501))
        assert (chunk.report.rows_deleted, chunk.report.rows_inserted) == (500, 499)
        rows = dict(dest.fetch_rows(table))
        assert "10" not in rows and rows["20"] == "changed" and "600" in rows  # other ranges untouched
        whole = sync_table(session, dest, table)
        assert whole.report.rows_deleted == 999 and whole.report.rows_inserted == 998
        assert dest.fetch_rows(table) == scratch.source_rows(table)
    dest.close()


def test_schema_evolution(pg18: LocalPostgres) -> None:
    scratch = make_scratch(pg18)
    scratch.sql(
        "CREATE TABLE evo (id int PRIMARY KEY, keep text, gone text NOT NULL, n int);"
        "INSERT INTO evo VALUES (1, 'k', 'g', 5)"
    )
    dest = scratch.destination()
    with scratch.session() as session:
        sync_table(session, dest, scratch.one({"name": "public.evo"}))
        scratch.sql(
            "ALTER TABLE evo ADD COLUMN added timestamptz DEFAULT '2024-05-01 00:00+00';"
            "ALTER TABLE evo DROP COLUMN gone; ALTER TABLE evo ALTER COLUMN n TYPE bigint;"
            "INSERT INTO evo VALUES (2, 'k2', 9000000000)"
        )
        table = scratch.one({"name": "public.evo"})
        result = sync_table(session, dest, table)
    assert result.report.warnings == (  # in source column order
        "column n changed type integer -> bigint (existing values cast)",
        "column added (timestamp with time zone) added to test_replica.evo",
        "column gone is no longer replicated; kept in the destination, NULL in new rows",
    )
    rows = rows_as_text(pg18, scratch.dest_db, dest.target(table), ("id", "n", "added", "gone"), ("id",))
    assert rows == [("1", "5", "2024-05-01 00:00:00+00", None), ("2", "9000000000", "2024-05-01 00:00:00+00", None)]
    dest.close()


def test_reset_forgets_bookmark_and_data(pg18: LocalPostgres, tmp_path: Path) -> None:
    scratch = make_scratch(pg18)
    scratch.sql("CREATE TABLE r (id int PRIMARY KEY, ts timestamptz); INSERT INTO r VALUES (1, now()), (2, now())")
    table = scratch.one({"name": "public.r", "method": "key_based", "replication_key": "ts"})
    dest = scratch.destination()
    with scratch.session() as session:
        sync_table(session, dest, table)
        assert dest.read_bookmark(table) is not None
        dest.reset(table)
        assert dest.read_bookmark(table) is None
        with pytest.raises(psycopg2.errors.UndefinedTable):
            dest.row_count(table)
        dest.conn.rollback()
        again = sync_table(session, dest, table)
    assert again.report.rows_inserted == 2 and again.extraction.bookmark_before is None
    dest.close()


def test_permanent_error_names_the_table_and_fails_at_once(
    pg18: LocalPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    scratch = make_scratch(pg18)
    scratch.sql(
        "CREATE TABLE locked (id int PRIMARY KEY); CREATE ROLE no_select_user LOGIN PASSWORD 'nsu-pw-1';"
        "GRANT USAGE ON SCHEMA public TO no_select_user"
    )
    table = scratch.one({"name": "public.locked"})
    limited = scratch.config.source.__class__(
        **{
            **scratch.config.source.__dict__,
            "user": "no_select_user",
            "password": __import__("rds_pipeline.engine.secrets", fromlist=["Secret"]).Secret("nsu-pw-1"),
        }
    )
    from rds_pipeline.engine.source.session import SourceSession

    dest = scratch.destination()
    with caplog.at_level("WARNING"), SourceSession(limited) as session, pytest.raises(LoadError) as info:
        sync_table(session, dest, table, backoff_seconds=5)
    assert not [r for r in caplog.records if "retrying" in r.getMessage()]  # failed at once: no retry
    assert str(info.value).startswith(f"{table.id}: permission denied")
    assert "rds-pipeline check" in str(info.value)
    dest.close()


def test_dropped_connection_mid_copy_is_retried(pg18: LocalPostgres) -> None:
    scratch = make_scratch(pg18)
    scratch.sql(
        "CREATE TABLE wide (id int PRIMARY KEY, pad text);"
        "INSERT INTO wide SELECT g, repeat(md5(g::text), 20) FROM generate_series(1, 200000) g"
    )
    table = scratch.one({"name": "public.wide"})
    dest = scratch.destination()
    killed: list[int] = []

    def kill_source_copy() -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not killed:
            out = scratch.sql(
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'rds_pipeline' "
                "AND query LIKE 'COPY (SELECT%' AND state = 'active'",
                "postgres",
            ).split()
            if out:
                scratch.sql(f"SELECT pg_terminate_backend({int(out[0])})", "postgres")
                killed.append(int(out[0]))
            time.sleep(0.01)

    killer = threading.Thread(target=kill_source_copy)
    killer.start()
    with scratch.session() as session:
        result = sync_table(session, dest, table, backoff_seconds=0.1)
    killer.join()
    assert killed, "the source COPY was never seen running"
    assert result.attempts == 2
    assert dest.row_count(table) == 200000
    dest.close()


KILL_SCRIPT = """
import sys
from rds_pipeline_tests.engine.test_sync_postgres import _child_sync
_child_sync(*sys.argv[1:])
"""


def _child_sync(port: str, password: str, source_db: str, dest_db: str) -> None:
    from rds_pipeline.engine.config import parse_config
    from rds_pipeline.engine.destinations.postgres import PostgresDestination
    from rds_pipeline.engine.source.discovery import discover
    from rds_pipeline.engine.source.session import SourceSession

    creds = {"host": "127.0.0.1", "port": int(port), "user": "postgres", "password": password}
    config = parse_config(
        {
            "integration_name": "Test Replica",
            "source": {**creds, "database": source_db},
            "destination": {"type": "postgres", **creds, "database": dest_db},
        }
    )
    catalog = discover(config.source, databases=[source_db])
    [table] = resolve_selection(
        [{"name": "public.big", "method": "key_based", "replication_key": "id"}], catalog, source_db
    )
    dest = PostgresDestination(config.destination, config.destination_schema)
    dest.prepare(config)
    with SourceSession(config.source) as session:
        sync_table(session, dest, table)


def test_sigkill_mid_copy_loses_and_duplicates_nothing(pg18: LocalPostgres) -> None:
    scratch = make_scratch(pg18)
    scratch.sql(
        "CREATE TABLE big (id int PRIMARY KEY, pad text);"
        "INSERT INTO big SELECT g, repeat(md5(g::text), 10) FROM generate_series(1, 300000) g"
    )
    table = scratch.one({"name": "public.big", "method": "key_based", "replication_key": "id"})
    dest = scratch.destination()
    with scratch.session() as session:  # a first sync of part of it, so there is a bookmark and data
        sync_table(session, dest, table, KeyRange("id", upper=1001, include_nulls=True))
    assert dest.read_bookmark(table) == "1000"
    child = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(pg18.port), pg18.password, scratch.source_db, scratch.dest_db],
        env={**os.environ},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        progress = scratch.sql(
            "SELECT coalesce(max(tuples_processed), 0) FROM pg_stat_progress_copy WHERE command = 'COPY FROM'",
            "postgres",
        ).strip()
        if int(progress or 0) > 1000:
            break
        time.sleep(0.01)
    child.kill()  # SIGKILL mid-copy
    child.wait()
    assert child.returncode == -9
    time.sleep(0.5)
    assert dest.read_bookmark(table) == "1000"  # the bookmark never moved
    assert dest.row_count(table) == 1000  # the half-copied rows were never committed
    with scratch.session() as session:
        sync_table(session, dest, table)
    assert dest.fetch_rows(table) == scratch.source_rows(table)
    assert dest.read_bookmark(table) == "300000"
    dest.close()


def test_a_rename_is_refused_and_a_second_integration_loads_beside(pg18: LocalPostgres, tmp_path: Path) -> None:
    scratch = make_scratch(pg18, integration="First Name", tables=["public.t"])
    scratch.sql(
        "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);"
        "CREATE TABLE other (id int PRIMARY KEY); INSERT INTO other VALUES (2)"
    )
    from rds_pipeline.engine.destinations.duckdb import DuckDBDestination
    from rds_pipeline.engine.destinations.postgres import PostgresDestination

    def config(name: str, tables: list[str], **extra: object):  # noqa: ANN202
        return dataclasses.replace(scratch.config, integration_name=name, tables=tables, **extra)

    def destinations(cfg):  # noqa: ANN001, ANN202 - PostgreSQL and DuckDB, same rules
        return [
            PostgresDestination(cfg.destination, cfg.destination_schema),
            DuckDBDestination(tmp_path / "both.duckdb", cfg.destination_schema),
        ]

    first = config("First Name", ["public.t"])
    with scratch.session() as session:
        for dest in destinations(first):
            dest.prepare(first)
            sync_table(session, dest, scratch.one({"name": "public.t"}))
            dest.close()
    renamed = config("Second Name", ["public.t"])
    for dest in destinations(renamed):
        with pytest.raises(IntegrationRenamed) as info:
            dest.prepare(renamed)
        message = str(info.value)
        assert "integration 'First Name' already loads from this source into schema 'first_name'" in message
        assert f"{scratch.source_db}.public.t" in message and "allow_integration_rename: true" in message
        if isinstance(dest, PostgresDestination):  # nothing written: not even the new schema
            assert (
                scratch.sql("SELECT count(*) FROM pg_namespace WHERE nspname = 'second_name'", scratch.dest_db).strip()
                == "0"
            )
        else:
            assert (
                dest.conn.execute("SELECT count(*) FROM duckdb_schemas() WHERE schema_name = 'second_name'").fetchone()[
                    0
                ]
                == 0
            )
        dest.prepare(config("Second Name", ["public.t"], allow_integration_rename=True))  # the explicit override
        dest.close()
    # a second integration of the same source, other tables, another schema: side by side
    second = config("Second Integration", ["public.other"])
    with scratch.session() as session:
        for dest in destinations(second):
            dest.prepare(second)
            sync_table(session, dest, scratch.one({"name": "public.other"}))
            assert dest.table_state(scratch.one({"name": "public.other"})).bookmark is None
            assert dest.count_rows(scratch.one({"name": "public.other"}), KeyRange()) == 1
            dest.close()
    for dest in destinations(first):  # and the first one still loads
        dest.prepare(first)
        dest.close()
    assert "first_name" in scratch.sql(
        "SELECT string_agg(schema_name, ',' ORDER BY 1) FROM rds_pipeline_meta.integration_schemas", scratch.dest_db
    )


def test_a_long_copy_logs_its_progress(pg18: LocalPostgres, monkeypatch: pytest.MonkeyPatch) -> None:
    from rds_pipeline.engine.core import copy_out

    monkeypatch.setattr(copy_out, "PROGRESS_SECONDS", 0.0)  # every chunk counts as "10 s later"
    scratch = make_scratch(pg18)
    scratch.sql(
        "CREATE TABLE p (id int PRIMARY KEY, pad text); INSERT INTO p SELECT g, repeat('x', 500) "
        "FROM generate_series(1, 20000) g; ANALYZE p"
    )
    dest = scratch.destination()
    with scratch.session() as session:
        result = sync_table(session, dest, scratch.one({"name": "public.p"}))
    last = result.extraction.progress[-1]
    assert last.startswith(f"copying {scratch.source_db}.public.p: ") and "MiB/s" in last
    assert "rows/s" in last and "of ~20,000 rows, ETA" in last  # from the catalog's row estimate and size
    assert result.extraction.bytes > 10_000_000
    dest.close()


def test_concurrent_runs_of_one_table_converge(pg18: LocalPostgres) -> None:
    """A backfill's windows and a tick running at once on a table never synced: both commit (the one that
    lost the race to create the table retries), and the bookmark ends at the greatest key, not behind it."""
    import threading

    scratch = make_scratch(pg18)
    scratch.sql(
        "CREATE TABLE c (id int PRIMARY KEY, pad text);"
        "INSERT INTO c SELECT g, repeat(md5(g::text), 4) FROM generate_series(1, 200000) g"
    )
    table = scratch.one({"name": "public.c", "method": "key_based", "replication_key": "id"})
    errors: list[BaseException] = []

    def run(request: KeyRange | None) -> None:
        dest = scratch.destination()
        try:
            with scratch.session() as session:
                sync_table(session, dest, table, request, backoff_seconds=0.2)
        except BaseException as exc:  # noqa: BLE001 - asserted below
            errors.append(exc)
        finally:
            dest.close()

    workers = [
        threading.Thread(target=run, args=(r,))
        for r in (None, KeyRange("id", upper=1000, include_nulls=True), KeyRange("id", 1000, 2000))
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert not errors, errors
    dest = scratch.destination()
    assert dest.read_bookmark(table) == "200000"
    assert dest.fetch_rows(table) == scratch.source_rows(table)
    dest.close()


def test_the_registry_of_earlier_versions_is_carried_over(pg18: LocalPostgres) -> None:
    """A destination loaded by an earlier version (registry keyed by source) still refuses a rename."""
    scratch = make_scratch(pg18, integration="Old Name", tables=["public.t"])
    scratch.sql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
    config = scratch.config
    scratch.sql(
        f"""
        CREATE SCHEMA rds_pipeline_meta;
        CREATE TABLE rds_pipeline_meta.integrations (source_key text PRIMARY KEY, integration_name text NOT NULL,
            schema_name text NOT NULL, registered_at timestamptz NOT NULL DEFAULT now());
        INSERT INTO rds_pipeline_meta.integrations VALUES ('{config.source_key}', 'Old Name', 'old_name');
        CREATE SCHEMA old_name;
        CREATE TABLE old_name._rds_pipeline_state (table_id text PRIMARY KEY, destination_table text NOT NULL,
            replication_key text, bookmark text, updated_at timestamptz NOT NULL DEFAULT now());
        INSERT INTO old_name._rds_pipeline_state (table_id, destination_table) VALUES ('{scratch.source_db}.public.t', 't');
    """,
        scratch.dest_db,
    )
    from rds_pipeline.engine.destinations.postgres import PostgresDestination

    renamed = dataclasses.replace(config, integration_name="New Name")
    dest = PostgresDestination(renamed.destination, renamed.destination_schema)
    with pytest.raises(IntegrationRenamed):
        dest.prepare(renamed)
    dest.close()
    same = PostgresDestination(config.destination, config.destination_schema)
    same.prepare(config)  # the old name goes on loading, and gains covered_to in its state table
    assert same.table_state(scratch.one({"name": "public.t"})).covered_to is None
    same.close()


def test_a_first_load_waits_for_the_tables_creator_beyond_lock_timeout(pg18: LocalPostgres) -> None:
    """The first load of a table creates it in its own transaction (COPY FREEZE, the primary key built after the
    rows). A second first load started meanwhile waits for that commit, even past the destination's
    lock_timeout, then merges into the table it now sees, on its first attempt; the key is there and unique."""
    scratch = make_scratch(pg18)
    scratch.sql(
        "CREATE TABLE w (id int PRIMARY KEY, pad text);"
        "INSERT INTO w SELECT g, md5(g::text) FROM generate_series(1, 5000) g"
    )
    table = scratch.one({"name": "public.w", "method": "key_based", "replication_key": "id"})
    scratch = dataclasses.replace(
        scratch,
        config=dataclasses.replace(
            scratch.config, destination=dataclasses.replace(scratch.config.destination, lock_timeout_seconds=1)
        ),
    )
    dest = scratch.destination()
    schema = scratch.config.destination_schema
    # a creator by hand: holds the creation lock, creates the table, and commits 3 s later
    creator = psycopg2.connect(
        host=pg18.host, port=pg18.port, user=pg18.superuser, password=pg18.password, dbname=scratch.dest_db
    )
    with creator.cursor() as cur:
        cur.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))", (f'rds_pipeline create "{schema}"."w"',))
        cur.execute(
            f'CREATE TABLE "{schema}".w (id int PRIMARY KEY, pad text, _rds_extracted_at timestamptz '
            "NOT NULL DEFAULT now(), _rds_batch_id text)"
        )
    timer = threading.Timer(3.0, creator.commit)
    timer.start()
    started = time.monotonic()
    with scratch.session() as session:
        result = sync_table(session, dest, table, backoff_seconds=0.2)
    timer.join()
    creator.close()
    assert time.monotonic() - started >= 2.5  # it waited for the creator
    assert result.attempts == 1 and result.report.rows_inserted == 5000
    assert dest.fetch_rows(table) == scratch.source_rows(table)
    assert dest.primary_key_enforced(table)
    dest.close()

    # a table created by the load itself: its key exists after the COPY, and the rows were written frozen (COPY
    # FREEZE marks the pages it fills whole)
    scratch.sql(
        "CREATE TABLE f (id int PRIMARY KEY, pad text);"
        "INSERT INTO f SELECT g, md5(g::text) FROM generate_series(1, 3000) g"
    )
    fresh = scratch.one({"name": "public.f", "method": "full_table"})
    dest = scratch.destination()
    with scratch.session() as session:
        sync_table(session, dest, fresh)
    assert dest.primary_key_enforced(fresh)
    frozen = pg18.psql(
        "CREATE EXTENSION IF NOT EXISTS pg_visibility; "
        "SELECT count(*) FILTER (WHERE all_frozen) || ' of ' || count(*) FROM pg_visibility_map("
        f"'\"{schema}\".f')",
        scratch.dest_db,
    )
    frozen_pages, _, pages = frozen.strip().partition(" of ")
    assert int(frozen_pages) > 0 and int(pages) > 0, frozen  # a plain COPY leaves every page unfrozen
    dest.close()


def with_parallel_chunks(scratch: Scratch, parallel: int) -> Scratch:
    return dataclasses.replace(
        scratch,
        config=dataclasses.replace(
            scratch.config, source=dataclasses.replace(scratch.config.source, parallel_chunks=parallel)
        ),
    )


def id_chunks(size: int, end: int) -> list[KeyRange]:
    """Chunks of ``size`` ids up to ``end``, the first open below (with NULLs) and the last open above."""
    edges = list(range(size + 1, end, size))
    chunks = [KeyRange("id", upper=edges[0], include_nulls=True)]
    chunks += [KeyRange("id", lo, hi) for lo, hi in zip(edges, edges[1:], strict=False)]
    return [*chunks, KeyRange("id", lower=edges[-1])]


def test_a_history_copies_its_chunks_in_parallel_within_the_cap(pg18: LocalPostgres) -> None:
    """`parallel_chunks: 2`: after the first chunk (which creates the table), two chunks copy at once, each on its
    own source connection; the source never sees more than two of our COPYs. The replica equals the source and
    the bookmark ends at the greatest key: the copies overlapped, the commits kept key order. Then a later
    sync, with new rows, copies only those. (The source is a view that pauses 0.5 s at the start of each
    chunk, so the overlap is there to see whatever the machine's load.)"""
    scratch = make_scratch(pg18)
    scratch.sql(
        "CREATE TABLE base (id int PRIMARY KEY, pad text);"
        "INSERT INTO base SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, 40000) g;"
        "CREATE VIEW wide AS SELECT id, pad FROM base WHERE id % 5000 <> 1 OR pg_sleep(0.5) IS NOT NULL"
    )
    scratch = with_parallel_chunks(scratch, 2)
    table = scratch.one({"name": "public.wide", "method": "key_based", "replication_key": "id", "primary_key": ["id"]})
    chunks = id_chunks(5000, 40000)
    dest = scratch.destination()
    with active_copies(pg18, scratch.source_db) as seen, scratch.session() as session:
        result = sync_table(session, dest, table, chunks=chunks)
    assert len(result.steps) == len(chunks) and result.plan.historical
    assert max(seen) == 2, f"concurrent COPYs seen: {sorted(set(seen))}"
    assert {s.extraction.parameters["format"] for s in result.steps} == {"binary"}
    # copy_format: text forces text; auto moves text through an SSH tunnel (binary is more bytes)
    assert binary_copy(dest, table, "text") == (False, "text (copy_format: text)")
    assert binary_copy(dest, table, "auto", tunnelled=True) == (False, "text (through the SSH tunnel: fewer bytes)")
    assert dest.read_bookmark(table) == "40000"
    assert dest.fetch_rows(table) == scratch.source_rows(table)
    assert dest.primary_key_enforced(table)

    scratch.sql("INSERT INTO base SELECT g, 'new' FROM generate_series(40001, 40100) g")
    with scratch.session() as session:
        later = sync_table(session, dest, table, chunks=chunks, lookback=0)
    assert not later.plan.historical and later.report.rows_inserted == 100
    assert dest.fetch_rows(table) == scratch.source_rows(table)
    dest.close()


def test_a_chunk_that_fails_in_parallel_leaves_the_others_and_the_next_sync_finishes(pg18: LocalPostgres) -> None:
    """Timeline: a history in parallel chunks where one chunk's rows cannot be read (a view dividing by zero on
    one key). The sync fails naming the table; the chunks before it committed and the bookmark stops below
    it; no backend is left on the source. The view is fixed; the next sync copies the rest, and the replica
    equals the source."""
    scratch = make_scratch(pg18)
    scratch.sql(
        "CREATE TABLE base (id int PRIMARY KEY, pad text);"
        "INSERT INTO base SELECT g, md5(g::text) FROM generate_series(1, 80000) g;"
        "CREATE VIEW v AS SELECT id, pad, 100 / (id - 50000) AS q FROM base"
    )
    scratch = with_parallel_chunks(scratch, 2)
    table = scratch.one({"name": "public.v", "method": "key_based", "replication_key": "id", "primary_key": ["id"]})
    chunks = id_chunks(10000, 80000)
    dest = scratch.destination()
    with scratch.session() as session, pytest.raises(LoadError, match=r"public\.v: .*division by zero"):
        sync_table(session, dest, table, chunks=chunks, backoff_seconds=0.1)
    bookmark = int(dest.read_bookmark(table))
    assert 10000 <= bookmark < 50000  # contiguous chunks only: never past the failed one
    copied = {row[0] for row in dest.fetch_rows(table)}
    assert set(range(1, bookmark + 1)) <= {int(i) for i in copied} and "50000" not in copied
    left = pg18.psql(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'rds_pipeline' AND state <> 'idle'",
        scratch.source_db,
    ).strip()
    assert left == "0"

    scratch.sql("CREATE OR REPLACE VIEW v AS SELECT id, pad, 100 / greatest(abs(id - 50000), 1) AS q FROM base")
    with scratch.session() as session:
        sync_table(session, dest, table, chunks=chunks, lookback=0)
    assert dest.read_bookmark(table) == "80000"
    assert dest.fetch_rows(table) == scratch.source_rows(table)
    dest.close()
