"""A killed run never blocks the next one, with or without Dagster's daemon (issue 18).

Each scenario is a timeline of real `rds-pipeline sync` processes and real signals, on Dagster's default
instance (no dagster.yaml: SQLite) and on the shipped one (storage in PostgreSQL), neither with a daemon: a sync
killed with kill -9 mid-copy, then the next sync, which must clean the dead run (FAILURE, saying why, its slots
freed) and catch up by itself; two kills in a row; a simulated reboot (the dead run's pid reused by another
process of a later boot); and a live run holding the slot, which the next run waits for, saying so."""

from __future__ import annotations

import time
from pathlib import Path

import duckdb
import psutil
import psycopg2
import pytest

from rds_pipeline.dagster_defs.pools import duckdb_pool, slot_pool
from rds_pipeline.dagster_defs.run_process import BOOT_TAG, PID_TAG, STARTED_TAG, RunProcess
from rds_pipeline.dagster_defs.stale_runs import CLEANED_TAG
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.cli_runs import INSTANCES, Cli, kill_9, make_cli, source_backends, wait_for
from rds_pipeline_tests.dagster_defs.project import Project, make_project
from rds_pipeline_tests.dagster_dev import dagster_dev
from rds_pipeline_tests.test_webserver import launch, wait

ROWS = 3000
# about a minute to produce its rows: a sync is still copying when it is killed
SLOW_VIEW = (
    f"CREATE VIEW slow AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, {ROWS}) g "
    "WHERE pg_sleep(0.02) IS NOT NULL"
)
FAST_VIEW = f"CREATE OR REPLACE VIEW slow AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, {ROWS}) g"
RECOVER_SECONDS = 120  # the re-run: Dagster's start, the cleaning, 3,000 rows


def slow_project(server: LocalPostgres, path: Path, destination: str, **top: object) -> Project:
    extra: dict[str, object] = {}
    if destination == "postgres":
        database = f"{path.parent.name[-12:].lower().replace('-', '_')}_dest"
        server.psql(f'CREATE DATABASE "{database}"')
        extra["destination"] = {
            "type": "postgres",
            "host": server.host,
            "port": server.port,
            "user": server.superuser,
            "password": server.password,
            "database": database,
        }
    return make_project(server, path, [{"name": "public.slow", "primary_key": ["id"]}], ddl=SLOW_VIEW, **extra, **top)


def replica_rows(project: Project) -> int:
    config = project.config
    if config.destination.type == "duckdb":
        with duckdb.connect(str(config.destination.path), read_only=True) as conn:
            return conn.execute("SELECT count(DISTINCT id) FROM dagster_test.slow").fetchone()[0]
    with psycopg2.connect(**project.server.dsn(config.destination.database)) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(DISTINCT id) FROM dagster_test.slow")
        found = cur.fetchone()[0]
    conn.close()
    return found


def kill_mid_copy(cli: Cli, project: Project) -> str:
    """Start a sync, kill -9 it once it copies; returns the killed run's id."""
    before = {r.run_id for r in cli.runs()}
    process = cli.start("sync")
    wait_for(
        lambda: source_backends(project.server, project.database, "COPY%") or process.poll() is not None,
        90,
        "the sync never started copying",
    )
    assert process.poll() is None, process.communicate()[1][-3000:]
    kill_9(process)
    # its backend ends at its next write to the closed socket (a COPY that is sending: at once)
    wait_for(lambda: not source_backends(project.server, project.database), 30, "the killed sync's backend stayed")
    killed = [r for r in cli.runs() if r.run_id not in before]
    assert len(killed) == 1 and killed[0].status.value == "STARTED", [(r.run_id, r.status) for r in killed]
    return killed[0].run_id


def assert_cleaned(cli: Cli, run_id: str) -> None:
    run = next(r for r in cli.runs() if r.run_id == run_id)
    assert run.status.value == "FAILURE", run.status
    assert CLEANED_TAG in run.tags
    instance = cli.instance()
    try:
        failure = [
            e
            for e in instance.all_logs(run_id)
            if e.dagster_event_type and e.dagster_event_type.value == "PIPELINE_FAILURE"
        ]
        assert failure and "process" in failure[-1].message and "is gone" in failure[-1].message
        storage = instance.event_log_storage
        if storage.supports_global_concurrency_limits:
            assert run_id not in storage.get_concurrency_run_ids(), "the dead run still holds a pool slot"
    finally:
        instance.dispose()


