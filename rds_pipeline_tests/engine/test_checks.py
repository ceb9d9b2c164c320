"""`check` against real servers: findings, severities, and fixes that work when run as printed."""

from __future__ import annotations

from pathlib import Path

import yaml

from rds_pipeline import cli
from rds_pipeline.engine.selection import resolve_selection
from rds_pipeline.engine.source.checks import Finding, run_checks
from rds_pipeline.engine.source.discovery import discover
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.conftest import make_config

ENTRIES = [
    {"name": "public.orders", "method": "key_based", "replication_key": "updated_at"},
    {"name": "public.secret_notes"},
    {"name": "public.big"},
]


def setup_database(pg18: LocalPostgres, name: str) -> None:
    pg18.psql(f"CREATE DATABASE {name}")
    pg18.psql(
        """
        CREATE TABLE orders (id bigint PRIMARY KEY, updated_at timestamptz NOT NULL);
        CREATE TABLE secret_notes (id int PRIMARY KEY, note text);
        CREATE TABLE big AS SELECT g AS id, repeat('x', 1000) AS filler FROM generate_series(1, 40000) g;
        CREATE ROLE checker LOGIN PASSWORD 'checker-pw-1';
        GRANT USAGE ON SCHEMA public TO checker;
        GRANT SELECT ON orders, big TO checker;
        """,
        name,
    )


def findings_for(pg18: LocalPostgres, database: str, **source: object) -> list[Finding]:
    catalog = discover(make_config(pg18, database=database).source, databases=[database])
    config = make_config(pg18, database=database, source={"user": "checker", "password": "checker-pw-1", **source})
    return run_checks(config, resolve_selection(ENTRIES, catalog, database))


def by_subject(findings: list[Finding], severity: str) -> dict[str, Finding]:
    return {f.subject: f for f in findings if f.severity == severity}


def test_missing_privileges_and_index_are_reported_with_working_fixes(pg18: LocalPostgres) -> None:
    setup_database(pg18, "check_db")
    findings = findings_for(pg18, "check_db", statement_timeout_seconds=1)
    errors, warnings = by_subject(findings, "error"), by_subject(findings, "warning")
    assert errors["check_db.public.secret_notes"].fix == 'GRANT SELECT ON TABLE "public"."secret_notes" TO "checker";'
    assert list(errors) == ["check_db.public.secret_notes"]
    assert warnings["check_db.public.orders"].fix == 'CREATE INDEX CONCURRENTLY ON "public"."orders" ("updated_at");'
    assert warnings["schema check_db.public"].fix == (
        'ALTER DEFAULT PRIVILEGES FOR ROLE "postgres" IN SCHEMA "public" GRANT SELECT ON TABLES TO "checker";'
    )
    timeout = warnings["check_db.public.big"]
    assert "longer than statement_timeout (1s)" in timeout.message
    assert timeout.fix and timeout.fix.startswith("source.statement_timeout_seconds: ")
    assert findings[0].severity == "error"  # errors first

    for finding in (
        errors["check_db.public.secret_notes"],
        warnings["check_db.public.orders"],
        warnings["schema check_db.public"],
    ):
        pg18.psql(finding.fix or "", "check_db")  # the fix, run exactly as printed
    after = findings_for(pg18, "check_db")
    assert not by_subject(after, "error")
    assert set(by_subject(after, "warning")) == set()
    assert "replication key updated_at is indexed" in by_subject(after, "ok")["check_db.public.orders"].message


def test_cli_exit_code_follows_errors(pg18: LocalPostgres, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    pg18.psql("CREATE DATABASE check_cli_db")
    pg18.psql(
        "CREATE TABLE hidden (id int PRIMARY KEY); CREATE ROLE cli_checker LOGIN PASSWORD 'cli-pw-1';", "check_cli_db"
    )
    path = tmp_path / "rds_pipeline.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "integration_name": "Check CLI",
                "source": {
                    "host": pg18.host,
                    "port": pg18.port,
                    "user": pg18.superuser,
                    "password": pg18.password,
                    "database": "check_cli_db",
                },
                "destination": {"type": "duckdb", "path": "x.duckdb"},
                "tables": [{"name": "public.hidden"}],
            }
        )
    )
    assert cli.main(["discover", "--config", str(path), "--database", "check_cli_db"]) == 0
    config = yaml.safe_load(path.read_text())
    config["source"].update({"user": "cli_checker", "password": "cli-pw-1"})
    path.write_text(yaml.safe_dump(config))
    capsys.readouterr()
    assert cli.main(["check", "--config", str(path)]) == 1
    out = capsys.readouterr().out
    assert 'fix: GRANT SELECT ON TABLE "public"."hidden" TO "cli_checker";' in out
    assert 'fix: GRANT USAGE ON SCHEMA "public" TO "cli_checker";' not in out  # PUBLIC has USAGE on public
    pg18.psql('GRANT SELECT ON "public"."hidden" TO "cli_checker";', "check_cli_db")
    assert cli.main(["check", "--config", str(path)]) == 0


def test_replica_advice_in_check(replica: LocalPostgres) -> None:
    findings = run_checks(make_config(replica), [])
    advice = [f for f in findings if f.subject == "read replica" and f.severity == "warning"]
    assert len(advice) == 2
    assert (
        advice[0].fix
        == "set max_standby_archive_delay = 28800000 in the replica's parameter group during historical syncs"
    )
