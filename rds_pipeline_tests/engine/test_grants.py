"""The printed grants, run for real: create the user, then connect as it and discover."""

from __future__ import annotations

import psycopg2
import pytest

from rds_pipeline import cli
from rds_pipeline.engine.source.discovery import discover
from rds_pipeline.engine.source.grants import GrantRequest, grants_sql, scram_verifier
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.conftest import QUIRKY_SCHEMA, QUIRKY_TABLE, UNICODE_TABLE, make_config

USER = 'Rep "User" ü'
PASSWORD = "pä ss'word\"1"


def test_round_trip_with_names_that_need_quoting(pg18: LocalPostgres, quirky_db: str) -> None:
    sql = grants_sql(GrantRequest(USER, PASSWORD, quirky_db, [QUIRKY_SCHEMA], log_based=True, rds=False))
    assert PASSWORD not in sql
    assert sql.splitlines()[2].startswith('CREATE USER "Rep ""User"" ü" WITH ENCRYPTED PASSWORD \'SCRAM-SHA-256$4096:')
    assert 'GRANT CONNECT ON DATABASE "Second DB" TO "Rep ""User"" ü";' in sql
    assert 'GRANT SELECT ON ALL TABLES IN SCHEMA "Sales Ops" TO "Rep ""User"" ü";' in sql
    assert 'ALTER DEFAULT PRIVILEGES IN SCHEMA "Sales Ops" GRANT SELECT ON TABLES TO "Rep ""User"" ü";' in sql
    assert sql.rstrip().endswith('ALTER ROLE "Rep ""User"" ü" REPLICATION;')
    pg18.psql(sql, quirky_db)

    config = make_config(pg18, database=quirky_db, source={"user": USER, "password": PASSWORD})
    catalog = discover(config.source, databases=[quirky_db])
    names = {r.name: r.can_select for r in catalog.relations}
    assert names == {QUIRKY_TABLE: True, UNICODE_TABLE: True, "Secret": True, "Recent Items": True}
    with psycopg2.connect(**pg18.dsn()) as admin, admin.cursor() as cur:
        cur.execute("SELECT rolreplication FROM pg_roles WHERE rolname = %s", (USER,))
        assert cur.fetchone() == (True,)
    admin.close()
    # default privileges: a table created later by the grantor is readable without a new GRANT
    pg18.psql('CREATE TABLE "Sales Ops"."Later" (id int)', quirky_db)
    with psycopg2.connect(**pg18.dsn(quirky_db, user=USER, password=PASSWORD)) as conn, conn.cursor() as cur:
        cur.execute('SELECT count(*) FROM "Sales Ops"."Later"')
        assert cur.fetchone() == (0,)
    conn.close()


def test_rds_variant_and_specific_tables(pg18: LocalPostgres, quirky_db: str) -> None:
    pg18.psql("CREATE ROLE rds_replication")  # exists on RDS; created here so the printed SQL runs as is
    sql = grants_sql(
        GrantRequest(
            "stitch_rds",
            "pw-Rds-1",
            quirky_db,
            [QUIRKY_SCHEMA],
            tables=[(QUIRKY_SCHEMA, UNICODE_TABLE)],
            log_based=True,
            rds=True,
            owner="postgres",
        )
    )
    assert 'GRANT SELECT ON TABLE "Sales Ops"."Café Ünïcode" TO "stitch_rds";' in sql
    assert "ALL TABLES" not in sql
    assert 'ALTER DEFAULT PRIVILEGES FOR ROLE "postgres" IN SCHEMA "Sales Ops"' in sql
    assert sql.rstrip().endswith('GRANT rds_replication TO "stitch_rds";')
    pg18.psql(sql, quirky_db)
    catalog = discover(
        make_config(pg18, database=quirky_db, source={"user": "stitch_rds", "password": "pw-Rds-1"}).source,
        databases=[quirky_db],
    )
    assert {r.name for r in catalog.relations if r.can_select} == {UNICODE_TABLE}
    assert pg18.psql("SELECT pg_has_role('stitch_rds', 'rds_replication', 'MEMBER')").strip() == "t"


def test_verifier_matches_the_server(pg18: LocalPostgres) -> None:
    """The server accepts our verifier as its own: same salt and iterations give the same secret."""
    pg18.psql("SET password_encryption = 'scram-sha-256'; CREATE ROLE verifier_probe LOGIN PASSWORD 'Ünï pw'")
    stored = pg18.psql("SELECT rolpassword FROM pg_authid WHERE rolname = 'verifier_probe'").strip()
    iterations, rest = stored.removeprefix("SCRAM-SHA-256$").split(":", 1)
    import base64

    salt = base64.b64decode(rest.split("$")[0])
    assert scram_verifier("Ünï pw", salt=salt, iterations=int(iterations)) == stored


def test_cli_prompts_twice_and_never_prints_the_password(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answers = iter(["Prompted-pw-9", "Prompted-pw-9"])
    monkeypatch.setattr("getpass.getpass", lambda prompt="": next(answers))
    code = cli.main(
        [
            "grants",
            "--user",
            "stitch",
            "--password-prompt",
            "--database",
            "app",
            "--schema",
            "public",
            "--log-based",
            "--target",
            "rds",
            "--config",
            "/nonexistent/rds_pipeline.yaml",
        ]
    )
    out = capsys.readouterr()
    assert code == 2  # an explicit --config that does not exist is an error ...
    code = cli.main(
        [
            "grants",
            "--user",
            "stitch",
            "--password-prompt",
            "--database",
            "app",
            "--schema",
            "public",
            "--log-based",
            "--target",
            "rds",
        ]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "Prompted-pw-9" not in out.out + out.err
    assert 'GRANT CONNECT ON DATABASE "app" TO "stitch";' in out.out
    assert out.out.rstrip().endswith('GRANT rds_replication TO "stitch";')
