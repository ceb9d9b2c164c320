"""Verify and repair a replica, and `deletes: detect`, as timelines on PG15 and PG18 sources into PostgreSQL and
DuckDB: a sync; the replica edited by hand (a row changed, one deleted, one inserted); `verify` names the ranges
that differ and only those; `repair` re-copies only them and leaves the bookmark; the next `verify` passes.
Then rows deleted at the source leave a key-based replica (or are marked, with soft deletes, and unmarked when
they come back)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from rds_pipeline.engine.core.ranges import KeyRange
from rds_pipeline.engine.destinations.duckdb import DuckDBDestination, dq, run
from rds_pipeline.engine.destinations.factory import open_destination
from rds_pipeline.engine.errors import SelectionError
from rds_pipeline.engine.replication.compare import key_ranges, repair_table, verify_table
from rds_pipeline.engine.replication.sync import sync_table
from rds_pipeline.engine.selection import SelectedTable
from rds_pipeline.engine.source.session import SourceSession
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.engine.sync_helpers import Scratch, make_scratch
from rds_pipeline_tests.engine.test_sync_duckdb import assert_equal, duck_config

ITEMS = """
CREATE TABLE items (
  id uuid PRIMARY KEY, n int NOT NULL, price numeric(10,2), ratio float8, tags text[], flag boolean,
  at timestamptz, raw bytea, body text
);
INSERT INTO items SELECT md5(g::text)::uuid, g, g / 7.0, g / 3.0, ARRAY['t' || (g % 5), 'u'], g % 2 = 0,
  timestamptz '2024-01-01 00:00+00' + g * interval '1 minute 0.5 second', decode(md5(g::text), 'hex'),
  CASE WHEN g % 11 = 0 THEN NULL ELSE 'body ' || g END
