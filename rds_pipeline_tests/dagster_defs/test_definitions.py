"""The code location: built from the catalog file only, with keys, metadata, lineage, partitions and checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import yaml

from rds_pipeline.local_postgres import LocalPostgres, free_port
from rds_pipeline_tests.dagster_defs.project import make_project

TABLES = [
    {"name": "public.payment", "method": "key_based", "replication_key": "payment_date", "granularity": "monthly"},
    {"name": "public.rental", "method": "key_based", "replication_key": "rental_id", "chunk_rows": 5000},
    {"name": "public.inventory", "method": "full_table", "chunk_rows": 1000},
    {"name": "public.film", "method": "full_table"},
    {"name": "public.actor_info"},
    {"name": "legacy.rental"},
]


def test_definitions_from_the_catalog_without_touching_the_source(pg18: LocalPostgres, tmp_path: Path) -> None:
    project = make_project(pg18, tmp_path, TABLES, database="pagila")
    # point the config at a port where nothing listens: loading must not need the source
    config = yaml.safe_load(project.path.read_text())
    config["source"]["port"] = free_port()
    project.path.write_text(yaml.safe_dump(config))
    defs = project.defs()
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {
        "dagster_test/payment",
        "dagster_test/rental",
        "dagster_test/film",
        "dagster_test/actor_info",
        "dagster_test/legacy__rental",
        "source/pagila/public/film_actor",
        "rds_pipeline_loading_report",
    } <= keys

    payment = graph.get(dg.AssetKey(["dagster_test", "payment"]))
    assert isinstance(payment.partitions_def, dg.MonthlyPartitionsDefinition)
    minimum = pg18.psql("SELECT to_char(min(payment_date), 'YYYY-MM-01') FROM payment", "pagila").strip()
    assert payment.partitions_def.get_first_partition_key() == minimum  # the discovered minimum's month
    assert payment.group_name == "public" and payment.kinds == {"duckdb"}
    spec = payment.to_asset_spec()
    # table identity: fully qualified, a URI without credentials, and 1:1 column lineage to the source
    destination_file = Path(config["destination"]["path"])
    assert spec.metadata["dagster/table_name"] == f"{destination_file.stem}.dagster_test.payment"
    replica_file = (project.path.parent / destination_file).resolve()
    assert spec.metadata["dagster/uri"] == f"duckdb://{replica_file}?table=dagster_test.payment"
    lineage = spec.metadata["dagster/column_lineage"]
    source = dg.AssetKey(["source", "pagila", "public", "payment"])
    assert set(lineage.deps_by_column) == {c.name for c in spec.metadata["dagster/column_schema"].columns}
    assert lineage.deps_by_column["amount"] == [dg.TableColumnDep(asset_key=source, column_name="amount")]
    view = graph.get(dg.AssetKey(["dagster_test", "actor_info"])).to_asset_spec().metadata["dagster/column_lineage"]
    assert view.deps_by_column["film_info"] == [
        dg.TableColumnDep(asset_key=dg.AssetKey(["source", "pagila", "public", "actor_info"]), column_name="film_info")
    ]
    source_meta = graph.get(source).to_asset_spec().metadata
    assert source_meta["dagster/table_name"] == "pagila.public.payment"
    assert (
        source_meta["dagster/uri"] == f"postgresql://{pg18.host}:{config['source']['port']}/pagila?table=public.payment"
    )
    assert pg18.password not in str(source_meta) + str(spec.metadata)
    assert spec.metadata["rds_pipeline/replication_method"] == "key_based"
    assert spec.metadata["rds_pipeline/replication_key"] == "payment_date"
    schema = spec.metadata["dagster/column_schema"]
    assert [c.name for c in schema.columns][:2] == ["payment_id", "customer_id"]
    assert spec.freshness_policy is not None
    assert isinstance(graph.get(dg.AssetKey(["dagster_test", "rental"])).partitions_def, dg.DynamicPartitionsDefinition)
    inventory = graph.get(dg.AssetKey(["dagster_test", "inventory"]))  # 4,581 rows in chunks of ~1,000 ids
    assert inventory.partitions_def.get_partition_keys() == ["..918", "918..1835", "1835..2752", "2752..3669", "3669.."]
    assert graph.get(dg.AssetKey(["dagster_test", "film"])).partitions_def.get_partition_keys() == ["all"]
    assert graph.get(dg.AssetKey(["dagster_test", "legacy__rental"])).group_name == "legacy"

    # lineage: replica <- source view <- the base tables it reads
    assert graph.get(dg.AssetKey(["dagster_test", "actor_info"])).parent_keys == {
        dg.AssetKey(["source", "pagila", "public", "actor_info"])
    }
    view = graph.get(dg.AssetKey(["source", "pagila", "public", "actor_info"]))
    assert view.parent_keys == {
        dg.AssetKey(["source", "pagila", "public", t])
        for t in ("actor", "category", "film", "film_actor", "film_category")
    }
    assert view.group_name == "rds_source" and view.kinds == {"postgres"} and not view.is_materializable

    checks = {(k.asset_key.to_user_string(), k.name) for k in graph.asset_check_keys}
    # one check per table run with each sync, in parts; and one that compares the replica with the source, run
    # on its own (verify.py)
    assert {name for _, name in checks} == {"replica_matches_source", "matches_source"}
    replicas = {a for a, name in checks if name == "replica_matches_source"}
    assert replicas == {a for a, name in checks if name == "matches_source"}
    described = {
        c.key.asset_key.to_user_string(): c.description
        for a in defs.assets
        if isinstance(a, dg.AssetsDefinition)
        for c in a.check_specs
    }
    assert "its rows equal the rows copied" in described["dagster_test/inventory"]  # full table: the count part
    assert "primary key is unique" in described["dagster_test/rental"]
    assert "primary key" not in described["dagster_test/actor_info"]  # a view has no key
    assert {s.name for s in defs.sensors} == {"rds_new_data_sensor", "rds_key_range_sensor", "rds_drift_sensor"}
    assert {j.name for j in defs.jobs} == {"sync_all", "sync_group", "reset_table", "verify_replicas", "repair_table"}
    assert [s.job_name for s in defs.schedules] == ["sync_all"]
    # few multi-assets: one per source schema
    multi = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition) and len(a.keys) > 1]
    assert sorted(a.node_def.name for a in multi) == ["rds_sync_public"]


def test_dagster_definitions_validate(pg18: LocalPostgres, tmp_path: Path) -> None:
    project = make_project(pg18, tmp_path, TABLES, database="pagila")
    repo = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [str(Path(sys.executable).with_name("dagster")), "definitions", "validate", "-w", str(repo / "workspace.yaml")],
        capture_output=True,
        text=True,
        cwd=repo,
        timeout=300,
        env={**os.environ, "RDS_PIPELINE_CONFIG": str(project.path), "DAGSTER_HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation successful" in result.stdout + result.stderr


def test_owners_and_tags_for_every_table_or_one(pg18: LocalPostgres, tmp_path: Path) -> None:
    """`owners:` and `tags:` at the top apply to every replica; a table's own `owners:` replace them and its
    `tags:` add to them."""
    tables = [{"name": "public.film", "owners": ["team:catalog"], "tags": {"tier": "gold"}}, {"name": "public.actor"}]
    project = make_project(
        pg18, tmp_path, tables, database="pagila", owners=["data@example.com"], tags={"domain": "rentals"}
    )
    graph = project.defs().resolve_asset_graph()
    film = graph.get(dg.AssetKey(["dagster_test", "film"])).to_asset_spec()
    actor = graph.get(dg.AssetKey(["dagster_test", "actor"])).to_asset_spec()
    assert list(film.owners) == ["team:catalog"] and list(actor.owners) == ["data@example.com"]
    assert film.tags["tier"] == "gold" and film.tags["domain"] == "rentals" and "tier" not in actor.tags
    assert actor.tags["rds_pipeline/method"] == "full_table"
