"""Capture pgoutput bytes from a real server: one workload that makes every message type, read through the SQL
interface (``pg_logical_slot_get_binary_changes``), which returns each message with its LSN and xid.

    python -m rds_pipeline_tests.engine.pgoutput_capture   # rewrites the golden files from PG18 and PG15
"""

from __future__ import annotations

import gzip
import json
import tempfile
from pathlib import Path
from typing import Any

import psycopg2

from rds_pipeline.local_postgres import LocalPostgres, embedded_bin_dir

FIXTURES = Path(__file__).resolve().parent / "pgoutput_fixtures"
LOGICAL_SETTINGS = {
    "wal_level": "logical",
    "max_replication_slots": "10",
    "max_wal_senders": "10",
    "max_prepared_transactions": "10",
    "logical_decoding_work_mem": "64kB",
    "fsync": "off",
}
BIG = 10_000  # a value stored out of line (STORAGE EXTERNAL), so an update that leaves it sends 'u'
STREAMED_ROWS = 1000  # about 150 kB of changes: past logical_decoding_work_mem, so the transaction is streamed

SCHEMA = """
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE TABLE items (id int PRIMARY KEY, name text, mood mood, big text, n numeric, at timestamptz);
ALTER TABLE items ALTER COLUMN big SET STORAGE EXTERNAL;
CREATE TABLE full_rows (id int, v text);
ALTER TABLE full_rows REPLICA IDENTITY FULL;
CREATE TABLE child (id serial PRIMARY KEY, item int);
CREATE TABLE bulk (id int PRIMARY KEY, pad text);
CREATE PUBLICATION pub FOR TABLE items, full_rows, child, bulk;
SELECT pg_replication_origin_create('upstream') WHERE NOT EXISTS (SELECT FROM pg_replication_origin WHERE roname = 'upstream');
"""

# (label, statements): each label names one transaction of the workload, in order
WORKLOAD: list[tuple[str, list[str]]] = [
    (
        "insert",
        [f"INSERT INTO items VALUES (1, 'one', 'happy', repeat('x', {BIG}), 'NaN', '2024-01-02 03:04:05.678+00')"],
    ),
    ("update unchanged toast", ["UPDATE items SET name = 'uno' WHERE id = 1"]),
    ("update key", ["UPDATE items SET id = 2 WHERE id = 1"]),
    ("update full", ["INSERT INTO full_rows VALUES (1, 'a')", "UPDATE full_rows SET v = 'b'"]),
    ("delete key", ["DELETE FROM items WHERE id = 2"]),
    ("delete full", ["DELETE FROM full_rows"]),
    ("nulls", ["INSERT INTO items (id) VALUES (3)"]),
    (
        "messages",
        [
            "SELECT pg_logical_emit_message(true, 'rds', 'tx hello')",
            "SELECT pg_logical_emit_message(false, 'rds', 'not tx')",
        ],
    ),
    ("truncate", ["INSERT INTO child (item) VALUES (3)", "TRUNCATE items, child RESTART IDENTITY CASCADE"]),
    (
        "origin",
        [
            "SELECT pg_replication_origin_xact_setup('0/ABCDEF', '2024-05-06 07:08:09+00')",
            "INSERT INTO items (id, name) VALUES (4, 'from upstream')",
        ],
    ),
    ("streamed", [f"INSERT INTO bulk SELECT g, repeat('p', 100) FROM generate_series(1, {STREAMED_ROWS}) g"]),
    (
        "streamed with a rolled-back subtransaction",
        [
            f"INSERT INTO bulk SELECT g, 'kept' FROM generate_series({STREAMED_ROWS + 1}, {2 * STREAMED_ROWS}) g",
            "SAVEPOINT s1",
            f"INSERT INTO bulk SELECT g, 'undone' FROM generate_series({2 * STREAMED_ROWS + 1}, {3 * STREAMED_ROWS}) g",
            "ROLLBACK TO SAVEPOINT s1",
        ],
    ),
    (
        "prepared",
        ["INSERT INTO items (id, name) VALUES (5, 'prepared')", "PREPARE TRANSACTION 'g1'", "COMMIT PREPARED 'g1'"],
    ),
    (
        "rolled back prepared",
        ["INSERT INTO items (id, name) VALUES (6, 'never')", "PREPARE TRANSACTION 'g2'", "ROLLBACK PREPARED 'g2'"],
    ),
]


