"""Open psycopg2 connections to the source (directly, with SSL, or through the SSH tunnel).

Every source connection carries ``application_name=rds_pipeline`` (so the DBA sees us in pg_stat_activity),
a ``connect_timeout`` and a ``statement_timeout``. libpq failures are turned into a ``ConnectionProblem``
that says what went wrong and what to change.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import psycopg2
import psycopg2.extensions

from rds_pipeline.engine.config import SourceConfig, SslConfig
from rds_pipeline.engine.errors import ConnectionProblem
from rds_pipeline.engine.secrets import Secret, redact

if TYPE_CHECKING:  # paramiko loads only when a tunnel is opened
    from rds_pipeline.engine.source.tunnel import SshTunnel

APPLICATION_NAME = "rds_pipeline"


def libpq_params(
    *,
    host: str,
    port: int,
    user: str,
    password: Secret | None,
    database: str,
    ssl: SslConfig,
    connect_timeout: int,
    statement_timeout_seconds: int | None = None,
    hostaddr: str | None = None,
    options: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Keyword arguments for ``psycopg2.connect``; ``hostaddr`` sends traffic to the tunnel while ``host``
    stays the real name, so ``verify-full`` still checks the certificate against it."""
    params: dict[str, Any] = {
        "host": host,
        "port": port,
        "user": user,
        "dbname": database,
        "application_name": APPLICATION_NAME,
        "connect_timeout": connect_timeout,
        "sslmode": ssl.mode,
        # Keep idle connections alive through NATs and bastions, and notice dead peers.
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
        # bound every send to a dead peer too (keepalives only cover an idle connection)
        "tcp_user_timeout": 60_000,
    }
    if password:
        params["password"] = password.reveal()
    if hostaddr:
        params["hostaddr"] = hostaddr
    settings = dict(options or {})
    if statement_timeout_seconds is not None:
        settings["statement_timeout"] = str(int(statement_timeout_seconds) * 1000)
    if settings:
        params["options"] = " ".join(f"-c {name}={value}" for name, value in settings.items())
    if ssl.root_cert:
        params["sslrootcert"] = str(ssl.root_cert)
    if ssl.client_cert:
        params["sslcert"] = str(ssl.client_cert)
    if ssl.client_key:
        params["sslkey"] = str(ssl.client_key)
    return params


def source_params(
    config: SourceConfig,
    tunnel: SshTunnel | None = None,
    database: str | None = None,
    settings: dict[str, str] | None = None,
) -> dict[str, Any]:
    """libpq parameters for the source, pointed at the tunnel when there is one; ``settings`` are set at
    connection start (no spaces in their values)."""
    return libpq_params(
        host=config.host,
        port=tunnel.local_port if tunnel else config.port,
        user=config.user,
        password=config.password,
        database=database or config.database,
        ssl=config.ssl,
        connect_timeout=config.connect_timeout,
        statement_timeout_seconds=config.statement_timeout_seconds,
        hostaddr="127.0.0.1" if tunnel else None,
        options=settings,
    )


def open_tunnel(config: SourceConfig) -> SshTunnel | None:
    """Start the SSH tunnel when the source is configured with one."""
    if config.ssh is None:
        return None
    from rds_pipeline.engine.source.tunnel import SshTunnel  # paramiko loads only for a tunnel

    return SshTunnel(config.ssh, config.host, config.port).start()


def connect_source(
    config: SourceConfig,
    tunnel: SshTunnel | None = None,
    database: str | None = None,
    connection_factory: type[psycopg2.extensions.connection] | None = None,
    settings: dict[str, str] | None = None,
) -> psycopg2.extensions.connection:
    """Connect to the source, raising ``ConnectionProblem`` with the cause and the fix on failure.
    ``connection_factory`` opens a replication connection (``psycopg2.extras.LogicalReplicationConnection``)."""
    if tunnel is None and config.ssh is None:
        _check_resolves(config.host, "source.host")
    try:
        params = source_params(config, tunnel, database, settings)
        if connection_factory is not None:
            params["connection_factory"] = connection_factory
        conn: psycopg2.extensions.connection = psycopg2.connect(**params)
        return conn
    except psycopg2.OperationalError as exc:
        raise classify_connect_error(exc, config, via_tunnel=tunnel is not None, database=database) from None


