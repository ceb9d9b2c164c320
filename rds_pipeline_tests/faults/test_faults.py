"""Faults injected mid-copy, against real servers: each ends with the destination equal to the source, row for
row, no hang, and no rds_pipeline backend left on the source."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import psycopg2
import pytest
import yaml

from rds_pipeline.dagster_defs.run import run_sync
from rds_pipeline.engine.destinations.factory import open_destination
from rds_pipeline.engine.errors import LoadError
from rds_pipeline.engine.replication.sync import sync_table
from rds_pipeline.engine.selection import resolve_selection
from rds_pipeline.engine.source.discovery import discover
from rds_pipeline.engine.source.session import SourceSession
from rds_pipeline_tests.cli_runs import Cli, kill_9, make_cli
from rds_pipeline_tests.faults.conftest import SOURCE_DB, FaultLab
from rds_pipeline_tests.faults.harness import (
    FINISH_SECONDS,
    RESULTS,
    FaultResult,
    Injection,
    SyncThread,
    backend_left,
    compare,
    cut,
    freeze,
    kill_monitor,
    scalar,
    wait_mid_copy,
)

Inject = Callable[[FaultLab, str, Injection], bool]


def _restart(server_attr: str) -> Inject:
    def inject(lab: FaultLab, dest_db: str, injection: Injection) -> bool:
        server = getattr(lab, server_attr)
        server.run(
            "pg_ctl",
            "-D",
            str(server.data_dir),
            "-m",
            "fast",
            "-w",
            "-t",
            "60",
            "restart",
            "-l",
            str(server.base_dir / "server.log"),
        )
        return True

    return inject


def _terminate_destination_backend(lab: FaultLab, dest_db: str, injection: Injection) -> bool:
    return bool(
        scalar(
            lab.destination,
            "postgres",
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s AND query ILIKE 'COPY%%'",
            (dest_db,),
        )
    )


FAULTS: dict[str, tuple[bool, Inject]] = {
    "SSH session cut (its sshd processes killed)": (True, lambda lab, db, inj: cut(lab.sshd.process.pid)),
    "SSH session frozen (SIGSTOP)": (True, lambda lab, db, inj: freeze(lab.sshd.process.pid, inj)),
    "SSH monitor process killed": (True, lambda lab, db, inj: kill_monitor(lab.sshd.process.pid)),
    "source restart": (True, _restart("source")),
    "destination backend terminated": (False, _terminate_destination_backend),
    "destination backend terminated, source tunneled": (True, _terminate_destination_backend),
    "destination restart": (True, _restart("destination")),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_a_fault_mid_copy_loses_nothing(fault_lab: FaultLab, fault: str) -> None:
    tunneled, inject = FAULTS[fault]
    config = fault_lab.config(tunneled=tunneled)
    dest_db = config.destination.database or ""
    [table] = resolve_selection(["public.big"], discover(config.source, databases=[SOURCE_DB]), SOURCE_DB)
    result = FaultResult(fault)
    RESULTS.append(result)
    injection = Injection()
    sync = SyncThread(config, table)
    try:
        sync.start()
        wait_mid_copy(fault_lab.destination, dest_db, fault_lab.rows * 10)  # about a twentieth of the table
        injected_at = time.monotonic()
        result.injected = inject(fault_lab, dest_db, injection)
        sync.join(FINISH_SECONDS)
        assert not sync.is_alive(), f"{fault}: the sync hung for {FINISH_SECONDS}s after the fault"
        result.recover_seconds = sync.ended_at - injected_at
        assert sync.error is None, f"{fault}: {sync.error!r}"
        equal = compare(result, fault_lab.source, SOURCE_DB, fault_lab.destination, dest_db, "big", "fault_lab.big")
        result.backend_left = backend_left(fault_lab.source)
        result.survived = equal and not result.backend_left
        assert result.injected and equal and not result.backend_left, result
        assert sync.result is not None and sync.result.attempts >= 2  # the fault was felt, and retried
    finally:
        injection.cleanup()


CHILD = """
import json, sys
from rds_pipeline.engine.config import parse_config
from rds_pipeline.engine.destinations.factory import open_destination
from rds_pipeline.engine.replication.sync import sync_table
from rds_pipeline.engine.selection import resolve_selection
from rds_pipeline.engine.source.discovery import discover
from rds_pipeline.engine.source.session import SourceSession
config = parse_config(json.loads(sys.argv[1]))
[table] = resolve_selection(["public.big"], discover(config.source, databases=["faults"]), "faults")
destination = open_destination(config)
with SourceSession(config.source) as session:
    sync_table(session, destination, table)
