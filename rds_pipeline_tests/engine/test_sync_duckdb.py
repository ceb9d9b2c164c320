"""The replication engine into DuckDB: the same semantics, the documented type mapping, exact values."""

from __future__ import annotations

import math
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from psycopg2 import sql

from rds_pipeline.engine.config import parse_config
from rds_pipeline.engine.core.ranges import KeyRange
from rds_pipeline.engine.core.session_settings import apply_session_settings
from rds_pipeline.engine.core.types import duckdb_type
from rds_pipeline.engine.destinations.duckdb import DuckDBDestination, dq, run
from rds_pipeline.engine.destinations.factory import open_destination
from rds_pipeline.engine.replication.sync import sync_table
from rds_pipeline.engine.selection import SelectedTable, resolve_selection
from rds_pipeline.engine.source.catalog import Catalog
from rds_pipeline.engine.source.session import SourceSession
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.engine.sync_helpers import make_scratch
from rds_pipeline_tests.engine.test_sync_postgres import zoo_scratch


def source_text(server: LocalPostgres, database: str, table: SelectedTable) -> list[tuple[Any, ...]]:
    exprs = []
    for column in table.columns:
        ident = sql.Identifier(column.name)
        if column.kind == "array":
            exprs.append(sql.SQL("to_json({})::text").format(ident))
        elif duckdb_type(column) == "BLOB":
            exprs.append(sql.SQL("encode({}, 'hex')").format(ident))
        elif column.type.startswith("character("):
            exprs.append(sql.SQL("{}::text").format(ident))  # char(n): padding is insignificant
        else:
            # the type's output function, as COPY uses it (format() turns NULL into '', so guard it)
            exprs.append(sql.SQL("CASE WHEN num_nulls({}) = 0 THEN format('%s', {}) END").format(ident, ident))
    order = sql.SQL(", ").join(
        sql.SQL("{}::text").format(sql.Identifier(c)) for c in table.primary_key or table.column_names
    )
    conn = psycopg2.connect(**server.dsn(database))
    apply_session_settings(conn)
    with conn.cursor() as cur:
        cur.execute(
            sql.SQL("SELECT {} FROM {} ORDER BY {}").format(
                sql.SQL(", ").join(exprs), sql.Identifier(table.relation.schema, table.relation.name), order
            )
        )
        rows = cur.fetchall()
    conn.close()
    return rows


def duck_text(dest: DuckDBDestination, table: SelectedTable) -> list[tuple[Any, ...]]:
    exprs = [
        f"lower(hex({dq(c.name)}))" if duckdb_type(c) == "BLOB" else f"CAST({dq(c.name)} AS VARCHAR)"
        for c in table.columns
    ]
    order = ", ".join(f"CAST({dq(c)} AS VARCHAR)" for c in table.primary_key or table.column_names)
    return run(dest.conn, f"SELECT {', '.join(exprs)} FROM {dest.target(table)} ORDER BY {order}").fetchall()


def same(pg: str | None, duck: str | None, kind: str) -> bool:
    """PostgreSQL's text and DuckDB's text for the same value, up to spelling (t/true, NaN/nan, mons/months)."""
    if pg is None or duck is None:
        return pg is None and duck is None
    if kind == "BOOLEAN":
        return {"t": "true", "f": "false"}.get(pg, pg) == duck
    if kind in ("DOUBLE", "FLOAT"):
        a, b = float(pg), float(duck)
        return (math.isnan(a) and math.isnan(b)) or a == b
    if kind.startswith("DECIMAL"):
        return Decimal(pg) == Decimal(duck)
    if kind in ("DATE", "TIMESTAMP"):
        return duck.replace(" (BC)", " BC") == pg
    if kind == "INTERVAL":
        return duck.replace("month", "mon") == pg
    if kind == "JSON":
        import json

        return json.loads(pg) == json.loads(duck)
    return pg == duck


