"""Full-table syncs in chunks of pages (CTID ranges) into a new generation, swapped in whole.

Timelines on PG15 and PG18 sources into PostgreSQL and DuckDB: a UUID-keyed table copied chunk by chunk; a sync
stopped after three chunks, rows then moved by updates to pages already copied (which a resumed copy alone
would lose) and read twice (which would double them); the resumed sync starts at the next chunk, sweeps the
changed rows and swaps, and the replica equals the source. A sync killed with SIGKILL mid-way leaves the
previous copy whole for readers, and the next resumes without copying the finished chunks again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from rds_pipeline.engine.core.ranges import PageSource, page_range, page_spans
from rds_pipeline.engine.core.state import Generation, TableState
from rds_pipeline.engine.destinations.base import GENERATIONS_TABLE, next_table
from rds_pipeline.engine.destinations.duckdb import DuckDBDestination
from rds_pipeline.engine.destinations.factory import open_destination
from rds_pipeline.engine.errors import LoadError
from rds_pipeline.engine.replication.plan import Request, plan_sync
from rds_pipeline.engine.replication.status import standings
from rds_pipeline.engine.replication.sync import sync_table
from rds_pipeline.engine.selection import SelectedTable
from rds_pipeline.engine.source.session import SourceSession
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.engine.sync_helpers import Scratch, active_copies, make_scratch
from rds_pipeline_tests.engine.test_sync_duckdb import assert_equal, duck_config

ROWS = 12_000
# fillfactor 100 and ~110-byte rows: about 60 rows a page, 200 pages; chunk_rows 1,000 makes chunks of ~16 pages
TABLE_DDL = f"""
CREATE TABLE events (id uuid PRIMARY KEY, n int NOT NULL, pad text) WITH (fillfactor = 100, autovacuum_enabled = off);
INSERT INTO events SELECT md5(g::text)::uuid, g, repeat('x', 60) FROM generate_series(1, {ROWS}) g;
-- free room on the first pages (rows shrunk in place, then pruned), where later updates can move rows
UPDATE events SET pad = '' WHERE ctid < '(12,0)';
VACUUM ANALYZE events;
"""


# -- the planner (pure) -------------------------------------------------------------------------------------------
def _table(primary_key: tuple[str, ...] = ("id",)) -> SelectedTable:
    from rds_pipeline.engine.source.catalog import Column, Relation

    relation = Relation(
        "db", "public", "t", "table", (Column("id", "uuid", False), Column("v", "text", True)), primary_key
    )
    return SelectedTable(relation, "full_table", None, relation.columns, primary_key, "t")


def test_page_spans_end_open_and_never_empty() -> None:
    assert page_spans(0, 10, 4) == [(0, 4), (4, 8), (8, None)]
    assert page_spans(8, 10, 4) == [(8, None)]
    assert page_spans(12, 10, 4) == [(12, None)]  # the table shrank: one open chunk still reads what is there
    assert page_range(0, 4).predicate() is not None and page_range(0, None).predicate() is None


def test_the_planner_chunks_resumes_and_sweeps() -> None:
    keyed, bare = _table(), _table(())
    pages = PageSource(pages=100, per_chunk=30, since="1000")
    fresh = plan_sync(keyed, TableState(True), Request.catch_up(), None, pages)
    copies = [s for s in fresh.steps if not s.generation.sweep]  # type: ignore[union-attr]
    sweeps = [s for s in fresh.steps if s.generation.sweep]  # type: ignore[union-attr]
    assert [s.key_range.upper for s in copies] == ["(30,0)", "(60,0)", "(90,0)", None]
    assert copies[0].generation.first and not any(s.generation.first for s in fresh.steps[1:])  # type: ignore[union-attr]
    assert copies[-1].generation.copy_done and not copies[-1].generation.swap  # type: ignore[union-attr]
    assert len(sweeps) == 4 and sweeps[-1].generation.swap  # type: ignore[union-attr]
    assert [s.generation.swap for s in fresh.steps].count(True) == 1  # type: ignore[union-attr]
    # without a key: no sweep, the last chunk swaps, and the plan says what that costs
    plain = plan_sync(bare, TableState(True), Request.catch_up(), None, pages)
    assert len(plain.steps) == 4 and plain.steps[-1].generation.swap and plain.notes  # type: ignore[union-attr]
    # resumed at page 60: the chunks before it are not copied again
    under_way = Generation("1000", 100, 60, False, 0, 1234)
    resumed = plan_sync(keyed, TableState(True, generation=under_way), Request.catch_up(), None, pages)
    assert resumed.steps[0].key_range.lower == "(60,0)" and not resumed.steps[0].generation.first  # type: ignore[union-attr]
    assert "resumed at page 60" in resumed.reason
    # resumed in its sweep
    sweeping = Generation("1000", 100, 100, True, 30, 1234)
    late = plan_sync(keyed, TableState(True, generation=sweeping), Request.catch_up(), None, pages)
    assert all(s.generation.sweep for s in late.steps) and late.steps[0].key_range.lower == "(30,0)"  # type: ignore[union-attr]
    # one chunk's worth, a range request, or no page source (PostgreSQL < 14, a view): one COPY as before
    small = PageSource(pages=20, per_chunk=30, since="1")
    assert not plan_sync(keyed, TableState(True), Request.catch_up(), None, small).generation
    assert not plan_sync(keyed, TableState(True), Request.catch_up(), None, None).generation


# -- timelines on real servers ------------------------------------------------------------------------------------
STOP_LOCK = threading.Lock()  # the count is shared by a sync's parallel connections


class StopAfter:
    """The real destination, made to fail a generation's chunk after ``chunks`` committed (a crash between
    chunks, in process). Its ``fresh()`` connections (parallel chunks) share the count."""

    def __init__(self, dest: Any, chunks: int, left: list[int] | None = None, opened: list[int] | None = None) -> None:
        self.dest, self.left = dest, left if left is not None else [chunks]
        self.opened = opened if opened is not None else [0]  # connections the parallel workers opened

    def __getattr__(self, name: str) -> Any:
        return getattr(self.dest, name)

    @contextlib.contextmanager
    def fresh(self) -> Iterator[StopAfter]:
        with STOP_LOCK:
            self.opened[0] += 1
        with self.dest.fresh() as other:
            yield StopAfter(other, 0, self.left, self.opened)

    def load(self, *args: Any, **kwargs: Any) -> Any:
        generation = args[6] if len(args) > 6 else kwargs.get("generation")
        if generation is not None:
            with STOP_LOCK:
                if self.left[0] <= 0:
                    raise RuntimeError("injected: the process died between chunks")
                self.left[0] -= 1
        return self.dest.load(*args, **kwargs)


def _scratch(server: LocalPostgres, kind: str, tmp_path: Path) -> tuple[Scratch, Any]:
    scratch = make_scratch(server)
    if kind == "duckdb":
        config = duck_config(server, scratch.source_db, tmp_path / "chunks.duckdb")
        scratch = dataclasses.replace(scratch, config=config)
    dest = open_destination(scratch.config)
    dest.prepare(scratch.config)
    return scratch, dest


def _replica_rows(server: LocalPostgres, scratch: Scratch, dest: Any, table: SelectedTable) -> list[tuple[Any, ...]]:
    if isinstance(dest, DuckDBDestination):
        assert_equal(server, scratch.source_db, dest, table)
        return []
    assert dest.fetch_rows(table) == scratch.source_rows(table)
    return []


def _pages_of(scratch: Scratch, ids: str) -> dict[str, int]:
    out = scratch.sql(f"SELECT id, (ctid::text::point)[0]::int FROM events WHERE id IN ({ids})")
    return {line.split("|")[0]: int(line.split("|")[1]) for line in out.strip().splitlines() if "|" in line}


@pytest.mark.parametrize("kind", ["postgres", "duckdb"])
@pytest.mark.parametrize("server_name", ["pg18", "pg15"])
def test_a_generation_resumes_sweeps_what_moved_and_swaps_whole(
    server_name: str, kind: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    server = request.getfixturevalue("pg18") if server_name == "pg18" else request.getfixturevalue("pg15_ssl").server
    scratch, dest = _scratch(server, kind, tmp_path)
    scratch.sql(TABLE_DDL)
    table = dataclasses.replace(scratch.one({"name": "public.events", "method": "full_table"}), chunk_rows=1000)
    with SourceSession(scratch.config.source) as session:
        first = sync_table(session, dest, table)
    assert first.plan.generation and first.plan.historical and len(first.steps) >= 20, first.plan.reason
    assert first.report.rows_inserted >= ROWS and first.rows_copied == first.rows_at_commit == ROWS
    _replica_rows(server, scratch, dest, table)
    assert dest.table_state(table).generation is None  # swapped: nothing under way

    # the second sync stops after three chunks: the replica is still the first copy, whole
    scratch.sql("UPDATE events SET n = -n WHERE n % 97 = 0")
    with SourceSession(scratch.config.source) as session, pytest.raises(RuntimeError, match="injected"):
        sync_table(session, StopAfter(dest, 3), table)
    under_way = dest.table_state(table).generation
    assert under_way is not None and not under_way.copy_done and under_way.copied > 0
    assert dest.row_count(table) == ROWS
    copied = under_way.copied
    [standing] = standings(scratch.config, [table], dest)  # `rds-pipeline status` says a copy is under way
    assert standing.lag.endswith(f"a new copy under way: {copied} of {under_way.pages} pages"), standing.lag
    # while it waits: rows on pages not yet copied are updated and move to the free room on pages already copied
    # (a resumed copy alone would lose them), and rows on copied pages grow and move past the end (read twice)
    scratch.sql(
        "UPDATE events SET n = n + 1000000 WHERE ctid >= ('(' || pg_relation_size('events') / 8192 - 12 || ',0)')::tid"
    )
    scratch.sql("UPDATE events SET pad = repeat('y', 200) WHERE ctid >= '(20,0)' AND ctid < '(22,0)'")
    moved = scratch.sql(
        f"SELECT count(*) FILTER (WHERE n > 1000000 AND (ctid::text::point)[0] < {copied}), "
        f"count(*) FILTER (WHERE pad LIKE 'y%' AND (ctid::text::point)[0] >= {copied}) FROM events"
    ).split("|")
    assert int(moved[0]) > 0 and int(moved[1]) > 0, f"the updates did not move rows as the test needs: {moved}"
    scratch.sql("INSERT INTO events SELECT md5(g::text)::uuid, g, 'new' FROM generate_series(20001, 20100) g")

    with SourceSession(scratch.config.source) as session:
        resumed = sync_table(session, dest, table)
    assert resumed.steps[0].key_range.lower == f"({copied},0)", resumed.plan.reason  # finished chunks not re-copied
    swept = [s for s in resumed.steps if s.sweep]
    assert sum(s.report.rows_inserted + s.report.rows_updated for s in swept) > 0  # the sweep found the moved rows
    _replica_rows(server, scratch, dest, table)
    assert resumed.rows_at_commit == resumed.rows_copied == ROWS + 100
    assert dest.table_state(table).generation is None
    dest.close()


def test_a_generation_is_refused_to_a_second_sync_that_planned_it_before(pg18: LocalPostgres, tmp_path: Path) -> None:
    """Two syncs of one table at once: the one whose chunk finds the generation moved on is refused, names the
    table, and keeps nothing; the generation is not doubled."""
    scratch, dest = _scratch(pg18, "postgres", tmp_path)
    scratch.sql(TABLE_DDL)
    table = dataclasses.replace(scratch.one({"name": "public.events", "method": "full_table"}), chunk_rows=1000)
    with SourceSession(scratch.config.source) as session, pytest.raises(RuntimeError):
        sync_table(session, StopAfter(dest, 2), table)
    stale = dest.table_state(table)
    with SourceSession(scratch.config.source) as session, pytest.raises(RuntimeError):
        sync_table(session, StopAfter(dest, 2), table)  # moves the generation on by two chunks
    from rds_pipeline.engine.replication.sync import _copy_step  # one chunk of the stale plan

    pages = PageSource(stale.generation.pages, 16, stale.generation.since)  # type: ignore[union-attr]
    step = plan_sync(table, stale, Request.catch_up(), None, pages).steps[0]
    with SourceSession(scratch.config.source) as session, pytest.raises(LoadError, match="another sync"):
        _copy_step(session, dest, table, step, 1, lambda: None)
    with SourceSession(scratch.config.source) as session:
        sync_table(session, dest, table)
    assert dest.fetch_rows(table) == scratch.source_rows(table)
    dest.close()


KILL_SCRIPT = """
import dataclasses, sys
from rds_pipeline.engine.config import parse_config
from rds_pipeline.engine.destinations.factory import open_destination
from rds_pipeline.engine.replication.sync import sync_table
from rds_pipeline.engine.selection import resolve_selection
from rds_pipeline.engine.source.discovery import discover
from rds_pipeline.engine.source.session import SourceSession

