"""RdsReplicationComponent in a real `dg` project: `create-dagster project`, installed into its own virtualenv,
`dg scaffold defs rds_pipeline.RdsReplicationComponent`, `dg check defs` before any state (no assets, no error),
`dg utils refresh-defs-state` (discovery: the state and the reviewable catalog file), loading with the source
down, `dg launch` of one table, and the same definitions as rds_pipeline/definitions.py builds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import yaml

from rds_pipeline.dagster_defs.definitions import build_definitions
from rds_pipeline.local_postgres import LocalPostgres, free_port

BIN = Path(sys.executable).parent
SITE = next(Path(sys.prefix).glob("lib/python3*/site-packages"))
DDL = (
    "CREATE TABLE orders (id int PRIMARY KEY, placed_at timestamptz NOT NULL, total numeric(10, 2)); "
    "INSERT INTO orders SELECT g, timestamptz '2026-10-01 00:00+00' + g * interval '1 hour', g * 1.5 "
    "FROM generate_series(1, 500) g; CREATE TABLE notes (id int PRIMARY KEY, body text); ANALYZE"
)


def run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def asset_keys(listed: str) -> set[str]:
    return {a["asset_key"] for a in json.loads(listed)["assets"]}


def test_component_in_a_dg_project(pg18: LocalPostgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pg18.psql("CREATE DATABASE comp_src")
    pg18.psql(DDL, "comp_src")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path / "home"),
        "COMP_HOST": pg18.host,
        "COMP_PORT": str(pg18.port),
        "COMP_PASSWORD": pg18.password,
        "NO_COLOR": "1",
    }
    env.pop("RDS_PIPELINE_CONFIG", None)
    env.pop("VIRTUAL_ENV", None)
    (tmp_path / "home").mkdir()
    # Dagster's telemetry crashes `dg launch` (execute_job) on a multi_asset whose specs have different partitions
    # (AssetsDefinition.partitions_def); rds_pipeline's dagster.yaml turns it off, as here
    (tmp_path / "home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    run([str(BIN / "create-dagster"), "project", "rds_proj", "--no-uv-sync"], tmp_path, env)
    project = tmp_path / "rds_proj"
    # installed into its own virtualenv (which sees rds_pipeline's, for the packages this machine has)
    run([sys.executable, "-m", "venv", "--without-pip", ".venv"], project, env)
    site = next(project.glob(".venv/lib/python3*/site-packages"))
    (site / "_rds_pipeline_base.pth").write_text(f"import site; site.addsitedir({str(SITE)!r})\n")
    python = project / ".venv" / "bin" / "python"
    run([str(python), "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "-e", "."], project, env)
    env = {
        **env,
        "VIRTUAL_ENV": str(project / ".venv"),
        "PATH": f"{project / '.venv' / 'bin'}:{env['PATH']}",
    }  # activated
    # dg in the project's environment (create-dagster lists dagster-dg-cli among the project's dev dependencies)
    dg_script = project / ".venv" / "bin" / "dg"
    dg_script.write_text(
        f"#!{python}\nimport sys\nfrom dagster_dg_cli.cli import main\n\n"
        "if __name__ == '__main__':  # step processes import this module again\n    sys.exit(main())\n"
    )
    dg_script.chmod(0o755)
    dg = str(dg_script)

    run([dg, "scaffold", "defs", "rds_pipeline.RdsReplicationComponent", "my_rds"], project, env)
    folder = project / "src" / "rds_proj" / "defs" / "my_rds"
    assert yaml.safe_load((folder / "defs.yaml").read_text()) == {
        "type": "rds_pipeline.RdsReplicationComponent",
        "attributes": {"config": "rds_pipeline.yaml"},
    }
    config = yaml.safe_load((folder / "rds_pipeline.yaml").read_text())  # the template, filled in as a user would
    config["source"] = {
        "host": "${COMP_HOST}",
        "port": "${COMP_PORT}",
        "user": pg18.superuser,
        "password": "${COMP_PASSWORD}",
        "database": "comp_src",
    }
    config["tables"] = [
        {"name": "public.orders", "method": "key_based", "replication_key": "placed_at", "granularity": "monthly"},
        {"name": "public.notes"},
    ]
    (folder / "rds_pipeline.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    # before any state: loading works and has no assets yet (a connector never loaded breaks nothing)
    run([dg, "check", "defs"], project, env)
    assert asset_keys(run([dg, "list", "defs", "--json"], project, env)) == set()

    # the state: discovery writes it, and the catalog file next to the config, in the same reviewable JSON
    run([dg, "utils", "refresh-defs-state"], project, env)
    catalog = json.loads((folder / "rds_pipeline_catalog.json").read_text())
    assert {r["name"] for r in catalog["relations"]} >= {"orders", "notes"}
    states = [p for p in project.rglob("state") if p.is_file()]  # where Dagster keeps local state
    assert len(states) == 1 and json.loads(states[0].read_text()) == catalog

    # loading never needs the source: with the source unreachable, the definitions still load from the state
    down = {**env, "COMP_PORT": str(free_port())}
    (folder / "rds_pipeline_catalog.json").unlink()  # and not from the catalog file: from the component's state
    run([dg, "check", "defs"], project, down)
    keys = asset_keys(run([dg, "list", "defs", "--json"], project, down))
    assert {"my_rds_replication/orders", "my_rds_replication/notes", "source/comp_src/public/orders"} <= keys
    for name in ("COMP_HOST", "COMP_PORT", "COMP_PASSWORD"):
        monkeypatch.setenv(name, down[name])
    same = build_definitions(folder / "rds_pipeline.yaml", catalog_path=states[0])  # the other entry point
    graph = same.resolve_asset_graph()
    assert keys == {k.to_user_string() for k in graph.get_all_asset_keys()}

    # materialize one table through dg, against the source
    # one table through dg, against the source: its latest window, which brings the history on a first sync
    run([dg, "launch", "--assets", "my_rds_replication/orders", "--partition", "2026-10-01"], project, env)
    with duckdb.connect(str(folder / "replica.duckdb"), read_only=True) as replica:
        copied = replica.execute("SELECT count(*), sum(total) FROM my_rds_replication.orders").fetchone()
    assert copied == tuple(
        float(v) if "." in v else int(v)
        for v in pg18.psql("SELECT count(*), sum(total) FROM orders", "comp_src").strip().split("|")
    )