def assert_equal(server: LocalPostgres, database: str, dest: DuckDBDestination, table: SelectedTable) -> None:
    expected, got = source_text(server, database, table), duck_text(dest, table)
    assert len(expected) == len(got), table.id
    kinds = [duckdb_type(c) for c in table.columns]
    for row_pg, row_duck in zip(expected, got, strict=True):
        for column, kind, a, b in zip(table.columns, kinds, row_pg, row_duck, strict=True):
            assert same(a, b, kind), f"{table.id}.{column.name} ({column.type} -> {kind}): {a!r} != {b!r}"


def duck_config(server: LocalPostgres, database: str, path: Path):  # noqa: ANN201
    return parse_config(
        {
            "integration_name": "Duck Replica",
            "source": {
                "host": server.host,
                "port": server.port,
                "user": server.superuser,
                "password": server.password,
                "database": database,
            },
            "destination": {"type": "duckdb", "path": str(path)},
        }
    )


def test_pagila_every_table_and_view_into_duckdb(pg18: LocalPostgres, pagila_catalog: Catalog, tmp_path: Path) -> None:
    config = duck_config(pg18, "pagila", tmp_path / "pagila.duckdb")
    selection = resolve_selection(
        [{"name": r.qualified_name} for r in pagila_catalog.relations], pagila_catalog, "pagila"
    )
    dest = open_destination(config)
    with SourceSession(config.source) as session:
        for table in selection:
            result = sync_table(session, dest, table)
            assert result.report.rows_inserted == result.extraction.rows
            assert_equal(pg18, "pagila", dest, table)
    types = dict(
        dest.conn.execute(
            "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'film' "
            "AND schema_name = 'duck_replica'"
        ).fetchall()
    )
    assert types["rental_rate"] == "DECIMAL(4,2)" and types["special_features"] == "JSON"
    assert types["last_update"] == "TIMESTAMP" and types["rating"] == "VARCHAR" and types["release_year"] == "INTEGER"
    dest.close()