@pytest.mark.parametrize("kind", INSTANCES)
@pytest.mark.parametrize("destination", ["duckdb", "postgres"])
def test_kill_9_mid_copy_then_the_next_sync_recovers_without_a_daemon(
    pg18: LocalPostgres, tmp_path: Path, destination: str, kind: str
) -> None:
    project = slow_project(pg18, tmp_path / "project", destination)
    cli = make_cli(pg18, project.path, tmp_path / "home", kind)
    killed = kill_mid_copy(cli, project)
    if destination == "duckdb":  # the killed run holds the DuckDB file's pool (limit 1): before, the next hung
        instance = cli.instance()
        try:
            pool = duckdb_pool(project.config)
            assert pool and killed in instance.event_log_storage.get_concurrency_info(pool).active_run_ids
        finally:
            instance.dispose()
    project.sql(FAST_VIEW)
    done = cli.run("sync", timeout=RECOVER_SECONDS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "is gone" in done.stderr and killed[:8] in done.stderr  # it says what it cleaned
    assert_cleaned(cli, killed)
    assert replica_rows(project) == ROWS
    assert source_backends(pg18, project.database) == 0
    status = cli.run("status").stdout  # the cleaned run, and who cleaned it
    assert f"run {killed[:8]} (pid " in status and "FAILURE, cleaned at " in status and "slots freed by run " in status


@pytest.mark.parametrize(("destination", "kind"), [("duckdb", "default"), ("postgres", "shipped")])
def test_two_kills_in_a_row_then_a_sync(pg18: LocalPostgres, tmp_path: Path, destination: str, kind: str) -> None:
    """On the shipped instance the rds_source pool has two slots: two dead runs used to hold both."""
    project = slow_project(pg18, tmp_path / "project", destination)
    cli = make_cli(pg18, project.path, tmp_path / "home", kind)
    first = kill_mid_copy(cli, project)
    second = kill_mid_copy(cli, project)  # its own start cleaned the first
    assert_cleaned(cli, first)
    project.sql(FAST_VIEW)
    done = cli.run("sync", timeout=RECOVER_SECONDS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_cleaned(cli, second)
    assert replica_rows(project) == ROWS


@pytest.mark.parametrize("kind", INSTANCES)
def test_after_a_reboot_the_next_sync_runs_by_itself(pg18: LocalPostgres, tmp_path: Path, kind: str) -> None:
    """Every process gone, the storage intact: the killed sync, then the servers themselves restarted. The dead
    run's record is made to name a live process of another boot (the pid reused after the reboot): it is the
    same pid, not the same process."""
    project = slow_project(pg18, tmp_path / "project", "duckdb")
    cli = make_cli(pg18, project.path, tmp_path / "home", kind)
    killed = kill_mid_copy(cli, project)
    pg18.stop()  # the machine goes down: the source and (shipped) the instance's storage with it
    pg18.start()
    pg18.wait_ready()
    instance = cli.instance()
    try:
        alive = RunProcess.of()  # a live process, as after the reboot another one has the old pid
        assert alive.state() == "alive"
        # the same pid and boot, started at another time: another process (a pid reused within one boot)
        assert RunProcess(alive.host, alive.boot, alive.pid, "ticks:1").state() == "gone"
        instance.add_run_tags(
            killed, {PID_TAG: str(alive.pid), STARTED_TAG: alive.started, BOOT_TAG: "an-earlier-boot"}
        )
        assert RunProcess.from_tags(instance.get_run_by_id(killed).tags).state() == "gone"
    finally:
        instance.dispose()
    project.sql(FAST_VIEW)
    done = cli.run("sync", timeout=RECOVER_SECONDS)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_cleaned(cli, killed)
    assert replica_rows(project) == ROWS


def test_a_live_run_keeps_its_slot_and_the_next_run_waits_saying_so(pg18: LocalPostgres, tmp_path: Path) -> None:
    """A live run's slot is never freed: the second sync waits (cheaply, saying for what), then runs; `status`
    shows it waiting. With pool_wait_seconds short, a wait past it fails with the fix."""
    project = slow_project(pg18, tmp_path / "project", "duckdb")
    project.sql(SLOW_VIEW.replace("CREATE VIEW", "CREATE OR REPLACE VIEW").replace("0.02", "0.004"))  # ~12 s
    cli = make_cli(pg18, project.path, tmp_path / "home", "default")
    pool = duckdb_pool(project.config)
    first = cli.start("sync")
    wait_for(lambda: source_backends(pg18, project.database, "COPY%"), 90, "the first sync never copied")
    second = cli.start("sync")
    waiting = psutil.Process(second.pid)
    status = wait_for(
        lambda: "waiting for pool" in (out := cli.run("status").stdout) and out,
        60,
        "status never showed the second run waiting",
        every=1,
    )
    assert f"for pool {pool}" in str(status)
    cpu = waiting.cpu_times()
    time.sleep(3)
    spent = sum(waiting.cpu_times()[:2]) - sum(cpu[:2])
    assert spent < 0.5, f"waiting for the slot cost {spent:.2f} s of CPU in 3 s"  # Dagster's loop spun a core
    out, err = first.communicate(timeout=120)
    assert first.returncode == 0, err[-3000:]
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("waiting for pool")]
    assert lines and f"waiting for pool {pool} held by run " in lines[0] and ", alive, since " in lines[0]
    assert replica_rows(project) == ROWS
    runs = cli.runs()
    assert len(runs) == 2 and all(r.status.value == "SUCCESS" for r in runs)  # neither was failed nor freed

    # a bound the user set: a wait past it fails, naming the pool, the run that holds it and the fix
    text = project.path.read_text() + "pool_wait_seconds: 3\n"
    project.path.write_text(text)
    project.sql(SLOW_VIEW.replace("CREATE VIEW", "CREATE OR REPLACE VIEW"))
    holder = cli.start("sync")
    wait_for(lambda: source_backends(pg18, project.database, "COPY%"), 90, "the holder never copied")
    bounded = cli.run("sync", timeout=60)
    assert bounded.returncode == 1
    assert f"pool_wait_seconds) for a slot of pool {pool}" in bounded.stderr and "Fix:" in bounded.stderr
    kill_9(holder)


def test_a_killed_log_based_sync_gives_its_slot_pool_back(logical18: LocalPostgres, tmp_path: Path) -> None:
    """The step that reads a log-based table's replication slot runs in the slot's pool (limit 1)."""
    server = logical18
    server.psql("CREATE DATABASE killed_log_dest")
    project = make_project(
        server,
        tmp_path / "project",
        [{"name": "public.t", "method": "log_based"}],
        ddl="CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, md5(g::text) FROM "
        "generate_series(1, 400000) g; ANALYZE",
        destination={
            "type": "postgres",
            "host": server.host,
            "port": server.port,
            "user": server.superuser,
            "password": server.password,
            "database": "killed_log_dest",
        },
        log_based={"slot": "killed_log", "publication": "killed_log"},
    )
    cli = make_cli(server, project.path, tmp_path / "home", "shipped")
    pool = slot_pool(project.config)
    process = cli.start("sync")

    def holding() -> bool:
        instance = cli.instance()
        try:
            return bool(instance.event_log_storage.get_concurrency_info(pool).claimed_slots)
        finally:
            instance.dispose()

    wait_for(lambda: holding() or process.poll() is not None, 90, "the log-based sync never took its pool", 0.05)
    assert process.poll() is None, process.communicate()[1][-3000:]
    kill_9(process)
    killed = next(r for r in cli.runs())
    project.sql(
        "UPDATE t SET v = 'changed' WHERE id <= 100; DELETE FROM t WHERE id > 399900; "
        "INSERT INTO t VALUES (500000, 'new')"
    )
    for _ in range(2):  # the first catches up (snapshot, then stream), the second streams what came since
        done = cli.run("sync", timeout=RECOVER_SECONDS)
        assert done.returncode == 0, done.stderr[-3000:]
    assert_cleaned(cli, killed.run_id)
    with psycopg2.connect(**server.dsn("killed_log_dest")) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*), count(*) FILTER (WHERE v = 'changed'), max(id) FROM dagster_test.t")
        assert cur.fetchone() == (399_901, 100, 500_000)
    conn.close()
    assert cli.run("cdc", "drop").returncode == 0  # no slot left to hold the shared server's WAL


