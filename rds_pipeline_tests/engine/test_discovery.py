"""Discovery against real servers: Pagila, a second database, names that need quoting."""

from __future__ import annotations

import psycopg2
import psycopg2.extras

from rds_pipeline.engine.source.catalog import Catalog
from rds_pipeline.engine.source.discovery import discover, discover_database
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.conftest import QUIRKY_SCHEMA, QUIRKY_TABLE, UNICODE_TABLE, make_config


def test_pagila_streams_kinds_and_schemas(pagila_catalog: Catalog) -> None:
    relations = pagila_catalog.by_id()
    assert {r.schema for r in pagila_catalog.relations} == {"public", "legacy"}
    payment = relations["pagila.public.payment"]
    assert payment.kind == "partitioned_table" and payment.partitions == 8
    assert not [r for r in pagila_catalog.relations if r.name.startswith("payment_p")], (
        "leaf partitions are not streams"
    )
    assert [c.name for c in payment.columns] == [
        "payment_id",
        "customer_id",
        "staff_id",
        "rental_id",
        "amount",
        "payment_date",
    ]
    assert relations["pagila.public.actor_info"].kind == "view"
    assert relations["pagila.public.nicer_but_slower_film_list"].kind == "materialized_view"
    assert relations["pagila.legacy.rental"].kind == "view"
    assert relations["pagila.public.rental"].kind == "table"
    assert len(pagila_catalog.relations) == 27


def test_columns_types_keys_and_lineage(pagila_catalog: Catalog) -> None:
    relations = pagila_catalog.by_id()
    film = relations["pagila.public.film"]
    rating, year = film.column("rating"), film.column("release_year")
    assert rating and rating.type == "mpaa_rating" and rating.kind == "enum"
    assert year and year.type == "year" and year.kind == "domain" and year.base_type == "integer"
    features = film.column("special_features")
    assert features and features.type == "text[]" and features.kind == "array" and features.base_type == "text"
    assert film.column("rental_rate").type == "numeric(4,2)"  # type: ignore[union-attr]
    assert film.column("film_id").nullable is False and "nextval" in (film.column("film_id").default or "")  # type: ignore[union-attr]
    assert film.primary_key == ("film_id",)
    assert relations["pagila.public.actor"].primary_key == ("actor_id",)  # INCLUDE columns are not key columns
    assert relations["pagila.public.film_actor"].primary_key == ("actor_id", "film_id")
    rental = relations["pagila.public.rental"]
    # indexed first (the primary key, then idx_fk_inventory_id), then the others in column order; no tsrange
    assert rental.replication_key_candidates == ("rental_id", "inventory_id", "customer_id", "staff_id", "last_update")
    assert "release_year" in film.replication_key_candidates  # a domain over integer
    assert "fulltext" not in film.replication_key_candidates
    assert relations["pagila.public.actor_info"].reads == (
        "public.actor",
        "public.category",
        "public.film",
        "public.film_actor",
        "public.film_category",
    )
    assert relations["pagila.legacy.rental"].reads == ("public.rental",)
    assert relations["pagila.public.film"].comment is None
    assert relations["pagila.public.rental"].size_bytes and relations["pagila.public.rental"].size_bytes > 1_000_000


def test_catalog_file_is_deterministic_and_round_trips(pagila_catalog: Catalog, pg18: LocalPostgres, tmp_path) -> None:  # noqa: ANN001
    again = discover(make_config(pg18).source, databases=["pagila"])
    assert again.to_json() == pagila_catalog.to_json()
    path = tmp_path / "catalog.json"
    pagila_catalog.save(path)
    assert Catalog.load(path) == pagila_catalog
    text = path.read_text()
    assert text.index('"legacy"') < text.index('"public"')  # sorted by schema, then name


def test_one_catalog_query_per_database(pg18: LocalPostgres) -> None:
    import logging

    statements: list[str] = []

    class Counter(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            statements.append(record.getMessage())

    logger = logging.getLogger("rds_pipeline_tests.sql")
    logger.addHandler(Counter())
    logger.setLevel(logging.DEBUG)
    conn = psycopg2.connect(connection_factory=psycopg2.extras.LoggingConnection, **pg18.dsn("pagila"))
    conn.initialize(logger)
    try:
        relations = discover_database(conn, "pagila")
    finally:
        conn.close()
    assert len(relations) == 27
    assert len(statements) == 1


def test_every_connectable_database_and_quoted_names(pg18: LocalPostgres, quirky_db: str) -> None:
    pg18.psql(
        'CREATE DATABASE "no_connect_db"; REVOKE CONNECT ON DATABASE "no_connect_db" FROM PUBLIC;'
        "CREATE ROLE discoverer LOGIN PASSWORD 'disc-pw-1'; GRANT pg_read_all_data TO discoverer;"
    )
    config = make_config(pg18, source={"user": "discoverer", "password": "disc-pw-1"})
    catalog = discover(config.source)
    assert {"Second DB", "pagila", "postgres"} <= set(catalog.databases)  # other tests add more databases
    assert not {"template0", "template1", "no_connect_db"} & set(catalog.databases)
    relations = catalog.by_id()
    items = relations[f"{quirky_db}.{QUIRKY_SCHEMA}.{QUIRKY_TABLE}"]
    assert [c.name for c in items.columns] == ["Item ID", "Updated At", "payload", "tags"]
    assert items.primary_key == ("Item ID",)
    assert items.replication_key_candidates == ("Item ID", "Updated At")
    assert items.row_estimate == 1
    assert relations[f"{quirky_db}.{QUIRKY_SCHEMA}.{UNICODE_TABLE}"].column("Ünïcode Çolumn") is not None
    assert relations[f"{quirky_db}.{QUIRKY_SCHEMA}.Recent Items"].reads == (f"{QUIRKY_SCHEMA}.{QUIRKY_TABLE}",)


def test_tables_without_select_are_marked(pg18: LocalPostgres, quirky_db: str) -> None:
    pg18.psql(
        "CREATE ROLE limited LOGIN PASSWORD 'lim-pw-1'; GRANT USAGE ON SCHEMA \"Sales Ops\" TO limited;"
        'GRANT SELECT ON "Sales Ops"."Café Ünïcode" TO limited;',
        quirky_db,
    )
    config = make_config(pg18, database=quirky_db, source={"user": "limited", "password": "lim-pw-1"})
    catalog = discover(config.source, databases=[quirky_db])
    access = {r.name: r.can_select for r in catalog.relations}
    assert access[UNICODE_TABLE] is True and access["Secret"] is False and access[QUIRKY_TABLE] is False
