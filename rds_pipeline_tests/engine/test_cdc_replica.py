"""Log-based replication off a read replica and through a failover, on real primary/standby pairs made with
``pg_basebackup``:

- PostgreSQL 18 standby as the source: the publication is asked of the primary (nothing can be created on a
  standby), creating the slot waits for the primary's running transactions within a bound and says how to
  unblock it, then snapshot and stream read the standby, lag is measured against its replay position, and
  ``check`` advises on ``hot_standby_feedback``.
- PostgreSQL 18 failover: the slot is a failover slot, a standby synchronizes it, the primary dies, the
  standby is promoted and the config points at it: the stream goes on, nothing lost and nothing copied again.
- PostgreSQL 15: a standby cannot decode (refused with the fix), and a failover has no slot to keep, so the
  promoted standby's first sync copies the tables again by itself (``on_slot_lost: resnapshot``).
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest

from rds_pipeline.engine.config import IntegrationConfig, parse_config
from rds_pipeline.engine.destinations.factory import open_destination
from rds_pipeline.engine.errors import SetupNeeded
from rds_pipeline.engine.replication.cdc import admin
from rds_pipeline.engine.replication.cdc.flow import sync_log_based
from rds_pipeline.engine.replication.status import standings
from rds_pipeline.engine.selection import SelectedTable, resolve_selection
from rds_pipeline.engine.source.checks import run_checks
from rds_pipeline.engine.source.discovery import discover
from rds_pipeline.local_postgres import LocalPostgres, embedded_bin_dir
from rds_pipeline_tests.conftest import PG15_BIN, SOURCE_PASSWORD
from rds_pipeline_tests.engine.pgoutput_capture import LOGICAL_SETTINGS
from rds_pipeline_tests.engine.sync_helpers import rows_as_text
from rds_pipeline_tests.servers.standby import Pair, primary_and_standby

TABLE = "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 1000) g"


def config_for(source: LocalPostgres, destination: dict[str, Any], **log_based: Any) -> IntegrationConfig:
    creds = {"host": source.host, "user": source.superuser, "password": SOURCE_PASSWORD}
    return parse_config(
        {
            "integration_name": "Replica",
            "source": {**creds, "port": source.port, "database": "src"},
            "destination": destination,
            "log_based": log_based,
        }
    )


def selected(config: IntegrationConfig) -> SelectedTable:
    catalog = discover(config.source, databases=["src"])
    return resolve_selection([{"name": "public.t", "method": "log_based"}], catalog, "src")[0]


def source_rows(server: LocalPostgres, table: SelectedTable) -> list[tuple[Any, ...]]:
    return rows_as_text(server, "src", psycopg2.sql.Identifier("public", "t"), table.column_names, ("id",))


@pytest.fixture
def pair18(work_dir: Path, tmp_path: Path) -> Iterator[Pair]:
    pair = primary_and_standby(embedded_bin_dir(), work_dir / tmp_path.name, SOURCE_PASSWORD, LOGICAL_SETTINGS)
    yield pair
    pair.stop()


@pytest.fixture
def pair15(work_dir: Path, tmp_path: Path) -> Iterator[Pair]:
    if not (PG15_BIN / "postgres").exists():
        pytest.skip("Debian postgresql-15 is not installed (apt-get install postgresql-15; .ci/run does this)")
    pair = primary_and_standby(PG15_BIN, work_dir / tmp_path.name, SOURCE_PASSWORD, LOGICAL_SETTINGS)
    yield pair
    pair.stop()


class Nudger:
    """Logs the primary's running transactions every half second, as a busy primary (or RDS's heartbeat) does:
    a slot on the standby needs one to become consistent."""

    def __init__(self, primary: LocalPostgres) -> None:
        self.stop = threading.Event()
        self.conn = psycopg2.connect(**primary.dsn("postgres"))
        self.conn.autocommit = True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        with self.conn.cursor() as cur:
            while not self.stop.wait(0.5):
                cur.execute("SELECT pg_log_standby_snapshot()")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(10)
        self.conn.close()


def logical_slots(server: LocalPostgres) -> list[str]:
    return server.psql("SELECT slot_name FROM pg_replication_slots WHERE slot_type = 'logical'").split()


def test_a_read_replica_is_the_source(pair18: Pair) -> None:
    primary, standby = pair18.primary, pair18.standby
    primary.psql("CREATE DATABASE src")
    primary.psql("CREATE DATABASE dst")  # the destination lives on the primary: a standby cannot be written
    primary.psql(TABLE + "; CREATE TABLE other (id int)", "src")
    pair18.replayed()
    destination = {"type": "postgres", "host": primary.host, "port": primary.port, "user": primary.superuser}
    config = config_for(
        standby, {**destination, "password": SOURCE_PASSWORD, "database": "dst"}, slot_create_wait_seconds=3
    )
    table = selected(config)
    dest = open_destination(config)

    # 1. nothing can be created on a standby: the publication's SQL is given for the primary, nothing else done
    with pytest.raises(SetupNeeded, match="run on the primary") as refused:
        sync_log_based(config, dest, [table])
    statement = re.search(r"CREATE PUBLICATION .*;", str(refused.value))
    assert statement is not None and not logical_slots(standby)
    with pytest.raises(SetupNeeded, match="run on the primary"):  # `cdc setup` says the same
        list(admin.setup(config, [table]))
    primary.psql(statement.group(0), "src")
    pair18.replayed()

    # 2. a transaction open on the primary keeps the slot from becoming consistent: the wait is bounded, the
    # error says what to do, and no slot is left behind
    holder = psycopg2.connect(**primary.dsn("src"))
    with holder.cursor() as cur:
        cur.execute("INSERT INTO other VALUES (1)")  # holds a transaction id until it ends
    pair18.replayed()
    nudger = Nudger(primary)
    try:
        started = time.monotonic()
        with pytest.raises(SetupNeeded, match=r"waited 3s .*pg_log_standby_snapshot\(\)"):
            sync_log_based(config, dest, [table])
        assert time.monotonic() - started < 30 and not logical_slots(standby)
        holder.rollback()
        holder.close()

        # 3. snapshot and stream from the standby; the primary carries only its WAL
        first = sync_log_based(config, dest, [table])
        assert first.standby and not first.heartbeat and first.snapshots == {table.id: 1000} and not first.failures
        assert logical_slots(standby) == [config.slot_name] and not logical_slots(primary)
        assert dest.fetch_rows(table) == source_rows(primary, table)
        primary.psql("UPDATE t SET v = 'changed' WHERE id <= 10; DELETE FROM t WHERE id > 990", "src")
        primary.psql("INSERT INTO t VALUES (5000, 'new')", "src")
        pair18.replayed()
        second = sync_log_based(config, dest, [table])
        assert second.changes(table.id) == {"update": 10, "delete": 10, "insert": 1} and not second.snapshots
        assert dest.fetch_rows(table) == source_rows(primary, table)

        # lag is measured against what the standby replayed
        primary.psql("INSERT INTO t SELECT g, 'pending' FROM generate_series(7000, 7999) g", "src")
        pair18.replayed()
        (standing,) = standings(config, [table], dest)
        assert standing.lag_unit == "bytes" and standing.lag_amount and standing.lag_amount > 30_000
        sync_log_based(config, dest, [table])
        (standing,) = standings(config, [table], dest)
        assert dest.fetch_rows(table) == source_rows(primary, table)
    finally:
        nudger.close()

    # 4. check: the standby is named, and hot_standby_feedback off is advised against
    findings = {(f.severity, f.subject) for f in run_checks(config, [table])}
    assert ("ok", "standby") in findings and not any(s == "hot_standby_feedback" for _, s in findings)
    standby.psql("ALTER SYSTEM SET hot_standby_feedback = off; SELECT pg_reload_conf()")
    time.sleep(0.5)
    advice = [f for f in run_checks(config, [table]) if f.subject == "hot_standby_feedback"]
    assert advice and advice[0].severity == "warning" and "rows_removed" in advice[0].message
    dest.close()


def until_synced(pair: Pair, slot: str, advance: Callable[[], object], timeout: float = 60) -> None:
    """Sync until the standby holds a persistent synchronized copy of ``slot``: PostgreSQL keeps a standby's
    copy temporary until the primary's slot has moved past the standby's own catalog horizon, which takes a
    logged running-transactions record (``pg_log_standby_snapshot``) and a confirmation after it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = pair.standby.psql(
            f"SELECT synced AND NOT temporary FROM pg_replication_slots WHERE slot_name = '{slot}'"
        ).strip()
        if found == "t":
            return
        pair.primary.psql("SELECT pg_log_standby_snapshot()")
        advance()
        time.sleep(0.3)
    raise TimeoutError(f"the standby did not synchronize slot {slot}")


