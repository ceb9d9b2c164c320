"""Binary COPY where it is exact: the type zoo's binary-stable columns move as COPY (FORMAT binary) between
PostgreSQL 15 and 18, both ways, and read back equal as text; the whole zoo (enums, composites, ranges, …) falls
back to text, saying which column and why, and is exact too."""

from __future__ import annotations

import dataclasses

import pytest

from rds_pipeline.engine.core.types import binary_refusal
from rds_pipeline.engine.destinations.postgres import PostgresDestination
from rds_pipeline.engine.replication.sync import sync_table
from rds_pipeline_tests.engine.sync_helpers import make_scratch, rows_as_text
from rds_pipeline_tests.engine.test_sync_postgres import ZOO_DDL

BINARY_COLUMNS = [
    "id",
    "i2",
    "i4",
    "i8",
    "num",
    "num_p",
    "r",
    "d",
    "m",
    "b",
    "t",
    "vc",
    "ch",
    "by",
    "u",
    "j",
    "jb",
    "dt",
    "ts",
    "tstz",
    "tm",
    "tmtz",
    "iv",
    "ip",
    "net",
    "mac",
    "bits",
    "vbits",
    "arr_i",
    "arr_t",
    "arr_2d",
    "arr_jb",
    "dom",
    "pt",
]


@pytest.mark.parametrize("direction", ["pg15_to_pg18", "pg18_to_pg15"])
def test_binary_copy_is_exact_across_versions(direction: str, request: pytest.FixtureRequest) -> None:
    pg18, pg15 = request.getfixturevalue("pg18"), request.getfixturevalue("pg15_ssl").server
    source, target = (pg15, pg18) if direction == "pg15_to_pg18" else (pg18, pg15)
    scratch = make_scratch(source, f"Binary {direction}")
    # the wheel's PostgreSQL 18 has no libxml: XML values stay NULL so either server can hold them
    ddl = ZOO_DDL.replace("""'<a x="1">t&amp;</a>'""", "NULL").replace("'<empty/>'", "NULL")
    scratch.sql(ddl)
    target.psql(f"CREATE DATABASE bin_{scratch.dest_db}")
    destination = dataclasses.replace(
        scratch.config.destination,
        host=target.host,
        port=target.port,
        user=target.superuser,
        database=f"bin_{scratch.dest_db}",
    )
    config = dataclasses.replace(scratch.config, destination=destination)
    dest = PostgresDestination(config.destination, config.destination_schema)
    dest.prepare(config)
    exact = scratch.one({"name": "public.zoo", "columns": BINARY_COLUMNS})
    whole = dataclasses.replace(scratch.one({"name": "public.zoo"}), destination_table="zoo_text")
    assert binary_refusal(exact.columns) is None
    with scratch.session() as session:
        binary = sync_table(session, dest, exact)
        text = sync_table(session, dest, whole)
    assert binary.extraction.parameters["format"] == "binary" and "FORMAT binary" in binary.extraction.query
    assert (
        text.extraction.parameters["format"]
        == "text (column x is of type xml, whose binary form may differ between servers)"
    )
    by_name = {c.name: c for c in whole.columns}
    assert binary_refusal((by_name["e"],)) == "column e is of type mood (enum): it moves as text"
    assert binary_refusal((by_name["comp"],)) == "column comp is of type pair (composite): it moves as text"
    assert binary_refusal((by_name["e_arr"],)) == "column e_arr (mood[]) becomes text[] in the destination"
    assert binary_refusal((by_name["ir"],)) == "column ir is of type int4range (range): it moves as text"
    for table in (exact, whole):
        copied = rows_as_text(target, f"bin_{scratch.dest_db}", dest.target(table), table.column_names, ("id",))
        assert copied == scratch.source_rows(table), table.destination_table
    assert binary.report.rows_inserted == 5
    dest.close()