@contextlib.contextmanager
def source_connection(config: SourceConfig, database: str | None = None) -> Iterator[psycopg2.extensions.connection]:
    """A source connection (and its tunnel, if configured) that is closed on exit."""
    with contextlib.ExitStack() as stack:
        tunnel = open_tunnel(config)
        if tunnel is not None:
            stack.callback(tunnel.close)
        conn = connect_source(config, tunnel, database)
        stack.callback(conn.close)
        yield conn


def _check_resolves(host: str, key: str) -> None:
    try:
        socket.getaddrinfo(host, None)
    except socket.gaierror:
        raise ConnectionProblem(
            "dns",
            f"The host name '{host}' does not resolve (DNS lookup failed).",
            f"correct {key}: on RDS it is the endpoint shown under 'Connectivity & security', like "
            "mydb.abc123.us-east-1.rds.amazonaws.com. A private endpoint resolves only inside its VPC: "
            "use an SSH bastion (source.ssh) from outside",
        ) from None


def classify_connect_error(
    exc: Exception, config: SourceConfig, via_tunnel: bool = False, database: str | None = None
) -> ConnectionProblem:
    """Map libpq's message to a ``ConnectionProblem`` of a stable kind, with the fix."""
    raw = redact(str(exc).strip(), [config.password])
    text = raw.lower()
    where = f"{config.host}:{config.port}" + (" (through the SSH tunnel)" if via_tunnel else "")
    dbname = database or config.database
    if "could not translate host name" in text:
        return ConnectionProblem("dns", f"The host name '{config.host}' does not resolve.", "correct source.host")
    if "connection refused" in text:
        return ConnectionProblem(
            "refused",
            f"Connection to {where} was refused: nothing listens on that port.",
            "check source.port (RDS default 5432) and that the instance is running",
        )
    if "timeout expired" in text or "timed out" in text:
        return ConnectionProblem(
            "timeout",
            f"Connecting to {where} timed out after {config.connect_timeout}s.",
            "allow inbound TCP 5432 from this machine's IP in the RDS instance's security group (and make the "
            "instance 'Publicly accessible', or connect through an SSH bastion with source.ssh)",
        )
    if "password authentication failed" in text or "authentication failed" in text:
        return ConnectionProblem(
            "auth",
            f"Password authentication failed for user '{config.user}' at {where}.",
            "correct source.user and the password behind source.password (check the environment variable it reads)",
        )
    if "does not exist" in text and "database" in text:
        return ConnectionProblem(
            "database_missing",
            f"The database '{dbname}' does not exist on {where}.",
            "correct source.database; `rds-pipeline discover` lists the databases this user can connect to",
        )
    if "server does not support ssl" in text:
        return ConnectionProblem(
            "ssl_unsupported",
            f"SSL is required (source.ssl.mode: {config.ssl.mode}) but the server at {where} does not support it.",
            "enable SSL on the server (on RDS it is always available; set rds.force_ssl=1 to require it), "
            "or set source.ssl.mode: prefer",
        )
    if "does not match host name" in text:
        return ConnectionProblem(
            "ssl_hostname",
            f"Certificate host-name mismatch under verify-full: {raw}",
            "set source.host to the name the certificate was issued for (on RDS, the instance endpoint, not a "
            "CNAME or IP), or use source.ssl.mode: verify-ca",
        )
    if "certificate verify failed" in text or "certificate" in text and "verify" in text:
        return ConnectionProblem(
            "ssl_verify",
            f"The server's certificate could not be verified with {config.ssl.root_cert}: {raw}",
            "set source.ssl.root_cert to the CA bundle that signed the server certificate (for RDS: "
            "https://truststore.pki.rds.amazonaws.com/global/global-bundle.pem)",
        )
    if "root certificate file" in text or "certificate file" in text or "private key file" in text:
        return ConnectionProblem(
            "ssl_files", f"An SSL file could not be used: {raw}", "correct the paths in source.ssl"
        )
    if "no pg_hba.conf entry" in text:
        return ConnectionProblem(
            "pg_hba",
            f"The server rejected this client (no pg_hba.conf entry): {raw}",
            "on RDS, check the parameter group (rds.force_ssl needs ssl.mode require or stricter); elsewhere add "
            "a pg_hba.conf line for this user and client address",
        )
    if "server closed the connection unexpectedly" in text and via_tunnel:
        return ConnectionProblem(
            "ssh_target_unreachable",
            f"The tunnel opened, but the database at {config.host}:{config.port} closed the connection.",
            "check that the database's security group allows the bastion on the database port",
        )
    return ConnectionProblem("connect", f"Could not connect to {where}: {raw}", "check the source settings")