def test_a_failover_keeps_the_stream(pair18: Pair, tmp_path: Path) -> None:
    primary, standby = pair18.primary, pair18.standby
    primary.psql("CREATE DATABASE src")
    primary.psql(TABLE, "src")
    config = config_for(primary, {"type": "duckdb", "path": str(tmp_path / "replica.duckdb")})
    table = selected(config)
    dest = open_destination(config)
    slot = config.slot_name

    first = sync_log_based(config, dest, [table])
    assert first.snapshots == {table.id: 1000}
    assert primary.psql(f"SELECT failover FROM pg_replication_slots WHERE slot_name = '{slot}'").strip() == "t"
    failover = {f.subject: f for f in run_checks(config, [table]) if f.subject == "failover"}
    assert failover["failover"].severity == "ok" and "standby_1" in failover["failover"].message
    primary.psql("UPDATE t SET v = 'before' WHERE id <= 100", "src")
    assert sync_log_based(config, dest, [table]).changes(table.id) == {"update": 100}
    until_synced(pair18, slot, lambda: sync_log_based(config, dest, [table]))

    # changes the stream has not read yet, then the primary dies and the standby is promoted
    primary.psql("UPDATE t SET v = 'unread' WHERE id BETWEEN 200 AND 249; DELETE FROM t WHERE id > 995", "src")
    pair18.replayed()
    primary.run("pg_ctl", "-D", str(primary.data_dir), "-m", "immediate", "-w", "stop")
    standby.psql("SELECT pg_promote()")
    expected = source_rows(standby, table)

    promoted = dataclasses.replace(config, source=dataclasses.replace(config.source, port=standby.port))
    after = sync_log_based(promoted, dest, [table])
    assert not after.recovered and not after.snapshots and not after.failures
    assert after.changes(table.id) == {"update": 50, "delete": 5}
    assert dest.fetch_rows(table) == duck_rows_of(expected)
    standby.psql("INSERT INTO t VALUES (9000, 'on the new primary'); UPDATE t SET v = 'new' WHERE id = 1", "src")
    more = sync_log_based(promoted, dest, [table])
    assert more.changes(table.id) == {"insert": 1, "update": 1} and not more.snapshots
    assert dest.fetch_rows(table) == duck_rows_of(source_rows(standby, table))
    dest.close()
    standby.psql(f"SELECT pg_drop_replication_slot('{slot}')", "src")