FROM generate_series(1, 20000) g;
ANALYZE items;
"""


def _setup(server: LocalPostgres, kind: str, tmp_path: Path, entry: dict[str, Any]) -> tuple[Scratch, Any, Any]:
    scratch = make_scratch(server)
    if kind == "duckdb":
        scratch = dataclasses.replace(scratch, config=duck_config(server, scratch.source_db, tmp_path / "v.duckdb"))
    scratch.sql(ITEMS)
    dest = open_destination(scratch.config)
    dest.prepare(scratch.config)
    return scratch, dest, scratch.one(entry)


def _edit(dest: Any, table: SelectedTable, statement: str) -> None:
    """A hand edit of the replica (outside any sync)."""
    if isinstance(dest, DuckDBDestination):
        run(dest.conn, statement.replace("{t}", dest.target(table)))
        return
    with dest.conn, dest.conn.cursor() as cur:
        cur.execute(statement.replace("{t}", f"{dest.schema}.{table.destination_table}"))


def _equal(server: LocalPostgres, scratch: Scratch, dest: Any, table: SelectedTable) -> None:
    if isinstance(dest, DuckDBDestination):
        assert_equal(server, scratch.source_db, dest, table)
    else:
        assert dest.fetch_rows(table) == scratch.source_rows(table)


@pytest.mark.parametrize("kind", ["postgres", "duckdb"])
@pytest.mark.parametrize("server_name", ["pg18", "pg15"])
def test_verify_names_the_ranges_repair_fixes_only_them(
    server_name: str, kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    server = request.getfixturevalue("pg18") if server_name == "pg18" else request.getfixturevalue("pg15_ssl").server
    scratch, dest, table = _setup(
        server, kind, tmp_path, {"name": "public.items", "method": "key_based", "replication_key": "n"}
    )
    with SourceSession(scratch.config.source) as session:
        sync_table(session, dest, table)
        clean = verify_table(session, dest, table)
    assert clean.passed and len(clean.ranges) > 10, clean.describe()
    bookmark = dest.table_state(table).bookmark

    # by hand: one row changed, one deleted, one inserted (each in a different range, as it happens)
    first, second = scratch.sql("SELECT id FROM items WHERE n IN (100, 15000) ORDER BY n").split()
    _edit(dest, table, f"UPDATE {{t}} SET body = 'edited' WHERE id = '{first}'")
    _edit(dest, table, f"DELETE FROM {{t}} WHERE id = '{second}'")
    _edit(dest, table, "INSERT INTO {t} (id, n, body) VALUES ('ffffffff-0000-0000-0000-000000000000', -1, 'bogus')")
    with SourceSession(scratch.config.source) as session:
        found = verify_table(session, dest, table)
        assert not found.passed and 1 <= len(found.differences) <= 3
        described = found.describe()
        assert "differ from the source" in described and "rds-pipeline repair" in described
        for difference in found.differences:
            assert difference.key_range.describe() in described
        differing = {d.key_range for d in found.differences}
        by_id = {
            r: any(_holds(r, key) for key in (first, second, "ffffffff-0000-0000-0000-000000000000"))
            for r in found.ranges
        }
        assert differing == {r for r, hit in by_id.items() if hit}  # exactly the edited ranges

        done = repair_table(session, dest, table, found)
        assert set(done.repaired) == differing
        assert done.rows_inserted < 20000 * 3 / len(found.ranges) + 100  # only those ranges were re-copied
        again = verify_table(session, dest, table)
        assert again.passed, again.describe()
        sampled = verify_table(session, dest, table, sample=0.25, seed=7)
        assert sampled.checked == round(len(sampled.ranges) * 0.25) and sampled.passed
    assert dest.table_state(table).bookmark == bookmark  # no bookmark moved
    _equal(server, scratch, dest, table)
    dest.close()


def _holds(key_range: Any, key: str) -> bool:
    low, high = key_range.lower, key_range.upper
    return (low is None or key >= low) and (high is None or key < high)


@pytest.mark.parametrize("kind", ["postgres", "duckdb"])
@pytest.mark.parametrize("server_name", ["pg18", "pg15"])
def test_deletes_detect_removes_or_marks_rows_gone_at_the_source(
    server_name: str, kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    server = request.getfixturevalue("pg18") if server_name == "pg18" else request.getfixturevalue("pg15_ssl").server
    entry = {"name": "public.items", "method": "key_based", "replication_key": "n", "deletes": "detect"}
    scratch, dest, table = _setup(server, kind, tmp_path, entry)
    with SourceSession(scratch.config.source) as session:
        sync_table(session, dest, table)
        scratch.sql("DELETE FROM items WHERE n IN (5, 10005, 19999)")
        window = sync_table(session, dest, table, KeyRange("n", 1, 100))  # one window of a backfill: no detection
        assert window.gone == 0 and dest.row_count(table) == 20000
        later = sync_table(session, dest, table)
    assert later.gone == 3 and later.report.rows_deleted == 3
    _equal(server, scratch, dest, table)

    soft = dataclasses.replace(table, soft_deletes=True)
    with SourceSession(scratch.config.source) as session:
        scratch.sql("DELETE FROM items WHERE n IN (6, 7)")
        marked = sync_table(session, dest, soft)
        assert marked.gone == 2
        assert _marked(dest, soft) == 2 and dest.row_count(soft) == 20000 - 3
        # one of them comes back at the source (a new n, past the bookmark): the sync brings it, and unmarks it
        scratch.sql("INSERT INTO items (id, n, body) VALUES (md5('6')::uuid, 30000, 'back')")
        back = sync_table(session, dest, soft)
        assert back.gone == 0 and _marked(dest, soft) == 1
        assert verify_table(session, dest, soft).passed  # soft-deleted rows are not the replica's live rows
    dest.close()


def _marked(dest: Any, table: SelectedTable) -> int:
    if isinstance(dest, DuckDBDestination):
        return int(
            run(
                dest.conn, f"SELECT count(*) FROM {dest.target(table)} WHERE {dq('_rds_deleted_at')} IS NOT NULL"
            ).fetchone()[0]
        )
    with dest.conn, dest.conn.cursor() as cur:
        cur.execute(f'SELECT count(*) FROM {dest.schema}.{table.destination_table} WHERE "_rds_deleted_at" IS NOT NULL')
        return int(cur.fetchone()[0])


def test_ranges_come_from_the_planner_statistics_and_text_keys_split_bytewise(pg18: LocalPostgres) -> None:
    scratch = make_scratch(pg18)
    scratch.sql(
        'CREATE TABLE words (w text COLLATE "C" PRIMARY KEY, v int);'
        "INSERT INTO words SELECT md5(g::text) || 'É', g FROM generate_series(1, 5000) g;"
        "CREATE TABLE fresh (id int PRIMARY KEY); INSERT INTO fresh VALUES (1);"  # never analyzed: one range
        "ANALYZE words"
    )
    words = scratch.one({"name": "public.words"})
    dest = scratch.destination()
    with SourceSession(scratch.config.source) as session:
        conn = session.connection(scratch.source_db)
        ranges = key_ranges(conn, words, dest)
        assert len(ranges) > 10 and all(r.bytewise for r in ranges)
        uppers = [r.upper for r in ranges[:-1]]
        assert uppers == sorted(uppers, key=lambda u: u.encode())
        assert key_ranges(conn, scratch.one({"name": "public.fresh"}), dest) == [ranges[0].__class__()]
        sync_table(session, dest, words)
        assert verify_table(session, dest, words).passed
    dest.close()


def test_deletes_detect_is_refused_where_it_does_not_apply(pg18: LocalPostgres) -> None:
    scratch = make_scratch(pg18)
    scratch.sql("CREATE TABLE bare (v text, n int); CREATE TABLE keyed (id int PRIMARY KEY, n int)")
    with pytest.raises(SelectionError, match="a full_table table sees deletes already"):
        scratch.one({"name": "public.keyed", "deletes": "detect"})
    with pytest.raises(SelectionError, match="no primary key"):
        scratch.one({"name": "public.bare", "method": "key_based", "replication_key": "n", "deletes": "detect"})
    with pytest.raises(SelectionError, match="soft_deletes: applies with `deletes: detect`"):
        scratch.one({"name": "public.keyed", "method": "key_based", "replication_key": "n", "soft_deletes": True})
    with pytest.raises(SelectionError, match="'sometimes' is not a mode"):
        scratch.one({"name": "public.keyed", "method": "key_based", "replication_key": "n", "deletes": "sometimes"})