@pytest.mark.parametrize("server_name", ["pg18", "pg15"])
def test_type_zoo_into_duckdb(server_name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    scratch = zoo_scratch(server_name, request)
    server = scratch.server
    table = scratch.one({"name": "public.zoo"})
    config = duck_config(server, scratch.source_db, tmp_path / "zoo.duckdb")
    dest = open_destination(config)
    with SourceSession(config.source) as session:
        sync_table(session, dest, table)
    assert_equal(server, scratch.source_db, dest, table)
    # BC stays BC (DuckDB alone would silently read '0044-03-15 BC' as 44 AD); 44 BC is DuckDB's year -43
    assert dest.conn.execute("SELECT year(dt) FROM duck_replica.zoo WHERE id = 3").fetchone()[0] == -43
    dest.close()


def test_incremental_and_reset_in_duckdb(pg18: LocalPostgres, tmp_path: Path) -> None:
    scratch = make_scratch(pg18)
    scratch.sql(
        "CREATE TABLE events (id int PRIMARY KEY, updated_at timestamptz, v text);"
        "INSERT INTO events VALUES (1, '2024-01-01 10:00+00', 'a'), (2, '2024-01-01 11:00+00', 'b'),"
        "(3, NULL, 'null key')"
    )
    config = duck_config(pg18, scratch.source_db, tmp_path / "inc.duckdb")
    table = scratch.one({"name": "public.events", "method": "key_based", "replication_key": "updated_at"})
    dest = open_destination(config)
    with SourceSession(config.source) as session:
        first = sync_table(session, dest, table)
        assert (first.report.rows_inserted, first.bookmark, first.extraction.null_key_rows) == (
            3,
            "2024-01-01 11:00:00+00",
            1,
        )
        scratch.sql(
            "UPDATE events SET v = 'a2', updated_at = '2024-01-01 12:00+00' WHERE id = 1;"
            "INSERT INTO events VALUES (4, '2024-01-01 11:00+00', 'boundary'), (5, '2024-01-01 10:58+00', 'late')"
        )
        second = sync_table(session, dest, table)
        assert (second.report.rows_inserted, second.report.rows_updated) == (2, 3)
        assert second.bookmark == "2024-01-01 12:00:00+00"
        assert_equal(pg18, scratch.source_db, dest, table)
        window = sync_table(
            session, dest, table, KeyRange("updated_at", lower="2024-01-01 11:00+00", upper="2024-01-01 12:00+00")
        )
        assert window.extraction.rows == 2 and dest.read_bookmark(table) == "2024-01-01 12:00:00+00"
        dest.reset(table)
        assert dest.read_bookmark(table) is None
        again = sync_table(session, dest, table)
        assert again.report.rows_inserted == 5
    dest.close()


def test_full_table_range_in_duckdb(pg18: LocalPostgres, tmp_path: Path) -> None:
    scratch = make_scratch(pg18)
    scratch.sql(
        "CREATE TABLE items (id int PRIMARY KEY, v text); INSERT INTO items SELECT g, 'v' || g "
        "FROM generate_series(1, 1000) g"
    )
    config = duck_config(pg18, scratch.source_db, tmp_path / "full.duckdb")
    table = scratch.one({"name": "public.items"})
    dest = open_destination(config)
    with SourceSession(config.source) as session:
        sync_table(session, dest, table)
        scratch.sql("DELETE FROM items WHERE id IN (10, 600); UPDATE items SET v = 'changed' WHERE id = 20")
        chunk = sync_table(session, dest, table, KeyRange("id", lower=1, upper=501))
        assert (chunk.report.rows_deleted, chunk.report.rows_inserted) == (500, 499)
        assert dest.row_count(table) == 999
        sync_table(session, dest, table)
    assert_equal(pg18, scratch.source_db, dest, table)
    dest.close()


def test_bc_timestamptz_and_nan_in_numeric_land_in_duckdb(pg18: LocalPostgres, tmp_path: Path) -> None:
    """Every value lands: a timestamptz before year 1 AD, and NaN in numeric(p,s) (DECIMAL cannot hold it: the
    column becomes VARCHAR with PostgreSQL's exact text, decided from the data, with a warning)."""
    scratch = make_scratch(pg18)
    scratch.sql(
        "CREATE TABLE odd (id int PRIMARY KEY, at timestamptz, amount numeric(10,2), ok numeric(6,1));"
        "INSERT INTO odd VALUES (1, '3004-10-19 10:23:54.123456-08 BC', 12.50, 1.5), (2, '2024-01-01 00:00+00', -3.25, 2),"
        "(3, '0001-01-01 00:00:00+00 BC', 0, 3)"
    )
    table = scratch.one({"name": "public.odd"})
    config = duck_config(pg18, scratch.source_db, tmp_path / "odd.duckdb")
    dest = open_destination(config)
    with SourceSession(config.source) as session:
        sync_table(session, dest, table)
        types = dict(
            dest.conn.execute("SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'odd'").fetchall()
        )
        assert types["amount"] == "DECIMAL(10,2)" and types["at"] == "TIMESTAMP WITH TIME ZONE"
        scratch.sql("INSERT INTO odd VALUES (4, NULL, 'NaN', 4)")
        result = sync_table(session, dest, table)
    assert any("holds NaN" in w for w in result.report.warnings)
    types = dict(
        dest.conn.execute("SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = 'odd'").fetchall()
    )
    assert types["amount"] == "VARCHAR" and types["ok"] == "DECIMAL(6,1)"  # only the column that needs it
    amounts = dict(dest.conn.execute("SELECT id, amount FROM duck_replica.odd").fetchall())
    assert amounts == {1: "12.50", 2: "-3.25", 3: "0.00", 4: "NaN"}  # PostgreSQL's text, exact
    # BC instants: the same microsecond since the epoch on both sides
    conn = psycopg2.connect(**pg18.dsn(scratch.source_db))
    with conn.cursor() as cur:
        cur.execute("SELECT id, (extract(epoch FROM at) * 1000000)::bigint FROM odd WHERE at IS NOT NULL ORDER BY id")
        expected = cur.fetchall()
    conn.close()
    got = dest.conn.execute(
        'SELECT id, epoch_us("at") FROM duck_replica.odd WHERE "at" IS NOT NULL ORDER BY id'
    ).fetchall()
    assert got == expected  # ICU's year() says 3004 (with era BC); the instant is what must match
    dest.close()
    # a table whose first load already holds NaN is created with VARCHAR
    fresh = DuckDBDestination(tmp_path / "fresh.duckdb", "fresh")
    fresh.prepare(config)
    with SourceSession(config.source) as session:
        sync_table(session, fresh, table)
    assert (
        fresh.conn.execute("SELECT count(*) FROM fresh.fresh.odd WHERE amount = 'NaN'").fetchone()[0] == 1
    )  # schema named like the file
    fresh.close()


def test_a_duckdb_replica_has_no_key_index_and_a_duplicate_is_still_caught(pg18: LocalPostgres, tmp_path: Path) -> None:
    """A DuckDB replica is created without a PRIMARY KEY (DuckDB holds a key's index whole in memory: at 10M rows it
    alone passes the memory bound). Upserts still replace rather than double, and a duplicate that appears in
    the replica anyway is found by the key check's scan."""
    from rds_pipeline.engine.replication.verify import primary_key_check

    scratch = make_scratch(pg18)
    scratch.sql(
        "CREATE TABLE k (id int PRIMARY KEY, v text, at timestamptz);"
        "INSERT INTO k SELECT g, 'v' || g, '2020-01-01'::timestamptz + g * interval '1 second' "
        "FROM generate_series(1, 500) g"
    )
    config = duck_config(pg18, scratch.source_db, tmp_path / "keys.duckdb")
    table = scratch.one({"name": "public.k", "method": "key_based", "replication_key": "at"})
    dest = open_destination(config)
    with SourceSession(config.source) as session:
        sync_table(session, dest, table)
        scratch.sql("UPDATE k SET v = 'changed', at = now() WHERE id <= 10")
        again = sync_table(session, dest, table)
    # the ten, and the rows within the lookback read again: replaced, never doubled
    assert again.report.rows_inserted == 0 and again.report.rows_updated >= 10 and dest.row_count(table) == 500
    assert not dest.primary_key_enforced(table)
    assert primary_key_check(dest.duplicate_keys(table), table).passed
    run(dest.conn, f"INSERT INTO {dest.target(table)} (id, v) VALUES (7, 'twin')")
    failed = primary_key_check(dest.duplicate_keys(table), table)
    assert not failed.passed and failed.metadata["duplicate_keys"] == 1
    dest.close()


def test_a_duckdb_file_held_by_another_process_waits_then_names_the_fix(tmp_path: Path) -> None:
    """DuckDB allows one writer process: while another holds the file, opening waits (bounded), then fails with
    the file named and the fix; once it lets go, the same open works."""
    import subprocess
    import sys
    import time

    from rds_pipeline.engine.errors import DestinationBusy

    path = tmp_path / "busy.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('held', flush=True); time.sleep(120)",
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        with pytest.raises(DestinationBusy, match=r"busy\.duckdb is held by another process .* Fix: let the run"):
            DuckDBDestination(path, "s", lock_wait_seconds=2)
        assert time.monotonic() - started >= 2  # it waited as asked (an unbounded wait would never raise)
    finally:
        holder.kill()
        holder.wait(timeout=10)
    destination = DuckDBDestination(path, "s", lock_wait_seconds=2)
    assert destination.conn.execute("SELECT 1").fetchone() == (1,)
    destination.close()