def duck_rows_of(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Source rows as text -> as DuckDB returns them (int id, text v), in key order."""
    return sorted((int(i), v) for i, v in rows)


def test_pg15_a_standby_cannot_be_the_source_and_a_failover_copies_again(pair15: Pair, tmp_path: Path) -> None:
    primary, standby = pair15.primary, pair15.standby
    primary.psql("CREATE DATABASE src")
    primary.psql(TABLE, "src")
    pair15.replayed()
    on_standby = config_for(standby, {"type": "duckdb", "path": str(tmp_path / "standby.duckdb")})
    table = selected(on_standby)
    with pytest.raises(SetupNeeded, match="standby running PostgreSQL 15, which cannot decode"):
        sync_log_based(on_standby, open_destination(on_standby), [table])
    errors = {f.subject: f for f in run_checks(on_standby, [table]) if f.severity == "error"}
    assert "16+ can" in errors["standby"].message

    config = config_for(primary, {"type": "duckdb", "path": str(tmp_path / "replica.duckdb")})
    dest = open_destination(config)
    sync_log_based(config, dest, [table])
    assert [f for f in run_checks(config, [table]) if f.subject == "failover"][0].message.startswith(
        "PostgreSQL 15 has no failover slots"
    )
    primary.psql("UPDATE t SET v = 'before failover' WHERE id <= 10", "src")
    pair15.replayed()
    primary.run("pg_ctl", "-D", str(primary.data_dir), "-m", "immediate", "-w", "stop")
    standby.psql("SELECT pg_promote()")
    standby.psql("INSERT INTO t VALUES (9000, 'after')", "src")
    promoted = dataclasses.replace(config, source=dataclasses.replace(config.source, port=standby.port))
    after = sync_log_based(promoted, dest, [table])
    assert after.recovered and "is gone from the source" in after.recovered and after.snapshots == {table.id: 1001}
    assert dest.fetch_rows(table) == duck_rows_of(source_rows(standby, table))
    standby.psql("DELETE FROM t WHERE id = 9000", "src")
    assert sync_log_based(promoted, dest, [table]).changes(table.id) == {"delete": 1}
    dest.close()
    standby.psql(f"SELECT pg_drop_replication_slot('{config.slot_name}')", "src")
