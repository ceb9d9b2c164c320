"""Selection against Pagila's real catalog: resolution, validation messages, naming, and YAML edits."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from rds_pipeline.engine.errors import SelectionError
from rds_pipeline.engine.naming import snake_case
from rds_pipeline.engine.selection import resolve_selection
from rds_pipeline.engine.selection_edit import edit_selection
from rds_pipeline.engine.source.catalog import Catalog


def problems(entries: list, catalog: Catalog) -> list[str]:
    with pytest.raises(SelectionError) as info:
        resolve_selection(entries, catalog, "pagila")
    return info.value.problems


def test_the_documented_shape(pagila_catalog: Catalog) -> None:
    selection = resolve_selection(
        [
            {
                "name": "public.customer",
                "method": "key_based",
                "replication_key": "last_update",
                "columns": ["customer_id", "first_name", "last_name", "email", "last_update"],
            },
            {"name": "public.film", "method": "full_table"},
            {"name": "pagila.legacy.rental"},
        ],
        pagila_catalog,
        "pagila",
    )
    customer, film, legacy = selection
    assert customer.column_names == ("customer_id", "first_name", "last_name", "email", "last_update")
    assert customer.method == "key_based" and customer.replication_key == "last_update" and not customer.notices
    assert film.column_names == tuple(c.name for c in pagila_catalog.by_id()["pagila.public.film"].columns)
    assert (customer.destination_table, film.destination_table, legacy.destination_table) == (
        "customer",
        "film",
        "legacy__rental",
    )
    assert legacy.method == "full_table" and legacy.relation.kind == "view"


def test_primary_key_and_replication_key_are_always_replicated(pagila_catalog: Catalog) -> None:
    [table] = resolve_selection(
        [{"name": "public.customer", "method": "key_based", "replication_key": "last_update", "columns": ["email"]}],
        pagila_catalog,
        "pagila",
    )
    assert table.column_names == ("customer_id", "email", "last_update")  # source order
    assert table.notices == (
        "public.customer: primary-key column 'customer_id' is always replicated, so it was added to the selected columns",
        "public.customer: replication-key column 'last_update' is always replicated, so it was added to the selected "
        "columns",
    )


def test_errors_name_the_table_or_column_and_what_was_found(pagila_catalog: Catalog) -> None:
    found = problems(
        [
            {"name": "public.custmer"},
            {"name": "public.film", "columns": ["title", "ratng"]},
            {"name": "public.rental", "method": "key_based"},
            {"name": "public.film", "method": "key_based", "replication_key": "special_features"},
            {"name": "public.staff", "method": "incremental"},
        ],
        pagila_catalog,
    )
    assert found[0].startswith("tables[0] (public.custmer): no table or view 'public.custmer' in the catalog")
    assert "Did you mean 'public.customer', 'public.customer_list', 'public.country'?" in found[0]
    assert found[1].startswith("tables[1] (public.film).columns: no column 'ratng' in public.film (columns: film_id,")
    assert "Did you mean 'rating'?" in found[1]
    assert found[2] == (
        "tables[2] (public.rental): method key_based needs a replication_key. Fix: add "
        "`replication_key:` (candidates, indexed first: rental_id, inventory_id, customer_id, "
        "staff_id, last_update)"
    )
    assert found[3].startswith(
        "tables[3] (public.film).replication_key: column 'special_features' is of type text[], which cannot be ordered"
    )
    assert found[4] == (
        "tables[4] (public.staff).method: 'incremental' is not a method. Fix: use one of full_table, key_based, xmin, "
        "log_based"
    )


def test_json_key_is_refused(pagila_catalog: Catalog) -> None:
    found = problems(
        [{"name": "public.rental_report", "method": "key_based", "replication_key": "report"}], pagila_catalog
    )
    assert "column 'report' is of type jsonb, which cannot be ordered" in found[0]


def test_a_selected_view_that_no_longer_exists(pagila_catalog: Catalog) -> None:
    dropped = Catalog([r for r in pagila_catalog.relations if r.name != "actor_info"], pagila_catalog.databases)
    [message] = problems([{"name": "public.actor_info"}], dropped)
    assert "no table or view 'public.actor_info' in the catalog" in message
    assert "dropped or renamed at the source" in message


def test_destination_names_are_unique(pagila_catalog: Catalog) -> None:
    found = problems(
        [{"name": "public.rental"}, {"name": "legacy.rental", "destination_table": "rental"}], pagila_catalog
    )
    assert found == [
        "legacy.rental and public.rental would both load into destination table 'rental'. Fix: set "
        "`destination_table:` on one of them"
    ]
    assert snake_case("Stitch Amazon PostgreSQL RDS") == "stitch_amazon_postgresql_rds"
    assert snake_case("  2024 Prod / Orders-DB ") == "i_2024_prod_orders_db"


def test_quoted_names_resolve_as_written(pg18, quirky_db: str) -> None:  # noqa: ANN001
    from rds_pipeline.engine.source.discovery import discover
    from rds_pipeline_tests.conftest import make_config

    catalog = discover(make_config(pg18).source, databases=["pagila", quirky_db])
    [items, cafe] = resolve_selection(
        [
            {"name": 'Second DB.Sales Ops.Order "Items"', "method": "key_based", "replication_key": "Updated At"},
            {"database": "Second DB", "schema": "Sales Ops", "table": "Café Ünïcode"},
        ],
        catalog,
        "pagila",
    )
    assert items.destination_table == 'Second DB__Sales Ops__Order "Items"'
    assert items.primary_key == ("Item ID",)
    assert cafe.relation.name == "Café Ünïcode"


CONFIG_WITH_COMMENTS = """\
# Production replication (reviewed by the data team)
integration_name: Pagila Prod   # do not rename: it names the destination schema
source:
  host: db.internal
  user: stitch
  password: ${PW}
  database: pagila
  ssh: {host: bastion, user: ec2-user, private_key: key, passphrase: ${SSH_PASSPHRASE}}
