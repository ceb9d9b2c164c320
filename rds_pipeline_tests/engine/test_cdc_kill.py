"""kill -9 of a log-based sync just before and just after the destination commits a batch: no change lost,
none applied twice. The slot's confirmed position never passes a change the destination lacks: it is at or
behind the destination's LSN, or (psycopg2 moves it to a keepalive's WAL end while every message received was
confirmed, e.g. before the first one) past WAL that held nothing for us, which the next run recognises because
the destination marks the interrupted run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap

import psycopg2
import pytest

from rds_pipeline.engine.core.messages import lsn_int
from rds_pipeline.engine.replication.cdc.flow import sync_log_based
from rds_pipeline.engine.replication.cdc.slot import slot_status
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.engine.sync_helpers import make_scratch

CHILD = textwrap.dedent("""
    import json, os, signal, sys
    from rds_pipeline.engine.config import parse_config
    from rds_pipeline.engine.destinations.postgres import PostgresDestination
    from rds_pipeline.engine.destinations import postgres_apply
    from rds_pipeline.engine.replication.cdc import stream
    from rds_pipeline.engine.replication.cdc.flow import sync_log_based
    from rds_pipeline.engine.selection import resolve_selection
    from rds_pipeline.engine.source.discovery import discover

    config = parse_config(json.loads(sys.argv[1]))
    moment = sys.argv[2]
    catalog = discover(config.source, databases=[config.source.database])
    tables = resolve_selection(config.tables, catalog, config.source.database)
    dest = PostgresDestination(config.destination, config.destination_schema)
    dest.prepare(config)
    batches = {"n": 0}
    real_write, real_apply = postgres_apply._write_lsn, stream.apply_batch

    def write_then_die(cur, destination, slot, lsn):  # rows and LSN written, the commit not reached
        real_write(cur, destination, slot, lsn)
        if moment == "before" and cur.connection.get_transaction_status() and batches["n"] >= 1:
            os.kill(os.getpid(), signal.SIGKILL)

    def apply_then_die(*args, **kwargs):  # committed, never confirmed to the server
        report = real_apply(*args, **kwargs)
        batches["n"] += 1
        if moment == "after" and batches["n"] >= 2:
            os.kill(os.getpid(), signal.SIGKILL)
        return report

    def counting(*args, **kwargs):
        report = real_apply(*args, **kwargs)
        batches["n"] += 1
        return report

    postgres_apply._write_lsn = write_then_die
    stream.apply_batch = apply_then_die if moment == "after" else counting
    sync_log_based(config, dest, tables)
    print("finished without being killed")
""")


@pytest.mark.parametrize("moment", ["before", "after"])
def test_kill_9_around_the_destination_commit(logical18: LocalPostgres, moment: str) -> None:
    server = logical18
    scratch = make_scratch(
        server,
        f"Kill {moment}",
        log_based={"max_batch_changes": 1000},
        tables=[{"name": "public.k", "method": "log_based"}],
    )
    scratch.sql(
        "CREATE TABLE k (id int PRIMARY KEY, v text); INSERT INTO k SELECT g, 'v' FROM generate_series(1, 100) g"
    )
    table = scratch.one({"name": "public.k", "method": "log_based"})
    dest = scratch.destination()
    sync_log_based(scratch.config, dest, [table])
    for start in range(0, 5000, 1000):  # five transactions of 1000 changes: five batches
        scratch.sql(
            f"INSERT INTO k SELECT g, 'new' FROM generate_series({start + 101}, {start + 1100}) g; "
            f"UPDATE k SET v = v || '+' WHERE id <= {start + 50}"
        )
    raw = {
        "integration_name": f"Kill {moment}",
        "log_based": {"max_batch_changes": 1000},
        "tables": [{"name": "public.k", "method": "log_based"}],
        "source": {
            "host": server.host,
            "port": server.port,
            "user": server.superuser,
            "password": server.password,
            "database": scratch.source_db,
        },
        "destination": {
            "type": "postgres",
            "host": server.host,
            "port": server.port,
            "user": server.superuser,
            "password": server.password,
            "database": scratch.dest_db,
        },
    }
    child = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(raw), moment], capture_output=True, text=True, timeout=120
    )
    assert child.returncode == -signal.SIGKILL, child.stdout + child.stderr
    held = dest.changes().applied_lsn(scratch.config.slot_name)
    with psycopg2.connect(**server.dsn(scratch.source_db)) as conn:
        status = slot_status(conn, scratch.config.slot_name)
    assert status is not None and held is not None
    if lsn_int(status.confirmed_flush_lsn) > lsn_int(held):  # type: ignore[arg-type]
        assert dest.changes().was_reading(scratch.config.slot_name)  # the interrupted run is on record
    with dest.conn, dest.conn.cursor() as cur:
        cur.execute(f'SELECT count(*) FROM "{dest.schema}".k')
        partial = cur.fetchone()[0]
    assert 100 < partial < 5100  # the kill came mid-stream: some batches in, not all
    again = sync_log_based(scratch.config, dest, [table])  # no false gap: the run resumes
    assert not again.failures and not dest.changes().was_reading(scratch.config.slot_name)
    assert dest.fetch_rows(table) == scratch.source_rows(table)  # nothing lost, nothing doubled
    dest.close()
    scratch.sql(f"SELECT pg_drop_replication_slot('{scratch.config.slot_name}')")
