"""`method: xmin`: incremental by transaction id, for tables with no usable key column and no logical WAL.

- A timeline on PG15 and PG18 sources into PostgreSQL and DuckDB: the first sync copies everything (in chunks of
  pages); a sync with nothing new reads nothing; inserts and updates are read, and only they; a delete is not
  seen (said plainly in the README; ``deletes: detect`` covers it).
- A real wraparound of the 32-bit counter on a throwaway server (``pg_resetwal -x`` just below 2^32): rows written
  after it are found, and the 64-bit bookmark goes past 2^32.
- A bookmark too old for a 32-bit comparison: every row again, with a note.
- A hot standby as the source: what it has replayed is read; what it has not, the next sync reads.
- Refused with the fix: a view, and a table without a primary key.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from psycopg2 import sql

from rds_pipeline.engine.destinations.duckdb import DuckDBDestination
from rds_pipeline.engine.destinations.factory import open_destination
from rds_pipeline.engine.errors import SelectionError
from rds_pipeline.engine.replication.sync import sync_table
from rds_pipeline.engine.selection import SelectedTable, resolve_selection
from rds_pipeline.engine.source.discovery import discover
from rds_pipeline.engine.source.session import SourceSession
from rds_pipeline.local_postgres import LocalPostgres, embedded_bin_dir
from rds_pipeline_tests.conftest import SOURCE_PASSWORD
from rds_pipeline_tests.engine.sync_helpers import Scratch, make_scratch
from rds_pipeline_tests.engine.test_sync_duckdb import assert_equal, duck_config

NOTES = """
CREATE TABLE notes (id uuid PRIMARY KEY, body text, n int);
INSERT INTO notes SELECT md5(g::text)::uuid, repeat('b', 50) || g, g FROM generate_series(1, 5000) g;
ANALYZE notes;
"""


def _scratch(server: LocalPostgres, kind: str, tmp_path: Path) -> tuple[Scratch, Any]:
    scratch = make_scratch(server)
    if kind == "duckdb":
        scratch = dataclasses.replace(scratch, config=duck_config(server, scratch.source_db, tmp_path / "x.duckdb"))
    dest = open_destination(scratch.config)
    dest.prepare(scratch.config)
    return scratch, dest


def _equal(server: LocalPostgres, scratch: Scratch, dest: Any, table: SelectedTable) -> None:
    if isinstance(dest, DuckDBDestination):
        assert_equal(server, scratch.source_db, dest, table)
    else:
        assert dest.fetch_rows(table) == scratch.source_rows(table)


def _sync(scratch: Scratch, dest: Any, table: SelectedTable):  # noqa: ANN202
    with SourceSession(scratch.config.source) as session:
        return sync_table(session, dest, table)


@pytest.mark.parametrize("kind", ["postgres", "duckdb"])
@pytest.mark.parametrize("server_name", ["pg18", "pg15"])
def test_xmin_reads_what_was_written_since_and_only_that(
    server_name: str, kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    server = request.getfixturevalue("pg18") if server_name == "pg18" else request.getfixturevalue("pg15_ssl").server
    scratch, dest = _scratch(server, kind, tmp_path)
    scratch.sql(NOTES)
    table = dataclasses.replace(scratch.one({"name": "public.notes", "method": "xmin"}), chunk_rows=1000)
    first = _sync(scratch, dest, table)
    assert first.rows == 5000 and first.plan.historical and len(first.steps) > 1, first.plan.reason
    _equal(server, scratch, dest, table)
    bookmark = dest.table_state(table).bookmark
    assert bookmark is not None and int(bookmark) > 0

    quiet = _sync(scratch, dest, table)  # nothing written since: nothing read
    assert quiet.rows == 0 and "written since transaction" in quiet.plan.reason

    scratch.sql(
        "INSERT INTO notes SELECT md5(g::text)::uuid, 'new', g FROM generate_series(10001, 10005) g;"
        "UPDATE notes SET body = 'edited' WHERE n IN (1, 2500, 5000);"
        "DELETE FROM notes WHERE n IN (7, 8)"
    )
    later = _sync(scratch, dest, table)
    assert later.rows == 8  # 5 inserted and 3 updated; nothing else was read
    assert (later.report.rows_inserted, later.report.rows_updated) == (5, 3)
    assert int(dest.table_state(table).bookmark) > int(bookmark)
    # a delete writes no row version: the replica keeps the two rows (deletes: detect removes them)
    assert dest.row_count(table) == 5000 + 5 - 2 + 2
    scratch.sql("INSERT INTO notes SELECT md5(g::text)::uuid, 'gone', g FROM generate_series(7, 8) g")  # back
    _sync(scratch, dest, table)
    _equal(server, scratch, dest, table)
    dest.close()


def test_xmin_survives_a_wraparound_of_the_32_bit_counter(work_dir: Path) -> None:
    """A throwaway server set just below 2^32 transactions (``pg_resetwal -x -u`` after freezing every row, with
    the commit log segment it needs): a sync before the wrap, ~3,000 transactions across it, then updates whose
    32-bit xids start again near zero."""
    server = LocalPostgres(embedded_bin_dir(), work_dir / "wrap", password=SOURCE_PASSWORD)
    server.start()
    # every row frozen first (their xmin would otherwise read as "in the future" after the jump)
    server.psql("UPDATE pg_database SET datallowconn = true WHERE datname = 'template0'")
    for database in ("template0", "template1", "postgres"):
        server.psql("VACUUM FREEZE", database)
    server.psql("UPDATE pg_database SET datallowconn = false WHERE datname = 'template0'")
    server.stop()
    start_xid = 2**32 - 2000
    server.run("pg_resetwal", "-x", str(start_xid), "-u", str(start_xid), "-D", str(server.data_dir))
    # the commit log's segment holding that xid (32 pages of 8 kB, 4 xids a byte), which pg_resetwal does not make
    segment = server.data_dir / "pg_xact" / f"{start_xid // (32 * 8192 * 4):04X}"
    segment.write_bytes(bytes(32 * 8192))
    server._own(segment)
    server.start()
    try:
        scratch = make_scratch(server)
        scratch.sql(NOTES)
        table = scratch.one({"name": "public.notes", "method": "xmin"})
        dest = scratch.destination()
        _sync(scratch, dest, table)
        before = int(dest.table_state(table).bookmark)
        assert 2**32 - 2000 < before < 2**32
        conn = psycopg2.connect(**server.dsn(scratch.source_db))
        conn.autocommit = True
        with conn.cursor() as cur:
            for _ in range(3000):  # each its own transaction: the counter wraps
                cur.execute("SELECT txid_current()")
            cur.execute("SELECT txid_current()")
            now = cur.fetchone()[0]
            cur.execute("UPDATE notes SET body = 'after the wrap' WHERE n <= 10 RETURNING xmin::text")
            raw = {int(r[0]) for r in cur.fetchall()}
        conn.close()
        assert now > 2**32 and max(raw) < 10_000  # the rows' 32-bit xmin started again near zero
        later = _sync(scratch, dest, table)
        assert later.rows == 10, later.plan.reason
        assert int(dest.table_state(table).bookmark) > 2**32
        assert dest.fetch_rows(table) == scratch.source_rows(table)
        # a bookmark more than 2^31 transactions old cannot be compared in 32 bits: everything again, said so
        dest.conn.autocommit = True
        with dest.conn.cursor() as cur:
            cur.execute(sql.SQL("UPDATE {} SET bookmark = %s").format(dest.state_table()), (str(now - 2**31 - 5),))
        dest.conn.autocommit = False
        again = _sync(scratch, dest, table)
        assert again.rows == 5000 and any("2^31" in note for note in again.plan.notes)
        dest.close()
    finally:
        server.stop()


def test_xmin_on_a_hot_standby_reads_what_it_replayed(pg18: LocalPostgres, replica: LocalPostgres) -> None:
    scratch = make_scratch(pg18)
    scratch.sql(NOTES)
    standby = dataclasses.replace(
        scratch,
        config=dataclasses.replace(
            scratch.config, source=dataclasses.replace(scratch.config.source, port=replica.port)
        ),
    )
    _replayed(pg18, replica, scratch.source_db)
    table = standby.one({"name": "public.notes", "method": "xmin"})
    dest = scratch.destination()
    first = _sync(standby, dest, table)
    assert first.rows == 5000 and first.extraction.source_in_recovery
    scratch.sql("UPDATE notes SET body = 'primary' WHERE n <= 20")
    _replayed(pg18, replica, scratch.source_db)
    later = _sync(standby, dest, table)
    assert later.rows == 20
    assert dest.fetch_rows(table) == scratch.source_rows(table)
    dest.close()


def _replayed(primary: LocalPostgres, standby: LocalPostgres, database: str) -> None:
    """Wait until the standby shows what the primary holds (the table's rows, as text, in one digest)."""
    digest = "SELECT md5(string_agg(notes::text, ',' ORDER BY id)) FROM notes"
    wanted = primary.psql(digest, database).strip()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if standby.psql(digest, database).strip() == wanted:
                return
        except RuntimeError:
            pass  # the database or table has not been replayed yet
        time.sleep(0.05)
    raise TimeoutError("the standby did not replay in 30 s")


def test_xmin_needs_a_table_with_a_key(pg18: LocalPostgres) -> None:
    scratch = make_scratch(pg18)
    scratch.sql("CREATE TABLE bare (v text); CREATE VIEW v AS SELECT 1 AS id; CREATE TABLE keyed (id int PRIMARY KEY)")
    catalog = discover(scratch.config.source, databases=[scratch.source_db])
    with pytest.raises(SelectionError) as refused:
        resolve_selection(
            [{"name": "public.bare", "method": "xmin"}, {"name": "public.v", "method": "xmin"}],
            catalog,
            scratch.source_db,
        )
    text = str(refused.value)
    assert "no primary key" in text and "primary_key:" in text
    assert "a view has none of its own" in text and "use full_table" in text
    [bare] = resolve_selection(
        [{"name": "public.bare", "method": "xmin", "primary_key": ["v"]}], catalog, scratch.source_db
    )
    assert bare.method == "xmin" and bare.primary_key == ("v",)
