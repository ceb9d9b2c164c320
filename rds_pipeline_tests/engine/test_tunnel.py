"""The SSH tunnel against a real OpenSSH sshd forwarding to real PostgreSQL servers."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import psutil
import psycopg2
import pytest

from rds_pipeline.engine.errors import ConnectionProblem
from rds_pipeline.engine.source.connection import connect_source, source_connection
from rds_pipeline.engine.source.diagnostics import run_connection_test
from rds_pipeline.engine.source.tunnel import SshTunnel
from rds_pipeline.local_postgres import LocalPostgres, free_port
from rds_pipeline_tests.conftest import SOURCE_PASSWORD, SshFixture, SslServer, make_config


def ssh_section(sshd: SshFixture, key: str = "ed25519", **overrides: Any) -> dict[str, Any]:
    client_key = sshd.keys[key]
    section: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": sshd.server.port,
        "user": sshd.server.user,
        "private_key": str(client_key.path),
        "known_hosts": str(sshd.known_hosts),
        "connect_timeout": 5,
    }
    if client_key.passphrase:
        section["passphrase"] = client_key.passphrase
    section.update(overrides)
    return section


def tunnel_problem(server: LocalPostgres, sshd: SshFixture, **kwargs: Any) -> ConnectionProblem:
    key = kwargs.pop("key", "ed25519")
    source = kwargs.pop("source", {})
    config = make_config(server, source={"ssh": ssh_section(sshd, key, **kwargs), **source})
    with pytest.raises(ConnectionProblem) as info:
        run_connection_test(config.source)
    text = str(info.value)
    assert SOURCE_PASSWORD not in text
    for client_key in sshd.keys.values():
        assert not client_key.passphrase or client_key.passphrase not in text
    return info.value


@pytest.mark.parametrize("key", ["ed25519", "ecdsa", "rsa"])
def test_query_through_the_tunnel_with_each_key_type(pg18: LocalPostgres, sshd: SshFixture, key: str) -> None:
    config = make_config(pg18, source={"ssh": ssh_section(sshd, key)})
    with source_connection(config.source) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), current_setting('application_name') FROM public.film")
        assert cur.fetchone() == (1000, "rds_pipeline")
        # The server sees the connection coming from sshd on loopback, not from our listener.
        cur.execute("SELECT client_addr::text FROM pg_stat_activity WHERE pid = pg_backend_pid()")
        assert cur.fetchone()[0].startswith("127.0.0.1")


def test_report_says_tunnel(pg18: LocalPostgres, sshd: SshFixture) -> None:
    report = run_connection_test(make_config(pg18, source={"ssh": ssh_section(sshd)}).source)
    assert report.via_tunnel and report.lines()[0].endswith("through the SSH tunnel.")


def test_verify_full_works_through_the_tunnel(pg15_ssl: SslServer, sshd: SshFixture) -> None:
    """libpq checks the certificate against source.host while the bytes go through 127.0.0.1:<tunnel>."""
    ssl = {"mode": "verify-full", "root_cert": str(pg15_ssl.ca_cert)}
    config = make_config(
        pg15_ssl.server, database="postgres", source={"host": "localhost", "ssl": ssl, "ssh": ssh_section(sshd)}
    )
    report = run_connection_test(config.source)
    assert report.via_tunnel and report.ssl_in_use


def test_pinned_fingerprint_replaces_known_hosts(pg18: LocalPostgres, sshd: SshFixture, tmp_path: Path) -> None:
    ssh = ssh_section(
        sshd, known_hosts=str(tmp_path / "empty_known_hosts"), host_key_fingerprint=sshd.server.fingerprint
    )
    assert run_connection_test(make_config(pg18, source={"ssh": ssh}).source).via_tunnel


def test_unknown_host_key_is_refused(pg18: LocalPostgres, sshd: SshFixture, tmp_path: Path) -> None:
    problem = tunnel_problem(pg18, sshd, known_hosts=str(tmp_path / "empty_known_hosts"))
    assert problem.kind == "ssh_host_key_unknown"
    assert sshd.server.fingerprint in problem.message
    assert f"ssh-keyscan -p {sshd.server.port} 127.0.0.1 >>" in problem.fix


def test_unknown_host_key_is_accepted_only_with_the_explicit_opt_in(
    pg18: LocalPostgres, sshd: SshFixture, tmp_path: Path
) -> None:
    ssh = ssh_section(sshd, known_hosts=str(tmp_path / "empty"), trust_unknown_host_key=True)
    assert run_connection_test(make_config(pg18, source={"ssh": ssh}).source).via_tunnel


def test_changed_host_key_is_refused(pg18: LocalPostgres, sshd: SshFixture, tmp_path: Path) -> None:
    other = sshd.keys["stranger"].public.split()[:2]
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{sshd.server.port} {other[0]} {other[1]}\n")
    problem = tunnel_problem(pg18, sshd, known_hosts=str(known))
    assert problem.kind == "ssh_host_key_changed"
    assert "CHANGED" in problem.message and "ssh-keygen -R" in problem.fix


def test_wrong_pinned_fingerprint_is_refused(pg18: LocalPostgres, sshd: SshFixture) -> None:
    problem = tunnel_problem(pg18, sshd, host_key_fingerprint="SHA256:" + "A" * 43)
    assert problem.kind == "ssh_host_key_changed"


def test_key_not_authorized(pg18: LocalPostgres, sshd: SshFixture) -> None:
    problem = tunnel_problem(pg18, sshd, key="stranger")
    assert problem.kind == "ssh_auth"
    assert "authorized_keys" in problem.fix


def test_wrong_passphrase(pg18: LocalPostgres, sshd: SshFixture) -> None:
    problem = tunnel_problem(pg18, sshd, passphrase="wrong passphrase")
    assert problem.kind == "ssh_key_passphrase"
    assert "passphrase is wrong" in problem.message
    assert "wrong passphrase" not in str(problem)


def test_missing_passphrase(pg18: LocalPostgres, sshd: SshFixture) -> None:
    ssh = ssh_section(sshd)
    del ssh["passphrase"]
    config = make_config(pg18, source={"ssh": ssh})
    with pytest.raises(ConnectionProblem) as info:
        run_connection_test(config.source)
    assert info.value.kind == "ssh_key_passphrase" and "encrypted and no passphrase" in info.value.message


def test_database_unreachable_from_the_bastion(pg18: LocalPostgres, sshd: SshFixture) -> None:
    problem = tunnel_problem(pg18, sshd, source={"port": free_port()})
    assert problem.kind == "ssh_target_unreachable"
    assert "cannot reach the database" in problem.message and "security group" in problem.fix


def test_bastion_refusing_connections(pg18: LocalPostgres, sshd: SshFixture) -> None:
    problem = tunnel_problem(pg18, sshd, port=free_port())
    assert problem.kind == "ssh_connect"


def test_tunnel_closes_threads_and_sockets(pg18: LocalPostgres, sshd: SshFixture) -> None:
    config = make_config(pg18, source={"ssh": ssh_section(sshd)})
    assert config.source.ssh is not None
    process = psutil.Process()
    before = {c.laddr for c in process.net_connections(kind="tcp")}
    threads_before = set(threading.enumerate())
    with SshTunnel(config.source.ssh, "127.0.0.1", pg18.port) as tunnel:
        assert tunnel.is_active
        transport = tunnel._client.get_transport() if tunnel._client else None
        assert transport is not None
        # several connections at once over this one tunnel: one SSH transport, a channel (and a backend) each
        opened = [connect_source(config.source, tunnel) for _ in range(3)]
        pids = set()
        for each in opened:
            with each.cursor() as cur:
                cur.execute("SELECT pg_backend_pid()")
                pids.add(cur.fetchone()[0])
        assert len(pids) == 3 and tunnel._client.get_transport() is transport
        for each in opened:
            each.close()
        conn = psycopg2.connect(
            host="127.0.0.1", port=tunnel.local_port, user=pg18.superuser, password=pg18.password, dbname="pagila"
        )
        conn.cursor().execute("SELECT 1")  # left open: close() must still tear the tunnel down
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and set(threading.enumerate()) - threads_before:
        time.sleep(0.1)
    assert not (set(threading.enumerate()) - threads_before)
    conn.close()
    leaked = {c.laddr for c in process.net_connections(kind="tcp") if c.status != psutil.CONN_TIME_WAIT} - before
    assert not [addr for addr in leaked if addr.port == tunnel.local_port]
    assert not tunnel.is_active
