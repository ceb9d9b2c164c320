"""``test-connection``: connect once and report version, timing, SSL and read-replica settings."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import psycopg2.extensions

from rds_pipeline.engine.config import SourceConfig
from rds_pipeline.engine.core.rows import one
from rds_pipeline.engine.source.connection import connect_source, open_tunnel

# Stitch's setup guide: during a historical sync from a read replica, raise both delays to 8-12 hours.
STANDBY_DELAY_ADVICE_MS = 8 * 3600 * 1000
MIN_SERVER_VERSION_NUM = 120000
_STANDBY_SETTINGS = ("hot_standby", "max_standby_archive_delay", "max_standby_streaming_delay")


@dataclass
class ConnectionReport:
    server_version: str
    server_version_num: int
    seconds: float
    via_tunnel: bool
    ssl_in_use: bool
    ssl_version: str | None
    ssl_cipher: str | None
    in_recovery: bool
    standby_settings: dict[str, str] = field(default_factory=dict)
    advice: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        out = [
            f"Connected in {self.seconds:.2f}s{' through the SSH tunnel' if self.via_tunnel else ''}.",
            f"Server version: {self.server_version}",
            (
                f"SSL: in use ({self.ssl_version}, {self.ssl_cipher})"
                if self.ssl_in_use
                else "SSL: not in use (set source.ssl.mode: verify-full with the RDS CA bundle to encrypt)"
            ),
            f"Read replica: {'yes (pg_is_in_recovery() = true)' if self.in_recovery else 'no (primary)'}",
        ]
        for name, value in self.standby_settings.items():
            out.append(f"  {name} = {value}")
        out.extend(f"Advice: {line}" for line in self.advice)
        return out


def standby_advice(settings_ms: dict[str, int], hot_standby: str) -> list[str]:
    """The setup guide's advice for a replica whose standby delays would cancel long historical reads."""
    advice: list[str] = []
    if hot_standby != "on":
        advice.append("hot_standby is off: the replica accepts no queries. Turn hot_standby on.")
    for name in ("max_standby_archive_delay", "max_standby_streaming_delay"):
        value = settings_ms.get(name, -1)
        if 0 <= value < STANDBY_DELAY_ADVICE_MS:
            advice.append(
                f"{name} is {value // 1000}s. Long historical-sync queries on a replica are cancelled after this "
                f"delay ('canceling statement due to conflict with recovery'). Raise it to 8-12 hours during "
                f"historical syncs (on RDS: in the replica's parameter group, e.g. {name} = 28800000), then "
                f"lower it again once they finish."
            )
    return advice


def inspect_connection(conn: psycopg2.extensions.connection) -> dict[str, object]:
    """Read version, SSL and recovery facts from an open connection, in one round trip."""
    with conn.cursor() as cur:
        cur.execute(
            """
            SELECT current_setting('server_version'), current_setting('server_version_num')::int,
                   coalesce(s.ssl, false), s.version, s.cipher, pg_is_in_recovery()
            FROM (SELECT 1) one LEFT JOIN pg_stat_ssl s ON s.pid = pg_backend_pid()
            """
        )
        version, version_num, ssl, ssl_version, cipher, in_recovery = one(cur.fetchone())
        cur.execute(
            "SELECT name, setting, coalesce(unit, '') FROM pg_settings WHERE name = ANY(%s) ORDER BY name",
            (list(_STANDBY_SETTINGS),),
        )
        settings = cur.fetchall()
    conn.rollback()
    return {
        "server_version": version,
        "server_version_num": version_num,
        "ssl": ssl,
        "ssl_version": ssl_version,
        "ssl_cipher": cipher,
        "in_recovery": in_recovery,
        "settings": settings,
    }


def _display(setting: str, unit: str) -> str:
    if unit == "ms" and setting.lstrip("-").isdigit():
        value = int(setting)
        return "-1 (wait forever)" if value < 0 else f"{value} ms ({value / 3600000:.2f} h)"
    return setting


def run_connection_test(config: SourceConfig) -> ConnectionReport:
    """Connect (through the tunnel if configured), gather the facts, close everything."""
    started = time.monotonic()
    tunnel = open_tunnel(config)
    try:
        conn = connect_source(config, tunnel)
        try:
            facts = inspect_connection(conn)
        finally:
            conn.close()
    finally:
        if tunnel is not None:
            tunnel.close()
    seconds = time.monotonic() - started
    settings = facts["settings"]
    assert isinstance(settings, list)
    standby: dict[str, str] = {}
    advice: list[str] = []
    if facts["in_recovery"]:
        standby = {name: _display(setting, unit) for name, setting, unit in settings}
        millis = {name: int(setting) for name, setting, unit in settings if unit == "ms"}
        hot = next((setting for name, setting, _ in settings if name == "hot_standby"), "on")
        advice = standby_advice(millis, hot)
    version_num = int(str(facts["server_version_num"]))
    if version_num < MIN_SERVER_VERSION_NUM:
        advice.insert(0, f"PostgreSQL {facts['server_version']} is not supported: rds_pipeline needs 12 or newer.")
    return ConnectionReport(
        server_version=str(facts["server_version"]),
        server_version_num=version_num,
        seconds=seconds,
        via_tunnel=tunnel is not None,
        ssl_in_use=bool(facts["ssl"]),
        ssl_version=facts["ssl_version"],  # type: ignore[arg-type]
        ssl_cipher=facts["ssl_cipher"],  # type: ignore[arg-type]
        in_recovery=bool(facts["in_recovery"]),
        standby_settings=standby,
        advice=advice,
    )
