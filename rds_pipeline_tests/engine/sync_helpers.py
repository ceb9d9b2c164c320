"""Helpers for the replication tests: scratch source/destination databases on the real test server."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg2
from psycopg2 import sql

from rds_pipeline.engine.config import IntegrationConfig, parse_config
from rds_pipeline.engine.core.session_settings import apply_session_settings
from rds_pipeline.engine.destinations.postgres import PostgresDestination
from rds_pipeline.engine.selection import SelectedTable, resolve_selection
from rds_pipeline.engine.source.discovery import discover
from rds_pipeline.engine.source.session import SourceSession
from rds_pipeline.local_postgres import LocalPostgres

_counter = itertools.count()


@dataclass
class Scratch:
    server: LocalPostgres
    source_db: str
    dest_db: str
    config: IntegrationConfig

    def sql(self, statement: str, database: str | None = None) -> str:
        return self.server.psql(statement, database or self.source_db)

    def select(self, entries: list[Any]) -> list[SelectedTable]:
        catalog = discover(self.config.source, databases=[self.source_db])
        return resolve_selection(entries, catalog, self.source_db)

    def one(self, entry: Any) -> SelectedTable:
        return self.select([entry])[0]

    def destination(self) -> PostgresDestination:
        dest = PostgresDestination(self.config.destination, self.config.destination_schema)
        dest.prepare(self.config)
        return dest

    def source_rows(self, table: SelectedTable) -> list[tuple[Any, ...]]:
        return rows_as_text(
            self.server,
            self.source_db,
            sql.Identifier(table.relation.schema, table.relation.name),
            table.column_names,
            table.primary_key or table.column_names,
        )

    @contextmanager
    def session(self) -> Iterator[SourceSession]:
        with SourceSession(self.config.source) as session:
            yield session


@contextmanager
def active_copies(server: LocalPostgres, database: str) -> Iterator[list[int]]:
    """Samples, every 5 ms while the block runs, how many of our COPYs are active on ``database``."""
    seen: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        conn = psycopg2.connect(**server.dsn(database))
        conn.autocommit = True
        with conn.cursor() as cur:
            while not stop.is_set():
                cur.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'rds_pipeline' "
                    "AND query LIKE 'COPY%%' AND state = 'active' AND datname = current_database()"
                )
                seen.append(cur.fetchone()[0])
                time.sleep(0.005)
        conn.close()

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        yield seen
    finally:
        stop.set()
        sampler.join()


def rows_as_text(
    server: LocalPostgres, database: str, relation: sql.Composable, columns: tuple[str, ...], order: tuple[str, ...]
) -> list[tuple[Any, ...]]:
    conn = psycopg2.connect(**server.dsn(database))
    try:
        apply_session_settings(conn)
        with conn.cursor() as cur:
            cur.execute(
                sql.SQL("SELECT {} FROM {} ORDER BY {}").format(
                    sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in columns),
                    relation,
                    sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(c)) for c in order),
                )
            )
            return cur.fetchall()
    finally:
        conn.close()


def make_scratch(server: LocalPostgres, integration: str = "Test Replica", **top: Any) -> Scratch:
    n = next(_counter)
    source_db, dest_db = f"src_{n}", f"dst_{n}"
    server.psql(f"CREATE DATABASE {source_db}")
    server.psql(f"CREATE DATABASE {dest_db}")
    creds = {"host": server.host, "port": server.port, "user": server.superuser, "password": server.password}
    config = parse_config(
        {
            "integration_name": integration,
            "source": {**creds, "database": source_db},
            "destination": {"type": "postgres", **creds, "database": dest_db},
            **top,
        }
    )
    return Scratch(server, source_db, dest_db, config)
