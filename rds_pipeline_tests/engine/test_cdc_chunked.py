"""A large table's snapshot copied chunk by chunk between stream catch-ups (``replication/cdc/chunked.py``), as a
timeline on PostgreSQL 18 and 15, into PostgreSQL and DuckDB:

- a table already streaming, then a big one added while a writer inserts, updates, deletes and moves keys
  across chunks: the slot confirms past each chunk before the next is read (WAL is released during the copy),
  the other table's changes are applied between chunks, and the replica equals the source;
- a run killed after two of four chunks resumes at the third, copying nothing twice;
- a TRUNCATE in the middle voids that table's copy only; the next sync copies it again.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from rds_pipeline.engine.core.ranges import KeyRange
from rds_pipeline.engine.destinations.factory import open_destination
from rds_pipeline.engine.replication.cdc import chunked
from rds_pipeline.engine.replication.cdc.flow import sync_log_based
from rds_pipeline.engine.selection import SelectedTable
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.engine.sync_helpers import Scratch, make_scratch

ROWS = 20_000
CHUNKS = [
    KeyRange("id", upper=5001),
    KeyRange("id", lower=5001, upper=10001),
    KeyRange("id", lower=10001, upper=15001),
    KeyRange("id", lower=15001),
]


def writer(server: LocalPostgres, database: str, stop: threading.Event) -> None:
    """Small transactions across the whole key space until stopped: inserts, updates, deletes, key moves."""
    conn = psycopg2.connect(**server.dsn(database))
    conn.autocommit = True
    n = 0
    with conn.cursor() as cur:
        while not stop.is_set():
            n += 1
            step = (n * 7919) % ROWS + 1
            cur.execute("INSERT INTO big VALUES (%s, 'inserted') ON CONFLICT DO NOTHING", (ROWS + n,))
            cur.execute("UPDATE big SET v = v || '+' WHERE id = %s", (step,))
            cur.execute("DELETE FROM big WHERE id = %s", ((step * 3) % ROWS + 1,))
            cur.execute(  # a key moved to another chunk
                "UPDATE big SET id = id + %s WHERE id = %s AND NOT EXISTS (SELECT 1 FROM big WHERE id = %s)",
                (7000, (step * 5) % ROWS + 1, (step * 5) % ROWS + 1 + 7000),
            )
            cur.execute("UPDATE small SET v = %s WHERE id = 1", (f"tick {n}",))
    conn.close()


def rows(dest: Any, scratch: Scratch, table: SelectedTable) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """The replica's rows and the source's, as (int id, text) in key order."""
    mine = sorted((int(r[0]), r[1]) for r in dest.fetch_rows(table))
    theirs = sorted((int(r[0]), r[1]) for r in scratch.source_rows(table))
    return mine, theirs


def confirmed(server: LocalPostgres, database: str, slot: str) -> int:
    text = server.psql(f"SELECT confirmed_flush_lsn - '0/0' FROM pg_replication_slots WHERE slot_name = '{slot}'")
    return int(text.strip())


@pytest.mark.parametrize("duck", [False, True], ids=["postgres", "duckdb"])
@pytest.mark.parametrize("index", [0, 1], ids=["pg18", "pg15"])
def test_a_big_table_is_copied_chunk_by_chunk_between_catch_ups(
    logical_servers: list[LocalPostgres], tmp_path: Path, index: int, duck: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = logical_servers[index]
    top = {"destination": {"type": "duckdb", "path": str(tmp_path / "c.duckdb")}} if duck else {}
    scratch = make_scratch(server, f"Chunked {index} {duck}", **top)
    scratch.sql(
        "CREATE TABLE small (id int PRIMARY KEY, v text); INSERT INTO small VALUES (1, 'start');"
        f"CREATE TABLE big (id bigint PRIMARY KEY, v text); INSERT INTO big SELECT g, 'v' || g "
        f"FROM generate_series(1, {ROWS}) g"
    )
    small = scratch.one({"name": "public.small", "method": "log_based"})
    big = scratch.one({"name": "public.big", "method": "log_based"})
    dest = open_destination(scratch.config)
    slot = scratch.config.slot_name
    assert sync_log_based(scratch.config, dest, [small]).snapshots == {small.id: 1}

    # 1. big added under a writer: each chunk under its own snapshot, the slot confirming between chunks
    positions: list[int] = []
    real = chunked.snapshot_tables

    def watched(*args: Any, **kwargs: Any) -> Any:
        positions.append(confirmed(server, scratch.source_db, slot))
        return real(*args, **kwargs)

    monkeypatch.setattr(chunked, "snapshot_tables", watched)
    stop = threading.Event()
    thread = threading.Thread(target=writer, args=(server, scratch.source_db, stop), daemon=True)
    thread.start()
    try:
        added = sync_log_based(scratch.config, dest, [small, big], chunks={big.id: CHUNKS})
    finally:
        stop.set()
        thread.join(30)
    assert (
        not added.failures and ROWS - 2000 < added.snapshots[big.id] < 2 * ROWS
    )  # every chunk (moves may count twice)
    assert len(positions) == 4 and positions == sorted(positions) and positions[-1] > positions[0]
    assert added.changes(small.id).get("update", 0) > 0  # the other table streamed during the copy
    assert dest.changes().snapshot_progress(slot) == {} and big.id in dest.changes().snapshot_lsns(slot)
    sync_log_based(scratch.config, dest, [small, big], chunks={big.id: CHUNKS})
    mine, theirs = rows(dest, scratch, big)
    assert mine == theirs
    assert rows(dest, scratch, small)[0] == rows(dest, scratch, small)[1]

    # 2. time passes: changes stream as for any table
    updated = int(scratch.sql("SELECT count(*) FROM big WHERE id < 100"))  # the writer deleted or moved a few
    scratch.sql("UPDATE big SET v = 'later' WHERE id < 100; DELETE FROM big WHERE id BETWEEN 100 AND 150")
    later = sync_log_based(scratch.config, dest, [small, big], chunks={big.id: CHUNKS})
    assert not later.snapshots and later.changes(big.id).get("update") == updated > 80
    assert rows(dest, scratch, big)[0] == rows(dest, scratch, big)[1]
    dest.close()
    scratch.sql(f"SELECT pg_drop_replication_slot('{slot}')")


class Killed(BaseException):
    """The process dies here (a BaseException: nothing catches it)."""


def test_a_killed_chunked_snapshot_resumes_at_the_next_chunk(
    logical18: LocalPostgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = make_scratch(logical18, "Chunked Kill")
    scratch.sql(
        f"CREATE TABLE big (id bigint PRIMARY KEY, v text); INSERT INTO big SELECT g, 'v' || g "
        f"FROM generate_series(1, {ROWS}) g; CREATE TABLE small (id int PRIMARY KEY, v text)"
    )
    big = scratch.one({"name": "public.big", "method": "log_based"})
    dest = scratch.destination()
    slot = scratch.config.slot_name
    copied: list[KeyRange] = []
    real = chunked.snapshot_tables

    def dies_at_the_third(*args: Any, **kwargs: Any) -> Any:
        if len(copied) == 2:
            raise Killed
        copied.append(kwargs["ranges"][big.id])
        return real(*args, **kwargs)

    monkeypatch.setattr(chunked, "snapshot_tables", dies_at_the_third)
    with pytest.raises(Killed):
        sync_log_based(scratch.config, dest, [big], chunks={big.id: CHUNKS})
    progress = dest.changes().snapshot_progress(slot)[big.id]
    assert [upper for upper, _ in progress] == [5001, 10001] and big.id not in dest.changes().snapshot_lsns(slot)
    scratch.sql("UPDATE big SET v = 'while down' WHERE id IN (10, 12000); INSERT INTO big VALUES (30000, 'new')")

    monkeypatch.setattr(chunked, "snapshot_tables", real)
    resumed: list[KeyRange] = []

    def counting(*args: Any, **kwargs: Any) -> Any:
        resumed.append(kwargs["ranges"][big.id])
        return real(*args, **kwargs)

    monkeypatch.setattr(chunked, "snapshot_tables", counting)
    again = sync_log_based(scratch.config, dest, [big], chunks={big.id: CHUNKS})
    assert [(r.lower, r.upper) for r in resumed] == [(10001, 15001), (15001, None)]
    assert not again.failures and again.snapshots[big.id] == 10001  # 10,000 rows and the new one
    assert rows(dest, scratch, big)[0] == rows(dest, scratch, big)[1]

    # 3. a TRUNCATE while the copy is under way voids that copy only; the next sync copies it again
    small = scratch.one({"name": "public.small", "method": "log_based"})
    scratch.sql("INSERT INTO small VALUES (1, 's')")
    dest.changes().forget_table(slot, big.id)
    truncated: list[int] = []

    def truncates_after_the_first(*args: Any, **kwargs: Any) -> Any:
        found = real(*args, **kwargs)
        if not truncated:
            truncated.append(1)
            scratch.sql("TRUNCATE big; INSERT INTO big VALUES (1, 'after truncate'); UPDATE small SET v = 't'")
        return found

    monkeypatch.setattr(chunked, "snapshot_tables", truncates_after_the_first)
    voided = sync_log_based(scratch.config, dest, [small, big], chunks={big.id: CHUNKS})
    assert (
        set(voided.failures) == {big.id} and "truncated while its snapshot was being copied" in voided.failures[big.id]
    )
    assert voided.changes(small.id).get("update") == 1
    monkeypatch.setattr(chunked, "snapshot_tables", real)
    fixed = sync_log_based(scratch.config, dest, [small, big], chunks={big.id: CHUNKS})
    assert not fixed.failures and fixed.snapshots.get(big.id) == 1, (fixed.snapshots, fixed.failures, voided.snapshots)
    assert rows(dest, scratch, big)[0] == rows(dest, scratch, big)[1] == [(1, "after truncate")]
    dest.close()
    scratch.sql(f"SELECT pg_drop_replication_slot('{slot}')")