port, password, source_db, dest_db = sys.argv[1:]
creds = {"host": "127.0.0.1", "port": int(port), "user": "postgres", "password": password}
config = parse_config({"integration_name": "Test Replica", "source": {**creds, "database": source_db},
                       "destination": {"type": "postgres", **creds, "database": dest_db}})
[table] = resolve_selection([{"name": "public.big", "method": "full_table", "chunk_rows": 5000}],
                            discover(config.source, databases=[source_db]), source_db)
dest = open_destination(config)
dest.prepare(config)
with SourceSession(config.source) as session:
    sync_table(session, dest, table)
"""


def test_sigkill_mid_generation_readers_see_the_old_copy_and_the_next_sync_resumes(pg18: LocalPostgres) -> None:
    scratch = make_scratch(pg18)
    scratch.sql(
        "CREATE TABLE big (id uuid PRIMARY KEY, n int, pad text);"
        "INSERT INTO big SELECT md5(g::text)::uuid, g, repeat(md5(g::text), 4) FROM generate_series(1, 200000) g;"
        "ANALYZE big"
    )
    table = scratch.one({"name": "public.big", "method": "full_table", "chunk_rows": 5000})
    dest = scratch.destination()
    with scratch.session() as session:
        sync_table(session, dest, table)
    old = dest.fetch_rows(table)
    scratch.sql("UPDATE big SET n = -n WHERE n % 10 = 0")

    seen: list[int] = []
    stop = threading.Event()

    def read() -> None:  # a reader of the replica all along: it only ever sees a whole copy
        conn = psycopg2.connect(**pg18.dsn(scratch.dest_db))
        conn.autocommit = True
        with conn.cursor() as cur:
            while not stop.is_set():
                cur.execute('SELECT count(*), count(*) FILTER (WHERE n < 0) FROM test_replica."big"')
                total, negative = cur.fetchone()
                seen.append(total * 10 + (1 if negative else 0))
                time.sleep(0.005)
        conn.close()

    reader = threading.Thread(target=read)
    reader.start()
    child = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(pg18.port), pg18.password, scratch.source_db, scratch.dest_db],
        env={**os.environ},
    )
    conn = psycopg2.connect(**pg18.dsn(scratch.dest_db))
    conn.autocommit = True
    copied = 0
    deadline = time.monotonic() + 60
    with conn.cursor() as cur:
        while time.monotonic() < deadline and copied < 100:
            cur.execute(f'SELECT coalesce(max(copied), 0) FROM test_replica."{GENERATIONS_TABLE}"')
            copied = cur.fetchone()[0]
            time.sleep(0.002)
    child.kill()  # SIGKILL between or inside chunks
    child.wait()
    time.sleep(0.3)
    stop.set()
    reader.join()
    conn.close()
    assert child.returncode == -9 and copied >= 100
    assert set(seen) == {200000 * 10}, "a reader saw something other than the previous complete copy"
    assert dest.fetch_rows(table) == old
    state = dest.table_state(table)
    assert state.generation is not None and not state.generation.copy_done
    done = state.generation.copied
    with scratch.session() as session:
        resumed = sync_table(session, dest, table)
    assert resumed.steps[0].key_range.lower == f"({done},0)"
    first_pass = [s for s in resumed.steps if not s.sweep]
    assert sum(s.extraction.rows for s in first_pass) < 200000  # the finished chunks were not copied again
    assert dest.fetch_rows(table) == scratch.source_rows(table)
    assert (
        pg18.psql(f"SELECT count(*) FROM pg_tables WHERE tablename = '{next_table('big')}'", scratch.dest_db)
        .strip()
        .endswith("0")
    )
    dest.close()


def test_chunks_of_pages_copy_in_parallel_within_the_cap_and_resume(pg18: LocalPostgres, tmp_path: Path) -> None:
    """`parallel_chunks: 2`: after the first chunk, two workers copy the chunks, each on its own connections (never
    more COPYs of ours at the source than that), their commits keep page order, and a sync stopped part-way
    resumes where the committed chunks end."""
    scratch, dest = _scratch(pg18, "postgres", tmp_path)
    scratch = dataclasses.replace(
        scratch,
        config=dataclasses.replace(
            scratch.config, source=dataclasses.replace(scratch.config.source, parallel_chunks=2)
        ),
    )
    scratch.sql(TABLE_DDL)
    table = dataclasses.replace(scratch.one({"name": "public.events", "method": "full_table"}), chunk_rows=1000)
    stopping = StopAfter(dest, 6)
    with active_copies(pg18, scratch.source_db) as seen:
        with SourceSession(scratch.config.source) as session, pytest.raises(RuntimeError, match="injected"):
            sync_table(session, stopping, table)
        assert stopping.opened[0] == 2  # the parallel path: two workers, each with its own destination
        under_way = dest.table_state(table).generation
        assert under_way is not None and under_way.copied > 0
        scratch.sql("UPDATE events SET n = -n WHERE n % 50 = 0")
        with SourceSession(scratch.config.source) as session:
            resumed = sync_table(session, dest, table)
    assert seen and max(seen) <= 2, f"concurrent COPYs seen: {sorted(set(seen))}"
    assert resumed.steps[0].key_range.lower == f"({under_way.copied},0)"
    assert dest.fetch_rows(table) == scratch.source_rows(table)
    assert dest.primary_key_enforced(table)
    dest.close()
