"""Any PostgreSQL identifier, through the whole path: discover, select, load definitions, materialize from the
UI, sync from the CLI, run the checks, and read back exactly what the source holds."""

from __future__ import annotations

import re
import urllib.parse
from pathlib import Path

import dagster as dg
import pytest

from rds_pipeline.cli import main as cli
from rds_pipeline.dagster_defs.run import run_sync
from rds_pipeline.dagster_defs.translator import key_part
from rds_pipeline.engine.errors import SelectionError
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.dagster_defs.project import make_project

LONG = "l" * 63  # PostgreSQL's longest identifier
NAMES = [
    'Order "Items"',
    "Order Items",
    "Order_Items",
    "orders",
    "Orders",
    "semi;colon",
    "dot.ted",
    "Café Ünïcode",
    "select",
    LONG,
]
ODD_SCHEMA = 'Sales "Ops".v2'
VALID = re.compile(r"^[A-Za-z0-9_]+$")


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _ddl() -> str:
    statements = []
    for index, name in enumerate(NAMES):
        statements.append(
            f'CREATE TABLE public.{_ident(name)} ("Item ID" int PRIMARY KEY, "select" text, '
            f'"Ünïcode Çolumn" text, "Updated At" timestamptz NOT NULL DEFAULT now() - interval \'2 days\');'
            f'INSERT INTO public.{_ident(name)} ("Item ID", "select", "Ünïcode Çolumn") SELECT g, '
            f"'{index}:' || g || ' \"q\" ;', 'ü' || g FROM generate_series(1, 5) g;"
        )
    statements.append(
        f"CREATE SCHEMA {_ident(ODD_SCHEMA)}; CREATE TABLE {_ident(ODD_SCHEMA)}.{_ident('Order Items')} "
        f"(id int PRIMARY KEY, v text); INSERT INTO {_ident(ODD_SCHEMA)}.{_ident('Order Items')} VALUES "
        "(1, 'other schema');"
    )
    return "\n".join(statements) + "\nANALYZE;"


def _entries() -> list[dict[str, object]]:
    entries: list[dict[str, object]] = [{"schema": "public", "table": name} for name in NAMES]
    entries[1].update({"method": "key_based", "replication_key": "Updated At"})  # time windows of a quoted key
    entries[4]["destination_table"] = "Orders_upper"  # "Orders" vs "orders": one table in DuckDB (refused below)
    entries.append({"schema": ODD_SCHEMA, "table": "Order Items"})
    return entries


def test_names_that_differ_only_in_case_are_refused_with_the_fix(pg18: LocalPostgres, tmp_path: Path) -> None:
    entries = [e for e in _entries() if e.get("table") in ("orders", "Orders")]
    with pytest.raises(SelectionError) as info:
        make_project(
            pg18,
            tmp_path,
            [{"schema": "public", "table": "orders"}, {"schema": "public", "table": "Orders"}],
            ddl='CREATE TABLE orders (id int); CREATE TABLE "Orders" (id int);',
        ).selection()
    [problem] = info.value.problems
    assert "differ only in case" in problem and "destination_table:" in problem and len(entries) == 2


def test_any_identifier_through_the_whole_path(pg18: LocalPostgres, tmp_path: Path) -> None:
    by_cli = ('Order "Items"', "semi;colon")  # these two go through `rds-pipeline discover` and `select`
    project = make_project(pg18, tmp_path, [e for e in _entries() if e.get("table") not in by_cli], ddl=_ddl())
    assert cli(["discover", "--config", str(project.path)]) == 0
    for name in by_cli:
        assert cli(["select", f"public.{name}", "--config", str(project.path)]) == 0
    assert {t.relation.name for t in project.selection()} >= set(by_cli)
    defs = project.defs()  # one odd name must not take the code location down
    graph = defs.resolve_asset_graph()
    replicas = [k for k in graph.get_all_asset_keys() if k.path[0] == "dagster_test"]
    assert len(replicas) == len(NAMES) + 1  # collision-free: Order Items / Order_Items, orders / Orders
    assert all(VALID.match(part) for k in graph.get_all_asset_keys() for part in k.path)
    assert sorted(replicas) == sorted(
        k for k in project.defs().resolve_asset_graph().get_all_asset_keys() if k.path[0] == "dagster_test"
    )  # stable across loads
    assert key_part("Order Items") != key_part("Order_Items") == "Order_Items"
    assert key_part("select") == "select" and key_part(LONG) == LONG
    assert key_part('Order "Items"').startswith("Order_Items_")  # readable
    for spec in graph.get_all_asset_keys():
        node = graph.get(spec)
        meta = node.to_asset_spec().metadata
        if spec.path[0] == "dagster_test":
            assert meta["dagster/table_name"].startswith("replica.dagster_test.")
            # the URI keeps any name intact (percent-encoded) and parses back to it
            query = urllib.parse.urlsplit(meta["dagster/uri"]).query
            schema_part, _, table_part = query.removeprefix("table=").partition(".")
            assert urllib.parse.unquote(table_part) in {t.destination_table for t in project.selection()}
            assert urllib.parse.unquote(schema_part) == "dagster_test" and " " not in meta["dagster/uri"]
            assert set(meta["dagster/column_lineage"].deps_by_column) == {
                c.name for c in meta["dagster/column_schema"].columns
            }

    # materialize every table from the UI (one partition each), with its checks
    with dg.instance_for_test() as instance:
        assets = [a for a in defs.assets if isinstance(a, (dg.AssetsDefinition, dg.AssetSpec))]
        for asset_key in replicas:
            pdef = graph.get(asset_key).partitions_def
            partition = pdef.get_partition_keys()[-1]
            result = dg.materialize(
                assets, selection=[asset_key], partition_key=partition, instance=instance, resources=defs.resources
            )
            assert result.success, asset_key
            checks = result.get_asset_check_evaluations()
            assert checks and all(c.passed for c in checks), asset_key
        # the CLI's path: every table catches up, the checks run again
        outcome = run_sync(project.path, instance=instance)
        assert outcome.success and not outcome.failures
        assert len(outcome.rows) == len(NAMES) + 1

    # exact round trip: the replica equals the source, value for value
    dest = project.destination()
    try:
        for table in project.selection():
            instant = {c.name for c in table.columns if c.type == "timestamp with time zone"}
            pg = ", ".join(
                f"(extract(epoch FROM {_ident(c)}) * 1000000)::bigint::text" if c in instant else f"{_ident(c)}::text"
                for c in table.column_names
            )
            duck = ", ".join(
                f"CAST(epoch_us({_ident(c)}) AS VARCHAR)" if c in instant else f"CAST({_ident(c)} AS VARCHAR)"
                for c in table.column_names
            )
            source = project.sql(
                f"SELECT {pg} FROM {_ident(table.relation.schema)}.{_ident(table.relation.name)} ORDER BY 1"
            )
            expected = [tuple(line.split("|")) for line in source.splitlines() if line]
            got = dest.conn.execute(
                f"SELECT {duck} FROM dagster_test.{_ident(table.destination_table)} ORDER BY 1"
            ).fetchall()
            assert got == expected and len(got) == (1 if table.relation.schema == ODD_SCHEMA else 5), table.id
    finally:
        dest.close()