"""


def _raw(lab: FaultLab, dest_db: str) -> dict[str, object]:
    """The config as rds_pipeline.yaml holds it (for a child process, or a project on disk)."""
    return {
        "integration_name": "Fault Lab",
        "source": {
            "host": lab.source.host,
            "port": lab.source.port,
            "user": lab.source.superuser,
            "password": lab.source.password,
            "database": SOURCE_DB,
            "connect_timeout": 5,
            "ssh": {
                "host": "127.0.0.1",
                "port": lab.sshd.port,
                "user": lab.sshd.user,
                "private_key": str(lab.key.path),
                "known_hosts": str(lab.known_hosts),
            },
        },
        "destination": {
            "type": "postgres",
            "host": lab.destination.host,
            "port": lab.destination.port,
            "user": lab.destination.superuser,
            "password": lab.destination.password,
            "database": dest_db,
        },
    }


def test_kill_9_of_the_sync_then_a_rerun(fault_lab: FaultLab) -> None:
    config = fault_lab.config()
    dest_db = config.destination.database or ""
    result = FaultResult("kill -9 of the sync, then a re-run")
    RESULTS.append(result)
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(_raw(fault_lab, dest_db))],
        env={**os.environ},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_mid_copy(fault_lab.destination, dest_db, fault_lab.rows * 10)
        injected_at = time.monotonic()
        os.kill(child.pid, signal.SIGKILL)
        result.injected = child.wait(10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
    result.backend_left = backend_left(fault_lab.source)  # the killed client's backend ends by itself
    [table] = resolve_selection(["public.big"], discover(config.source, databases=[SOURCE_DB]), SOURCE_DB)
    rerun = SyncThread(config, table)
    rerun.start()
    rerun.join(FINISH_SECONDS)
    assert not rerun.is_alive() and rerun.error is None, rerun.error
    result.recover_seconds = rerun.ended_at - injected_at
    equal = compare(result, fault_lab.source, SOURCE_DB, fault_lab.destination, dest_db, "big", "fault_lab.big")
    result.survived = equal and not result.backend_left
    assert result.injected and result.survived, result


def test_a_permission_revoked_on_one_table_of_several(fault_lab: FaultLab, tmp_path) -> None:  # noqa: ANN001
    role = "fault_reader"
    fault_lab.source.psql(
        f"DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN PASSWORD '{fault_lab.source.password}';"
        f"GRANT SELECT ON t1, t2, t3 TO {role}",
        SOURCE_DB,
    )
    config = fault_lab.config(user=role)
    dest_db = config.destination.database or ""
    raw = _raw(fault_lab, dest_db)
    raw["source"] = {**raw["source"], "user": role}  # type: ignore[dict-item]
    raw["tables"] = ["public.t1", "public.t2", "public.t3"]
    path = tmp_path / "rds_pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    discover(config.source, databases=[SOURCE_DB]).save(tmp_path / "rds_pipeline_catalog.json")
    result = FaultResult("permission revoked on one table of several")
    RESULTS.append(result)
    outcome: list[object] = []

    with dg.instance_for_test() as instance:

        def run() -> None:
            outcome.append(run_sync(path, instance=instance, parallel=1))  # t1, then t2, then t3

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        wait_mid_copy(fault_lab.destination, dest_db, fault_lab.rows * 10)  # t1 (the large one) is copying
        injected_at = time.monotonic()
        fault_lab.source.psql(f"REVOKE SELECT ON t2 FROM {role}", SOURCE_DB)
        result.injected = True
        worker.join(FINISH_SECONDS)
        assert not worker.is_alive()
        first = outcome[0]
        assert not first.success  # type: ignore[attr-defined]
        failed = {f["table"]: f["error"] for f in first.failures}  # type: ignore[attr-defined]
        assert list(failed) == [f"{SOURCE_DB}.public.t2"] and "permission denied" in failed[f"{SOURCE_DB}.public.t2"]
        fault_lab.source.psql(f"GRANT SELECT ON t2 TO {role}", SOURCE_DB)
        again = run_sync(path, instance=instance)
        result.recover_seconds = time.monotonic() - injected_at
        assert again.success
    equal = all(
        compare(result, fault_lab.source, SOURCE_DB, fault_lab.destination, dest_db, t, f"fault_lab.{t}")
        for t in ("t1", "t2", "t3")
    )
    result.backend_left = backend_left(fault_lab.source)
    result.survived = equal and not result.backend_left
    assert result.survived, result


def test_a_lock_held_on_the_destination_is_a_bounded_wait(fault_lab: FaultLab) -> None:
    """Another session holds the destination table: each attempt waits at most lock_timeout_seconds, the table
    fails clearly after the last one, and the next sync converges once the lock is gone."""
    config = fault_lab.config(tunneled=False)
    config = dataclasses.replace(config, destination=dataclasses.replace(config.destination, lock_timeout_seconds=1))
    dest_db = config.destination.database or ""
    [table] = resolve_selection(["public.t2"], discover(config.source, databases=[SOURCE_DB]), SOURCE_DB)
    first = SyncThread(config, table)
    first.start()
    first.join(FINISH_SECONDS)
    result = FaultResult("destination table locked by another session")
    RESULTS.append(result)
    holder = psycopg2.connect(**fault_lab.destination.dsn(dest_db))
    try:
        with holder.cursor() as cur:
            cur.execute("LOCK TABLE fault_lab.t2 IN ACCESS EXCLUSIVE MODE")
        result.injected = True
        started = time.monotonic()
        with SourceSession(config.source) as session:
            destination = open_destination(config)
            with pytest.raises(LoadError) as info:
                sync_table(session, destination, table, max_attempts=2, backoff_seconds=0.2)
            destination.close()
        waited = time.monotonic() - started
        assert waited < 15 and "lock timeout" in str(info.value) and table.id in str(info.value)
    finally:
        holder.rollback()
        holder.close()
    again = SyncThread(config, table)
    again.start()
    again.join(FINISH_SECONDS)
    assert again.error is None, again.error
    result.recover_seconds = again.ended_at - started  # the bounded waits, the release, the converging sync
    equal = compare(result, fault_lab.source, SOURCE_DB, fault_lab.destination, dest_db, "t2", "fault_lab.t2")
    result.backend_left = backend_left(fault_lab.source)
    result.survived = equal and not result.backend_left
    assert result.survived, result


def _cli_project(lab: FaultLab, tmp_path: Path) -> tuple[Cli, str]:
    """``public.big`` in a project on disk, and `rds-pipeline` against the shipped dagster.yaml (its storage on
    the destination server) with no daemon running. The rds_source pool is given one slot, so one dead run's
    slot would block every later run."""
    config = lab.config()
    dest_db = config.destination.database or ""
    raw = {**_raw(lab, dest_db), "tables": [{"name": "public.big"}]}
    path = tmp_path / "rds_pipeline.yaml"
    path.write_text(yaml.safe_dump(raw))
    discover(config.source, databases=[SOURCE_DB]).save(tmp_path / "rds_pipeline_catalog.json")
    cli = make_cli(lab.destination, path, tmp_path / "home", "shipped")
    instance = cli.instance()
    try:
        instance.event_log_storage.set_concurrency_slots("rds_source", 1)
    finally:
        instance.dispose()
    return cli, dest_db


def _rerun(result: FaultResult, lab: FaultLab, cli: Cli, dest_db: str, injected_at: float) -> None:
    done = cli.run("sync", timeout=FINISH_SECONDS)
    assert done.returncode == 0, done.stderr[-3000:]
    result.recover_seconds = time.monotonic() - injected_at
    equal = compare(result, lab.source, SOURCE_DB, lab.destination, dest_db, "big", "fault_lab.big")
    result.backend_left = backend_left(lab.source)
    result.survived = (
        equal and not result.backend_left and not any(r.status.value in ("STARTED", "STARTING") for r in cli.runs())
    )
    assert result.survived, result


@pytest.mark.parametrize("reboot", [False, True], ids=["kill", "reboot"])
def test_kill_9_of_the_cli_then_a_rerun_without_a_daemon(fault_lab: FaultLab, tmp_path: Path, reboot: bool) -> None:
    """`rds-pipeline sync` killed with kill -9 mid-copy (with a reboot: then the servers restarted too); the next
    `rds-pipeline sync` cleans the dead run and finishes, with no daemon."""
    cli, dest_db = _cli_project(fault_lab, tmp_path)
    result = FaultResult(
        "reboot (sync killed, servers restarted), then a re-run"
        if reboot
        else "kill -9 of `rds-pipeline sync`, re-run without a daemon"
    )
    RESULTS.append(result)
    process = cli.start("sync")
    wait_mid_copy(fault_lab.destination, dest_db, fault_lab.rows * 10)
    injected_at = time.monotonic()
    kill_9(process)
    result.injected = process.returncode == -signal.SIGKILL
    if reboot:
        for server in (fault_lab.source, fault_lab.destination):
            server.run(
                "pg_ctl",
                "-D",
                str(server.data_dir),
                "-m",
                "immediate",
                "-w",
                "-t",
                "60",
                "restart",
                "-l",
                str(server.base_dir / "server.log"),
            )
    _rerun(result, fault_lab, cli, dest_db, injected_at)


def test_ctrl_c_mid_copy_then_a_rerun(fault_lab: FaultLab, tmp_path: Path) -> None:
    """Ctrl-C stops the copy within 10 s (exit 130), leaves nothing half-committed nor running on the source,
    and the next sync finishes."""
    cli, dest_db = _cli_project(fault_lab, tmp_path)
    result = FaultResult("Ctrl-C mid-copy, then a re-run")
    RESULTS.append(result)
    process = cli.start("sync")
    wait_mid_copy(fault_lab.destination, dest_db, fault_lab.rows * 10)
    injected_at = time.monotonic()
    os.killpg(process.pid, signal.SIGINT)
    try:
        process.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        kill_9(process)
    result.injected = process.returncode == 130
    assert result.injected, f"exit code {process.returncode} {time.monotonic() - injected_at:.1f} s after Ctrl-C"
    assert not backend_left(fault_lab.source)
    _rerun(result, fault_lab, cli, dest_db, injected_at)