destination: {type: duckdb, path: replica.duckdb}
tables:
  # the core tables
  - name: public.film
    method: full_table   # small
"""


def test_select_edits_keep_comments_and_order(pagila_catalog: Catalog, tmp_path: Path) -> None:
    path = tmp_path / "rds_pipeline.yaml"
    path.write_text(CONFIG_WITH_COMMENTS)
    edit_selection(
        path,
        pagila_catalog,
        "pagila",
        "public.customer",
        method="key_based",
        replication_key="last_update",
        columns=["email"],
    )
    edit_selection(path, pagila_catalog, "pagila", "public.film", columns=["title"])
    text = path.read_text()
    for comment in (
        "# Production replication (reviewed by the data team)",
        "# do not rename",
        "# the core tables",
        "method: full_table   # small",
    ):
        assert comment in text
    assert text.index("public.film") < text.index("public.customer")
    assert (
        "  - name: public.customer\n    method: key_based\n    replication_key: last_update\n    columns: [email]\n"
        in text
    )
    assert "    columns: [title]\n" in text
    edit_selection(path, pagila_catalog, "pagila", "public.film", remove=True)
    assert "public.film" not in path.read_text() and "# Production replication" in path.read_text()


def test_an_invalid_edit_writes_nothing(pagila_catalog: Catalog, tmp_path: Path) -> None:
    path = tmp_path / "rds_pipeline.yaml"
    path.write_text(CONFIG_WITH_COMMENTS)
    with pytest.raises(SelectionError, match="needs a replication_key"):
        edit_selection(path, pagila_catalog, "pagila", "public.rental", method="key_based")
    assert path.read_text() == CONFIG_WITH_COMMENTS


def test_catalog_entries_are_plain_frozen_data(pagila_catalog: Catalog) -> None:
    film = pagila_catalog.by_id()["pagila.public.film"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        film.name = "other"  # type: ignore[misc]


def test_log_based_needs_a_table_with_a_key_in_the_configured_database(pagila_catalog: Catalog) -> None:
    found = problems(
        [
            {"name": "public.actor_info", "method": "log_based"},
            {"name": "public.film", "method": "log_based", "replication_key": "last_update"},
        ],
        pagila_catalog,
    )
    assert found[0].startswith(
        "tables[0] (public.actor_info).method: log_based reads the write-ahead log, which "
        "holds no changes for a view. Fix: use full_table"
    )
    assert found[1].startswith("tables[1] (public.film).replication_key: applies only to method key_based")
    keyless = Catalog(
        [dataclasses.replace(r, primary_key=()) if r.name == "film" else r for r in pagila_catalog.relations],
        pagila_catalog.databases,
    )
    [message] = problems([{"name": "public.film", "method": "log_based"}], keyless)
    assert 'ALTER TABLE "public"."film" REPLICA IDENTITY FULL;` and `primary_key:' in message
    [table] = resolve_selection(
        [{"name": "public.film", "method": "log_based", "primary_key": ["film_id"]}], keyless, "pagila"
    )
    assert table.method == "log_based" and table.primary_key == ("film_id",)


def test_a_tables_owners_and_tags_are_checked(pagila_catalog: Catalog) -> None:
    found = problems([{"name": "public.film", "owners": ["someone"], "tags": {"tier": "gold"}}], pagila_catalog)
    assert found == [
        "tables[0] (public.film).owners: 'someone' is not an owner. Fix: use an email or "
        "team:<name> (letters, digits, _ and -)"
    ]
    [film] = resolve_selection(
        [{"name": "public.film", "owners": "team:catalog", "tags": {"tier": "gold"}}], pagila_catalog, "pagila"
    )
    assert film.owners == ("team:catalog",) and film.tags == {"tier": "gold"}
    [actor] = resolve_selection(["public.actor"], pagila_catalog, "pagila")
    assert actor.owners is None and actor.tags == {}  # the integration's apply
