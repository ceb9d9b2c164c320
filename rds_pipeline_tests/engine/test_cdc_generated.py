"""Generated columns, which pgoutput leaves out of its stream (always before PostgreSQL 18; virtual ones always
and stored ones unless published on 18): the replica holds the source's values for every method, on PG15 and
PG18, in both destinations. And PostgreSQL 18's trap: REPLICA IDENTITY FULL with a generated column the
publication does not send makes the table's UPDATEs fail once published, so such a table is refused before it
is added, and no fix we print ever suggests FULL for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from rds_pipeline.engine.destinations.factory import open_destination
from rds_pipeline.engine.replication.cdc.flow import sync_log_based
from rds_pipeline.engine.replication.sync import sync_table
from rds_pipeline.engine.source.checks import run_checks
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.engine.sync_helpers import Scratch, make_scratch

BIG = "repeat(md5(id::text), 400)"  # 12.8 kB, out of line: an UPDATE of other columns leaves it UNCHANGED


def ddl(pg18: bool) -> str:
    virtual = (
        ", doubled int GENERATED ALWAYS AS (qty * 2) VIRTUAL, size int GENERATED ALWAYS AS (length(note) + length(big))"
        if pg18
        else ""
    )
    return (
        "CREATE TABLE g (id int PRIMARY KEY, price numeric(10,2), qty int, note text, big text, "
        "total numeric GENERATED ALWAYS AS (price * qty) STORED, "
        "label text GENERATED ALWAYS AS (upper(note) || ':' || length(big)) STORED"
        f"{virtual}); ALTER TABLE g ALTER COLUMN big SET STORAGE EXTERNAL; "
        f"INSERT INTO g (id, price, qty, note, big) SELECT id, id * 1.25, id % 7, 'n' || id, {BIG} "
        "FROM generate_series(1, 200) id"
    )


CHANGES = [
    # inserts, an update of plain columns, one that leaves the TOASTed input alone (label is read back by key),
    # one that changes it, a key change, a delete, and a row inserted then updated in the same batch
    "INSERT INTO g (id, price, qty, note, big) SELECT id, 2.5, 3, 'new', 'small' FROM generate_series(201, 230) id",
    "UPDATE g SET price = price + 1, qty = qty + 1 WHERE id BETWEEN 1 AND 40",
    "UPDATE g SET note = 'renamed' WHERE id BETWEEN 41 AND 60",
    "UPDATE g SET big = 'short now' WHERE id = 61",
    "UPDATE g SET id = 1000, qty = 9 WHERE id = 62",
    "DELETE FROM g WHERE id = 63",
    "INSERT INTO g (id, price, qty, note, big) VALUES (300, 1, 1, 'x', 'y'); UPDATE g SET qty = 5 WHERE id = 300",
]


def duck_copy(scratch: Scratch, tmp_path: Path, name: str) -> list[Any]:
    """The table as a full-table copy writes it into a DuckDB file of its own: what the log must match."""
    other = make_scratch(
        scratch.server, f"Gen Copy {name}", destination={"type": "duckdb", "path": str(tmp_path / f"{name}.duckdb")}
    )
    config = other.config.__class__(**{**other.config.__dict__, "source": scratch.config.source})
    copied = open_destination(config)
    table = scratch.one({"name": "public.g", "method": "full_table"})
    with scratch.session() as session:
        sync_table(session, copied, table)
    rows = copied.fetch_rows(table)
    copied.close()
    return rows


def replica_equals_source(scratch: Scratch, dest: Any, tmp_path: Path, duck: bool, step: str) -> None:
    table = scratch.one({"name": "public.g", "method": "log_based"})
    if duck:
        assert dest.fetch_rows(table) == duck_copy(scratch, tmp_path, step)
    else:
        assert dest.fetch_rows(table) == scratch.source_rows(table)


@pytest.mark.parametrize("duck", [False, True], ids=["postgres", "duckdb"])
@pytest.mark.parametrize("index", [0, 1], ids=["pg18", "pg15"])
def test_generated_columns_through_the_log_hold_the_source_values(
    logical_servers: list[LocalPostgres], tmp_path: Path, index: int, duck: bool
) -> None:
    server = logical_servers[index]
    pg18 = index == 0
    destination = {"type": "duckdb", "path": str(tmp_path / "log.duckdb")} if duck else None
    scratch = make_scratch(server, f"Generated {index} {duck}", **({"destination": destination} if duck else {}))
    scratch.sql(ddl(pg18))
    table = scratch.one({"name": "public.g", "method": "log_based"})
    generated = {"total", "label", "doubled", "size"} if pg18 else {"total", "label"}
    assert generated <= set(table.column_names)
    dest = open_destination(scratch.config)

    first = sync_log_based(scratch.config, dest, [table])
    assert not first.failures and first.snapshots[table.id] == 200
    # on 18 our publication sends the stored columns; the virtual one (and every one before 18) is computed
    assert first.computed[table.id] == (["doubled", "size"] if pg18 else ["total", "label"])
    replica_equals_source(scratch, dest, tmp_path, duck, "first")

    for statement in CHANGES:
        scratch.sql(statement)
    streamed = sync_log_based(scratch.config, dest, [table])
    assert not streamed.failures and not streamed.snapshots and not streamed.evolved
    assert streamed.changes(table.id) == {"insert": 31, "update": 63, "delete": 1}
    replica_equals_source(scratch, dest, tmp_path, duck, "streamed")

    # time passes: more changes in small transactions, a second sync
    scratch.sql("UPDATE g SET note = NULL WHERE id = 1; UPDATE g SET price = NULL WHERE id = 2")
    scratch.sql("UPDATE g SET qty = qty * 10 WHERE id > 190")
    again = sync_log_based(scratch.config, dest, [table])
    assert not again.failures and not again.snapshots
    replica_equals_source(scratch, dest, tmp_path, duck, "again")
    dest.close()
    scratch.sql(f"SELECT pg_drop_replication_slot('{scratch.config.slot_name}')")


@pytest.mark.parametrize("index", [0, 1], ids=["pg18", "pg15"])
def test_generated_columns_by_full_table_and_key_based(logical_servers: list[LocalPostgres], index: int) -> None:
    """The query-based methods read generated values (stored and virtual) as any other column."""
    server = logical_servers[index]
    scratch = make_scratch(server, f"Generated Query {index}")
    scratch.sql(ddl(index == 0) + "; ALTER TABLE g ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now()")
    dest = scratch.destination()
    for method in ({"method": "full_table"}, {"method": "key_based", "replication_key": "updated_at"}):
        table = scratch.one({"name": "public.g", **method})
        with scratch.session() as session:
            sync_table(session, dest, table)
            scratch.sql("UPDATE g SET qty = qty + 100, updated_at = now() + interval '1 minute' WHERE id < 20")
            sync_table(session, dest, table)
        assert dest.fetch_rows(table) == scratch.source_rows(table), method
    dest.close()


def test_replica_identity_full_with_unpublished_generated_columns_is_refused_on_pg18(logical18: LocalPostgres) -> None:
    """On PostgreSQL 18 a published table whose REPLICA IDENTITY FULL covers a generated column the publication
    does not send refuses every UPDATE. Such a table is refused by name before it is published (the source's
    writes go on), `check` says so with a fix that is not FULL, and a keyless table with a virtual column is
    never told to use FULL. The other table streams meanwhile."""
    scratch = make_scratch(logical18, "Generated Full")
    scratch.sql(
        "CREATE TABLE f (id int NOT NULL, a int, v int GENERATED ALWAYS AS (a * 3) VIRTUAL);"
        "ALTER TABLE f REPLICA IDENTITY FULL; INSERT INTO f (id, a) VALUES (1, 1);"
        "CREATE TABLE k (id int, a int, v int GENERATED ALWAYS AS (a * 3));"  # keyless, virtual by default
        "CREATE TABLE ok (id int PRIMARY KEY, a int, s int GENERATED ALWAYS AS (a + 1) STORED);"
        "ALTER TABLE ok REPLICA IDENTITY FULL; INSERT INTO ok (id, a) VALUES (1, 1);"
    )
    f, keyless, ok = (
        scratch.one({"name": f"public.{name}", "method": "log_based", "primary_key": ["id"]})
        for name in ("f", "k", "ok")
    )
    dest = scratch.destination()
    run = sync_log_based(scratch.config, dest, [f, keyless, ok])
    assert set(run.failures) == {f.id, keyless.id}
    assert "Replica identity must not contain unpublished generated columns" in run.failures[f.id]
    assert "REPLICA IDENTITY FULL" not in run.failures[keyless.id].split("Fix:")[1]
    published = scratch.sql(
        f"SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_publication_tables "
        f"WHERE pubname = '{scratch.config.publication_name}'"
    )
    assert published.strip() == "ok"  # only the table whose stored column the publication sends
    scratch.sql("UPDATE f SET a = 2; UPDATE ok SET a = 5")  # the source's writes still work
    errors = {x.subject: x for x in run_checks(scratch.config, [f, keyless, ok]) if x.severity == "error"}
    assert set(errors) == {f.id, keyless.id}
    assert "REPLICA IDENTITY DEFAULT" in (errors[f.id].fix or "") and "FULL" not in (errors[f.id].fix or "")
    assert "FULL" not in (errors[keyless.id].fix or "") and "PRIMARY KEY" in (errors[keyless.id].fix or "")
    sync_log_based(scratch.config, dest, [ok])
    assert dest.fetch_rows(ok) == scratch.source_rows(ok) == [("1", "5", "6")]
    dest.close()
    scratch.sql(f"SELECT pg_drop_replication_slot('{scratch.config.slot_name}')")
