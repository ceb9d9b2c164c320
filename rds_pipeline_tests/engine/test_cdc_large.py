"""One huge transaction through the log within a memory bound: ``make cdc`` runs it with 5,000,000 rows,
``make test`` with 300,000 (``CDC_BIG_ROWS``). The sync runs in its own process, whose peak RSS is measured;
the replica must equal the source (count and a hash of every row)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from rds_pipeline.engine.replication.cdc.flow import sync_log_based
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.engine.sync_helpers import make_scratch

ROWS = int(os.environ.get("CDC_BIG_ROWS", "300000"))
MEMORY_BOUND_MB = 250
CHILD = textwrap.dedent("""
    import json, sys
    from rds_pipeline.engine.config import parse_config
    from rds_pipeline.engine.destinations.postgres import PostgresDestination
    from rds_pipeline.engine.replication.cdc.flow import sync_log_based
    from rds_pipeline.engine.selection import resolve_selection
    from rds_pipeline.engine.source.discovery import discover

    config = parse_config(json.loads(sys.argv[1]))
    tables = resolve_selection(config.tables, discover(config.source, databases=[config.source.database]),
                               config.source.database)
    dest = PostgresDestination(config.destination, config.destination_schema)
    dest.prepare(config)
    result = sync_log_based(config, dest, tables)
    print(json.dumps({"changes": result.changes(tables[0].id), "partial": result.stream.partial_flushes,
                      # VmHWM: this process's own peak (ru_maxrss would include the forking parent's size)
                      "rss_mb": int(open("/proc/self/status").read().split("VmHWM:")[1].split()[0]) / 1024}))
""")
FINGERPRINT = "SELECT count(*), sum(hashtext(id::text || v)) FROM {}"


def test_a_huge_transaction_stays_within_the_memory_bound(logical18: LocalPostgres) -> None:
    server = logical18
    tables = [{"name": "public.huge", "method": "log_based"}]
    scratch = make_scratch(server, "Huge Txn", tables=tables)
    scratch.sql("CREATE TABLE huge (id bigint PRIMARY KEY, v text); INSERT INTO huge VALUES (0, 'before')")
    dest = scratch.destination()
    sync_log_based(scratch.config, dest, [scratch.one(tables[0])])
    scratch.sql(f"INSERT INTO huge SELECT g, 'row ' || g || repeat('x', 40) FROM generate_series(1, {ROWS}) g")
    raw = {
        "integration_name": "Huge Txn",
        "tables": tables,
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
    child = subprocess.run([sys.executable, "-c", CHILD, json.dumps(raw)], capture_output=True, text=True, timeout=900)
    assert child.returncode == 0, child.stderr[-2000:]
    report = json.loads(child.stdout.strip().splitlines()[-1])
    assert report["changes"] == {"insert": ROWS} and report["partial"] >= ROWS // 50_000 - 1
    assert report["rss_mb"] < MEMORY_BOUND_MB, report  # flat: the default batch is 50,000 changes, whatever the size
    assert scratch.sql(FINGERPRINT.format("huge")) == scratch.sql(
        FINGERPRINT.format(f'"{dest.schema}".huge'), scratch.dest_db
    )
    print(f"{ROWS:,} rows in one transaction: peak RSS {report['rss_mb']:.0f} MB")
    dest.close()
    scratch.sql(f"SELECT pg_drop_replication_slot('{scratch.config.slot_name}')")
