"""A primary with a hot standby made by ``pg_basebackup``, as a read replica runs: streaming through a physical
slot, ``hot_standby_feedback`` on, ``wal_level = logical`` (so the standby can decode, PostgreSQL 16+), and on
17+ the standby synchronizes failover slots (``sync_replication_slots``) while the primary waits for it
(``synchronized_standby_slots``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rds_pipeline.local_postgres import LocalPostgres

PHYSICAL_SLOT = "standby_1"


@dataclass
class Pair:
    primary: LocalPostgres
    standby: LocalPostgres

    def replayed(self, timeout: float = 30) -> None:
        """Wait until the standby has replayed everything the primary wrote so far."""
        target = self.primary.psql("SELECT pg_current_wal_lsn()").strip()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.standby.psql(f"SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn").strip() == "t":
                return
            time.sleep(0.1)
        raise TimeoutError(f"the standby did not replay {target} in {timeout}s")

    def stop(self) -> None:
        self.standby.stop()
        self.primary.stop()


def primary_and_standby(bin_dir: Path, base: Path, password: str, settings: dict[str, str]) -> Pair:
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o755)
    primary = LocalPostgres(bin_dir, base / "primary", password=password, settings=dict(settings))
    primary.start()
    failover = int(primary.psql("SHOW server_version_num").strip()) >= 170000
    primary.psql(f"SELECT pg_create_physical_replication_slot('{PHYSICAL_SLOT}')")
    conninfo = f"host={primary.host} port={primary.port} user={primary.superuser} password={password} dbname=postgres"
    standby_settings = {
        **settings,
        "hot_standby": "on",
        "hot_standby_feedback": "on",
        "primary_conninfo": f"'{conninfo}'",
        "primary_slot_name": f"'{PHYSICAL_SLOT}'",
    }
    if failover:
        standby_settings["sync_replication_slots"] = "on"
    standby = LocalPostgres(bin_dir, base / "standby", password=password, settings=standby_settings)
    standby.base_dir.mkdir(parents=True, exist_ok=True)
    standby._own(standby.base_dir)
    primary.run(
        "pg_basebackup",
        "-h",
        primary.host,
        "-p",
        str(primary.port),
        "-U",
        primary.superuser,
        "-D",
        str(standby.data_dir),
        "-X",
        "stream",
        "-c",
        "fast",
    )
    if failover:  # a logical walsender sends nothing the standby has not flushed: a failover loses nothing
        # (set after the base backup: a promoted standby must not wait for a slot of its own name)
        primary.psql(f"ALTER SYSTEM SET synchronized_standby_slots = '{PHYSICAL_SLOT}'; SELECT pg_reload_conf()")
    signal = standby.data_dir / "standby.signal"
    signal.touch()
    standby._own(signal)
    standby.write_settings()
    standby.start()
    standby.wait_ready()
    return Pair(primary, standby)
