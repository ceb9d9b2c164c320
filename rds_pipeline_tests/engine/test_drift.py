"""Drift between the cached catalog and the live source, after real DDL."""

from __future__ import annotations

from pathlib import Path

import yaml

from rds_pipeline import cli
from rds_pipeline.engine.source.catalog import Catalog
from rds_pipeline.engine.source.discovery import discover
from rds_pipeline.engine.source.drift import check_drift
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.conftest import make_config


def test_drift_after_add_column_drop_table_type_and_key_changes(pg18: LocalPostgres) -> None:
    pg18.psql("CREATE DATABASE drift_db")
    pg18.psql(
        "CREATE TABLE keep (id int PRIMARY KEY, a text); CREATE TABLE doomed (id int);"
        "CREATE TABLE morph (id int, n int)",
        "drift_db",
    )
    config = make_config(pg18, database="drift_db")
    cached = discover(config.source, databases=["drift_db"])
    assert not check_drift(config.source, cached).drifted

    pg18.psql(
        "ALTER TABLE keep ADD COLUMN b timestamptz; DROP TABLE doomed;"
        "ALTER TABLE morph ALTER COLUMN n TYPE bigint, ADD PRIMARY KEY (id); CREATE TABLE fresh (x int)",
        "drift_db",
    )
    report = check_drift(config.source, cached)
    assert [(c.relation, c.kind, c.detail) for c in report.changes] == [
        ("drift_db.public.doomed", "table_removed", "table no longer exists"),
        ("drift_db.public.fresh", "table_added", "new table"),
        ("drift_db.public.keep", "column_added", "column 'b' (timestamp with time zone) added"),
        ("drift_db.public.morph", "type_changed", "column 'n' changed type integer -> bigint"),
        ("drift_db.public.morph", "primary_key_changed", "primary key changed (none) -> (id)"),
    ]
    only = check_drift(config.source, cached, only=["drift_db.public.keep"])
    assert [c.kind for c in only.changes] == ["column_added"]


def test_discover_check_reports_without_rewriting(pg18: LocalPostgres, tmp_path: Path, capsys) -> None:  # noqa: ANN001
    pg18.psql("CREATE DATABASE drift_cli_db")
    pg18.psql("CREATE TABLE t (id int PRIMARY KEY)", "drift_cli_db")
    path = tmp_path / "rds_pipeline.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "integration_name": "Drift CLI",
                "source": {
                    "host": pg18.host,
                    "port": pg18.port,
                    "user": pg18.superuser,
                    "password": pg18.password,
                    "database": "drift_cli_db",
                },
                "destination": {"type": "duckdb", "path": "x.duckdb"},
                "tables": [{"name": "public.t"}],
            }
        )
    )
    assert cli.main(["discover", "--config", str(path), "--database", "drift_cli_db"]) == 0
    catalog_file = tmp_path / "rds_pipeline_catalog.json"
    before = catalog_file.read_text()
    assert cli.main(["discover", "--check", "--config", str(path)]) == 0
    pg18.psql("ALTER TABLE t ADD COLUMN added_later text", "drift_cli_db")
    capsys.readouterr()
    assert cli.main(["discover", "--check", "--config", str(path)]) == 1
    assert "drift_cli_db.public.t: column 'added_later' (text) added" in capsys.readouterr().out
    assert catalog_file.read_text() == before
    pg18.psql("DROP TABLE t", "drift_cli_db")
    assert cli.main(["discover", "--config", str(path), "--database", "drift_cli_db"]) == 0
    err = capsys.readouterr().err
    assert "WARNING: selected public.t no longer exists at the source" in err
    assert Catalog.load(catalog_file).relations == []