def test_a_killed_launched_run_on_the_default_instance_is_cleaned_by_the_next(
    pg18: LocalPostgres, tmp_path: Path
) -> None:
    """Dagster's default instance under `dagster dev` (no dagster.yaml): its default run launcher cannot report a
    run's health to run monitoring, and nothing frees a killed run's pool slots. The next launched run frees them
    (our executor: after failing the run itself if it is still STARTED), takes the DuckDB file's pool and
    succeeds."""
    project = slow_project(pg18, tmp_path / "project", "duckdb")
    with dagster_dev(pg18, project.path, tmp_path / "home", "") as dev:
        killed = launch(dev.port, "sync_all")
        wait_for(lambda: source_backends(pg18, project.database, "COPY%"), 120, "the launched run never copied")
        instance = dev.instance()
        try:
            process = RunProcess.from_tags(instance.get_run_by_id(killed).tags)  # recorded by the run itself
            assert process is not None and process.state() == "alive"
            worker = psutil.Process(process.pid)
            for child in [*worker.children(recursive=True), worker]:  # the run worker and its step process
                child.kill()
            wait_for(lambda: not source_backends(pg18, project.database), 30, "the killed run's backend stayed")
            # the code server may see its run worker die and fail the run; nothing gives its slot back
            pool = duckdb_pool(project.config)
            assert killed in instance.event_log_storage.get_concurrency_info(pool).active_run_ids
            project.sql(FAST_VIEW)
            assert wait(dev.port, launch(dev.port, "sync_all"), 120) == "SUCCESS"
            run = instance.get_run_by_id(killed)
            assert run.status.value == "FAILURE"  # by the code server, or else by the next run (CLEANED_TAG)
            assert killed not in instance.event_log_storage.get_concurrency_run_ids()
        finally:
            instance.dispose()
    assert replica_rows(project) == ROWS
