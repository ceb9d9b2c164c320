"""Direct and SSL connections against real servers, and one test per failure kind."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from rds_pipeline.engine.errors import ConnectionProblem
from rds_pipeline.engine.source.connection import connect_source, source_connection
from rds_pipeline.engine.source.diagnostics import run_connection_test
from rds_pipeline.local_postgres import LocalPostgres, free_port
from rds_pipeline_tests.conftest import SOURCE_PASSWORD, SslServer, make_config


def fail_kind(config, expected_kind: str) -> ConnectionProblem:  # noqa: ANN001
    with pytest.raises(ConnectionProblem) as info:
        run_connection_test(config.source)
    assert info.value.kind == expected_kind, str(info.value)
    assert SOURCE_PASSWORD not in str(info.value)
    return info.value


def test_direct_connection_identifies_itself_and_sets_timeouts(pg18: LocalPostgres) -> None:
    config = make_config(pg18, source={"statement_timeout_seconds": 42})
    with source_connection(config.source) as conn, conn.cursor() as cur:
        cur.execute("SELECT current_setting('statement_timeout'), current_setting('application_name')")
        assert cur.fetchone() == ("42s", "rds_pipeline")
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'rds_pipeline'")
        assert cur.fetchone()[0] >= 1
        cur.execute("SELECT count(*) FROM public.rental")
        assert cur.fetchone()[0] == 16044


def test_report_for_a_primary(pg18: LocalPostgres) -> None:
    report = run_connection_test(make_config(pg18).source)
    assert report.server_version.startswith("18")
    assert report.in_recovery is False and report.ssl_in_use is False and report.standby_settings == {}
    assert report.seconds > 0
    assert any(line.startswith("Server version: 18") for line in report.lines())


def test_report_for_a_read_replica_gives_the_standby_advice(replica: LocalPostgres) -> None:
    report = run_connection_test(make_config(replica).source)
    assert report.in_recovery is True
    assert report.standby_settings["hot_standby"] == "on"
    assert report.standby_settings["max_standby_streaming_delay"] == "30000 ms (0.01 h)"
    assert len(report.advice) == 2
    assert all("Raise it to 8-12 hours during historical syncs" in a for a in report.advice)
    assert "lower it again" in report.advice[0]


def test_ssl_require_is_encrypted(pg15_ssl: SslServer) -> None:
    report = run_connection_test(
        make_config(pg15_ssl.server, database="postgres", source={"ssl": {"mode": "require"}}).source
    )
    assert report.ssl_in_use is True
    assert report.ssl_version and report.ssl_version.startswith("TLS")


def test_ssl_verify_full_checks_ca_and_host_name(pg15_ssl: SslServer) -> None:
    ssl = {"mode": "verify-full", "root_cert": str(pg15_ssl.ca_cert)}
    config = make_config(pg15_ssl.server, database="postgres", source={"host": "localhost", "ssl": ssl})
    assert run_connection_test(config.source).ssl_in_use is True


def test_verify_full_fails_on_a_wrong_host_name(pg15_ssl: SslServer) -> None:
    ssl = {"mode": "verify-full", "root_cert": str(pg15_ssl.ca_cert)}
    problem = fail_kind(
        make_config(pg15_ssl.server, database="postgres", source={"host": "127.0.0.1", "ssl": ssl}), "ssl_hostname"
    )
    assert 'server certificate for "localhost"' in problem.message
    assert 'does not match host name "127.0.0.1"' in problem.message
    assert "verify-ca" in problem.fix


def test_verify_ca_fails_with_the_wrong_ca(pg15_ssl: SslServer) -> None:
    ssl = {"mode": "verify-ca", "root_cert": str(pg15_ssl.other_ca_cert)}
    problem = fail_kind(make_config(pg15_ssl.server, database="postgres", source={"ssl": ssl}), "ssl_verify")
    assert "certificate verify failed" in problem.message
    assert "global-bundle.pem" in problem.fix


def test_ssl_required_but_unsupported(pg18: LocalPostgres) -> None:
    problem = fail_kind(make_config(pg18, source={"ssl": {"mode": "require"}}), "ssl_unsupported")
    assert "does not support it" in problem.message


def test_dns_failure(pg18: LocalPostgres) -> None:
    problem = fail_kind(make_config(pg18, source={"host": "no-such-db.invalid"}), "dns")
    assert "'no-such-db.invalid' does not resolve" in problem.message


def test_connection_refused() -> None:
    closed = LocalPostgres.__new__(LocalPostgres)
    closed.host, closed.port, closed.superuser, closed.password = "127.0.0.1", free_port(), "u", SOURCE_PASSWORD
    problem = fail_kind(make_config(closed), "refused")
    assert "security group" not in problem.message and "source.port" in problem.fix


@pytest.fixture
def silent_listener() -> Iterator[int]:
    """A port that accepts TCP connections and never answers: libpq's connect_timeout fires."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(5)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def hold() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    yield sock.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    sock.close()


def test_connection_timeout(pg18: LocalPostgres, silent_listener: int) -> None:
    config = make_config(pg18, source={"port": silent_listener, "connect_timeout": 2})
    problem = fail_kind(config, "timeout")
    assert "timed out after 2s" in problem.message and "security group" in problem.fix


def test_wrong_password(pg18: LocalPostgres) -> None:
    config = make_config(pg18)
    wrong = make_config(pg18, source={"password": "not-the-password"})
    problem = fail_kind(wrong, "auth")
    assert f"user '{config.source.user}'" in problem.message
    assert "not-the-password" not in str(problem)


def test_missing_database(pg18: LocalPostgres) -> None:
    problem = fail_kind(make_config(pg18, database="nope_db"), "database_missing")
    assert "'nope_db' does not exist" in problem.message


def test_connect_source_raises_the_same_problems(pg18: LocalPostgres, tmp_path: Path) -> None:
    with pytest.raises(ConnectionProblem) as info:
        connect_source(make_config(pg18, database="nope_db").source)
    assert info.value.kind == "database_missing"
    assert not isinstance(info.value, psycopg2.Error)
