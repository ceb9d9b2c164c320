"""Servers for the fault suite: a source behind its own real sshd, a destination on a separate server.

``FAULT_ROWS`` sets the size of the copied table (``make test``: 200,000 rows, about 40 MB; ``make faults``:
1,500,000). The suite prints its table of faults at the end of the run, and ``FAULTS_REPORT=path`` writes it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rds_pipeline.engine.config import IntegrationConfig, parse_config
from rds_pipeline.local_postgres import LocalPostgres, embedded_bin_dir
from rds_pipeline_tests.conftest import FAST_SETTINGS, SOURCE_PASSWORD
from rds_pipeline_tests.faults import harness
from rds_pipeline_tests.servers.sshd import ClientKey, SshServer, keygen, sshd_available

FAULT_ROWS = int(os.environ.get("FAULT_ROWS", "200000"))
SOURCE_DB = "faults"


@dataclass
class FaultLab:
    source: LocalPostgres
    destination: LocalPostgres
    sshd: SshServer
    key: ClientKey
    known_hosts: Path
    rows: int
    _databases: int = 0

    def config(self, tunneled: bool = True, user: str | None = None, **top: Any) -> IntegrationConfig:
        """A config whose destination is a fresh database on the destination server."""
        self._databases += 1
        dest_db = f"fault_dst_{self._databases}"
        self.destination.psql(f"CREATE DATABASE {dest_db}")
        source: dict[str, Any] = {
            "host": self.source.host,
            "port": self.source.port,
            "user": user or self.source.superuser,
            "password": self.source.password,
            "database": SOURCE_DB,
            "connect_timeout": 5,
            "stall_seconds": 5,
        }
        if tunneled:
            source["ssh"] = {
                "host": "127.0.0.1",
                "port": self.sshd.port,
                "user": self.sshd.user,
                "private_key": str(self.key.path),
                "known_hosts": str(self.known_hosts),
                "connect_timeout": 5,
            }
        return parse_config(
            {
                "integration_name": "Fault Lab",
                "source": source,
                "destination": {
                    "type": "postgres",
                    "host": self.destination.host,
                    "port": self.destination.port,
                    "user": self.destination.superuser,
                    "password": self.destination.password,
                    "database": dest_db,
                    "connect_timeout": 5,
                },
                **top,
            }
        )


@pytest.fixture(scope="session")
def fault_lab(work_dir: Path) -> Iterator[FaultLab]:
    reason = sshd_available()
    if reason:
        pytest.skip(reason)
    source = LocalPostgres(embedded_bin_dir(), work_dir / "fault_src", password=SOURCE_PASSWORD, settings=FAST_SETTINGS)
    destination = LocalPostgres(
        embedded_bin_dir(), work_dir / "fault_dst", password=SOURCE_PASSWORD, settings=FAST_SETTINGS
    )
    source.start()
    destination.start()
    source.psql(f"CREATE DATABASE {SOURCE_DB}")
    source.psql(
        f"""
        CREATE TABLE big (id int PRIMARY KEY, pad text NOT NULL, n int NOT NULL);
        INSERT INTO big SELECT g, repeat(md5(g::text), 6), g % 97 FROM generate_series(1, {FAULT_ROWS}) g;
        CREATE TABLE t1 (id int PRIMARY KEY, pad text NOT NULL, n int NOT NULL);
        INSERT INTO t1 SELECT * FROM big;
        CREATE TABLE t2 (id int PRIMARY KEY, pad text NOT NULL, n int NOT NULL);
        INSERT INTO t2 SELECT * FROM big WHERE id <= 1000;
        CREATE TABLE t3 (id int PRIMARY KEY, pad text NOT NULL, n int NOT NULL);
        INSERT INTO t3 SELECT * FROM big WHERE id <= 1000;
        ANALYZE;
    """,
        SOURCE_DB,
    )
    directory = work_dir / "fault_ssh"
    directory.mkdir()
    directory.chmod(0o700)
    key = keygen(directory / "id_ed25519", "ed25519")
    sshd = SshServer(directory, [key]).start()
    known_hosts = directory / "known_hosts"
    known_hosts.write_text(sshd.host_key_line)
    yield FaultLab(source, destination, sshd, key, known_hosts, FAULT_ROWS)
    sshd.stop()
    destination.stop()
    source.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not harness.RESULTS:
        return
    text = harness.table_text()
    terminalreporter.write_sep("=", f"faults ({FAULT_ROWS:,} rows, source through sshd, destination on another server)")
    terminalreporter.write_line(text)
    report = os.environ.get("FAULTS_REPORT")
    if report:
        Path(report).write_text(
            f"Faults injected mid-copy into a {FAULT_ROWS:,}-row full-table sync (source through "
            f"a real sshd, destination on another server):\n\n{text}\n"
        )