def run_workload(server: LocalPostgres, database: str) -> None:
    conn = psycopg2.connect(**server.dsn(database))
    conn.autocommit = True
    with conn.cursor() as cur:
        for label, statements in WORKLOAD:
            if label == "origin":  # this transaction comes "from upstream": pgoutput sends an Origin message
                cur.execute("SELECT pg_replication_origin_session_setup('upstream')")
            prepared = statements[-1].startswith(("COMMIT PREPARED", "ROLLBACK PREPARED"))
            cur.execute("BEGIN")
            for statement in statements[:-2] if prepared else statements:
                cur.execute(statement)
            if prepared:
                cur.execute(statements[-2])  # PREPARE TRANSACTION ends the transaction block
                cur.execute(statements[-1])
            else:
                cur.execute("COMMIT")
            if label == "origin":
                cur.execute("SELECT pg_replication_origin_session_reset()")
    conn.close()


def capture(
    server: LocalPostgres, database: str, protocol_version: int, streaming: str, binary: bool = False
) -> list[dict[str, Any]]:
    """Set up, run the workload, and return every message as {lsn, xid, hex}."""
    server.psql(SCHEMA, database)
    server.psql("SELECT pg_create_logical_replication_slot('capture', 'pgoutput', false, true)", database)
    run_workload(server, database)
    conn = psycopg2.connect(**server.dsn(database))
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT lsn::text, xid::text, data FROM pg_logical_slot_get_binary_changes('capture', NULL, NULL, "
                "'proto_version', %s, 'publication_names', 'pub', 'messages', 'true', 'streaming', %s, "
                "'binary', %s, 'two_phase', %s)",
                (
                    str(protocol_version),
                    streaming,
                    "true" if binary else "false",
                    "true" if protocol_version >= 3 else "false",
                ),
            )
            rows = cur.fetchall()
        conn.rollback()
        with conn.cursor() as cur:
            cur.execute("SELECT pg_drop_replication_slot('capture')")
        conn.commit()
    finally:
        conn.close()
    return [{"lsn": lsn, "xid": int(xid), "hex": bytes(data).hex()} for lsn, xid, data in rows]


def server_version(server: LocalPostgres) -> int:
    return int(server.psql("SHOW server_version_num").strip()) // 10000


def write_fixtures() -> None:
    FIXTURES.mkdir(exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix="rds_pgoutput_"))
    base.chmod(0o755)
    servers = [LocalPostgres(embedded_bin_dir(), base / "pg18", settings=LOGICAL_SETTINGS)]
    pg15 = Path("/usr/lib/postgresql/15/bin")
    if (pg15 / "postgres").exists():
        servers.append(LocalPostgres(pg15, base / "pg15", settings=LOGICAL_SETTINGS))
    for server in servers:
        server.start()
        try:
            version = server_version(server)
            variants = [(4, "parallel", False), (1, "off", True)] if version >= 16 else [(3, "on", False)]
            for protocol, streaming, binary in variants:
                database = f"cap_{protocol}_{streaming}_{int(binary)}"
                server.psql(f"CREATE DATABASE {database}")
                messages = capture(server, database, protocol, streaming, binary)
                name = f"pg{version}_v{protocol}_{streaming}{'_binary' if binary else ''}.json.gz"
                (FIXTURES / name).write_bytes(
                    gzip.compress(
                        json.dumps(
                            {
                                "server_version": version,
                                "protocol_version": protocol,
                                "streaming": streaming,
                                "binary": binary,
                                "messages": messages,
                            },
                            indent=1,
                        ).encode()
                        + b"\n",
                        mtime=0,
                    )
                )
                print(f"{name}: {len(messages)} messages")
        finally:
            server.stop()


if __name__ == "__main__":
    write_fixtures()
