"""The log-based fast path: whole rows kept as COPY BINARY rows, never decoded (``core/copy_rows.py``,
``ChangeBatch.add_copy``). It must reduce a batch exactly as the decoded path does, hand over to it for every
case it does not take (UNCHANGED TOAST values, a key change, REPLICA IDENTITY FULL, a changed shape, a table
copied in chunks or skipped), and land the same rows on real servers (PostgreSQL 15 and 18)."""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import pytest

from rds_pipeline.engine.core.changes import ChangeBatch, ChunkFilter, CopyRow, Layout
from rds_pipeline.engine.core.copy_rows import copy_row, row_fields, row_values
from rds_pipeline.engine.core.messages import UNCHANGED, Insert, Relation, RelationColumn, Truncate, Update, Value
from rds_pipeline.engine.replication.cdc.flow import sync_log_based
from rds_pipeline.engine.replication.cdc.pgoutput import PgOutputDecoder
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.engine.sync_helpers import make_scratch, rows_as_text
from rds_pipeline_tests.engine.test_cdc_batch import T  # public.t (id key, v, big), OID 1

FIXTURES = Path(__file__).parent / "pgoutput_fixtures"
# a composite key, second column first: (b, a)
C = Relation(None, 2, "public", "c", "d", tuple(RelationColumn(n, 25, -1, n != "v") for n in ("a", "b", "v")))
T_WIDER = Relation(None, 1, "public", "t", "d", (*T.columns, RelationColumn("extra", 25, -1, False)))
LAYOUTS = {("public", "t"): Layout(("id", "v", "big"), ("id",)), ("public", "c"): Layout(("a", "b", "v"), ("b", "a"))}


def tuple_data(values: tuple[Value, ...]) -> bytes:
    """pgoutput's TupleData, as the server writes it (text values)."""
    out = struct.pack("!h", len(values))
    for value in values:
        if value is None:
            out += b"n"
        elif value is UNCHANGED:
            out += b"u"
        else:
            data = value.encode()  # type: ignore[union-attr]
            out += b"t" + struct.pack("!i", len(data)) + data
    return out


def insert(oid: int, *values: Value) -> bytes:
    return b"I" + struct.pack("!I", oid) + b"N" + tuple_data(values)


def update(oid: int, *values: Value, old: tuple[Value, ...] | None = None, kind: bytes = b"K") -> bytes:
    before = kind + tuple_data(old) if old is not None else b""
    return b"U" + struct.pack("!I", oid) + before + b"N" + tuple_data(values)


def delete(oid: int, *key: Value) -> bytes:
    return b"D" + struct.pack("!I", oid) + b"K" + tuple_data(key)


def relation(r: Relation) -> bytes:
    out = b"R" + struct.pack("!I", r.oid) + r.namespace.encode() + b"\0" + r.name.encode() + b"\0" + b"d"
    out += struct.pack("!h", len(r.columns))
    for c in r.columns:
        out += bytes([int(c.is_key)]) + c.name.encode() + b"\0" + struct.pack("!Ii", c.type_oid, c.type_modifier)
    return out


def truncate(*oids: int) -> bytes:
    return b"T" + struct.pack("!I", len(oids)) + b"\0" + b"".join(struct.pack("!I", o) for o in oids)


@pytest.mark.parametrize(
    "values",
    [
        ("1", "plain", "x"),
        ("2", None, ""),
        ("3", "tab\there\nnew line \\ back \"quote\" 'single'", "é中 😀"),
        ("4", "\\N", "{1,NULL}"),
    ],
)
def test_a_copy_row_holds_the_values_the_decoder_reads(values: tuple[Value, ...]) -> None:
    data = insert(1, *values)
    row = copy_row(data, 6)
    assert row is not None
    decoded = PgOutputDecoder(1).decode(data)
    assert isinstance(decoded, Insert) and row_values(row) == decoded.new == values
    assert row_fields(row, (0,)) == (values[0],) and row_fields(row, (2, 0)) == (values[2], values[0])
    assert copy_row(update(1, "1", UNCHANGED, "x"), 6) is None  # an UNCHANGED value: the decoded path's


def test_copy_rows_equal_the_decoder_on_captured_streams() -> None:
    """Every whole row of text values in the captured PostgreSQL 15 and 18 streams."""
    checked = 0
    for name in ("pg15_v3_on.json.gz", "pg18_v4_parallel.json.gz"):
        fixture = json.loads(gzip.decompress((FIXTURES / name).read_bytes()))
        decoder = PgOutputDecoder(fixture["protocol_version"])
        for message in fixture["messages"]:
            data = bytes.fromhex(message["hex"])
            in_stream = decoder.in_stream
            decoded = decoder.decode(data)
            if isinstance(decoded, (Insert, Update)) and not in_stream and data[5] == ord("N"):
                row = copy_row(data, 6)
                if row is not None:
                    assert row_values(row) == decoded.new
                    checked += 1
                else:
                    assert any(v is UNCHANGED or isinstance(v, bytes) for v in decoded.new)
    assert checked > 10


# one timeline through both paths: inserts and updates of whole rows (taken), an UPDATE with an UNCHANGED value
# after a taken insert (decoded, merged with it), a key change of a taken row, delete and re-insert, a NULL, a
# composite key out of column order, a TRUNCATE, a Relation that adds a column the layout does not select, and
# REPLICA IDENTITY FULL
TIMELINE = [
    relation(T),
    relation(C),
    insert(1, "1", "a", "big1"),
    update(1, "1", "b", UNCHANGED),
    insert(1, "2", "c", "big2"),
    update(1, "20", "x", UNCHANGED, old=("2", None, None)),
    insert(1, "3", "d", "big3"),
    delete(1, "3", None, None),
    insert(1, "3", "e", "big3 again"),
    update(1, "4", None, "big4"),
    insert(2, "x", "1", "v1"),
    update(2, "x", "1", "v2"),
    insert(2, "y", "2", None),
    delete(2, "y", "2", None),
    truncate(1),
    insert(1, "5", "after the truncate", "big5"),
    update(1, "5", "again", "big5"),
    relation(T_WIDER),
    insert(1, "6", "wider", "big6", "not selected"),
    update(1, "6", "full", "big6", "e", old=("6", "wider", "big6", "not selected"), kind=b"O"),
]


def reduce(
    copy_tables: frozenset[tuple[str, str]], ranged: dict[tuple[str, str], ChunkFilter] | None = None
) -> ChangeBatch:
    batch = ChangeBatch(layouts=LAYOUTS, copy_tables=copy_tables, ranged=ranged or {})
    decoder = PgOutputDecoder(1)
    batch.commit_time = 42
    for data in TIMELINE:
        if not batch.add_copy(data):
            batch.add(decoder.decode(data))
    return batch


def outcome(batch: ChangeBatch) -> list[tuple[str, object]]:
    tables = {name: ".".join(name) for name in LAYOUTS}
    return [
        (table, None if changes is None else [(c.op, c.values, c.moved_from, c.at) for c in changes])  # type: ignore[union-attr]
        for table, changes in batch.in_order(tables)
    ]


def test_the_fast_path_reduces_a_batch_exactly_as_the_decoded_path() -> None:
    decoded, fast = reduce(frozenset()), reduce(frozenset(LAYOUTS))
    assert decoded.copied == 0
    # taken: inserts of 1, 2, 3 (twice) and 5, whole-row updates of 4 and 5; in c two inserts and an update
    assert fast.copied == 10
    assert outcome(fast) == outcome(decoded)
    assert fast.counts == decoded.counts and fast.per_table == decoded.per_table and fast.messages == decoded.messages
    first = outcome(fast)[0]
    assert first[0] == "public.t"
    assert (("upsert", ("1", "b", "big1"), None, None)) in first[1]  # UNCHANGED took the copied row's value
    assert (("upsert", ("20", "x", "big2"), None, None)) in first[1]  # a key change carried it too
    assert ("delete", ("2",), None, 42) in first[1]
    kept = [c for segment in fast.segments for rows in segment.changes.values() for c in rows.values()]
    assert any(isinstance(c, CopyRow) for c in kept)  # undecoded until a destination asks for values


def test_what_the_fast_path_leaves_to_the_decoded_one() -> None:
    # a table copied chunk by chunk: its key filter needs the decoded path
    ranged = reduce(frozenset(LAYOUTS), {("public", "t"): ChunkFilter((None,), (0,))})
    assert ranged.copied == 3  # only table c's inserts and update
    assert outcome(ranged) == outcome(reduce(frozenset(), {("public", "t"): ChunkFilter((None,), (0,))}))
    batch = ChangeBatch(layouts=LAYOUTS, copy_tables=frozenset(LAYOUTS))
    batch.add(T)
    batch.skip = frozenset({("public", "t")})  # a table snapshotted after this transaction
    assert not batch.add_copy(insert(1, "1", "a", "b")) and batch.messages == 0
    batch.skip = frozenset()
    assert not batch.add_copy(insert(9, "1"))  # no Relation message for it
    assert not batch.add_copy(delete(1, "1", None, None))  # deletes are decoded
    assert not batch.add_copy(update(1, "1", "a", "b", old=("2", None, None)))  # a key change
    assert batch.add_copy(insert(1, "1", "a", "b")) and batch.copied == 1
    batch.add(Truncate(None, (1,), False, False))
    assert batch.add_copy(insert(1, "2", "a", "b"))
    assert [list(s.changes.get(1, {})) for s in batch.segments] == [[("1",)], [("2",)]]  # after the TRUNCATE
    unselected = ChangeBatch(layouts=LAYOUTS, copy_tables=frozenset({("public", "c")}))
    unselected.add(T)
    assert not unselected.add_copy(insert(1, "1", "a", "b"))  # a table the destination wants decoded


@pytest.mark.parametrize("index", [0, 1], ids=["pg18", "pg15"])
def test_copy_rows_and_their_fallbacks_on_real_servers(logical_servers: list[LocalPostgres], index: int) -> None:
    """Whole rows go as COPY rows (an enum array, a domain array, a composite, text that needs escaping, a
    timestamptz under another time zone), then an UPDATE leaving a TOASTed value unchanged, a key change and a
    delete fall back, in the same batch as a whole row of the same key; the replica equals the source."""
    server = logical_servers[index]
    scratch = make_scratch(server, f"Copy Rows {index}")
    scratch.sql(
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy'); CREATE DOMAIN posint AS integer CHECK (VALUE > 0); "
        "CREATE TYPE pair AS (a int, b text); CREATE TABLE shapes (id bigint PRIMARY KEY, moods mood[], "
        "counts posint[], p pair, note text, at timestamptz, n numeric(12,4), big text); "
        "ALTER TABLE shapes ALTER big SET STORAGE EXTERNAL; "  # out of line, uncompressed: UNCHANGED when not updated
        f"ALTER DATABASE {scratch.source_db} SET timezone = 'Asia/Kolkata'"
    )
    table = scratch.one({"name": "public.shapes", "method": "log_based"})
    dest = scratch.destination()
    sync_log_based(scratch.config, dest, [table])  # the snapshot: an empty table
    scratch.sql(
        "INSERT INTO shapes SELECT g, '{sad,happy}', '{1,2}', ROW(g::int, 'x \"y\"')::pair, E'tab\\there\\\\ \\u00e9', "
        "'2024-02-29 23:59:59.999999+05:30', g / 3.0, repeat(md5(g::text), 500) FROM generate_series(1, 3) g; "
        "INSERT INTO shapes (id) VALUES (4)"
    )
    first = sync_log_based(scratch.config, dest, [table])
    assert first.stream is not None and first.stream.undecoded == 4 and not first.failures

    def same() -> None:
        copied = rows_as_text(server, scratch.dest_db, dest.target(table), table.column_names, ("id",))
        assert copied == scratch.source_rows(table)

    same()
    scratch.sql(
        "INSERT INTO shapes SELECT 5, NULL, NULL, NULL, 'five', now(), 5, repeat(md5('5'), 500); "
        "UPDATE shapes SET note = 'touched' WHERE id IN (1, 5); "  # big unchanged: TOASTed, not sent
        "UPDATE shapes SET id = 102 WHERE id = 2; DELETE FROM shapes WHERE id = 3; "
        "UPDATE shapes SET moods = '{ok}', counts = '{3}', big = 'small now' WHERE id = 4"
    )
    second = sync_log_based(scratch.config, dest, [table])
    assert second.stream is not None and not second.failures
    assert second.changes(table.id) == {"insert": 1, "update": 4, "delete": 1}
    assert second.stream.undecoded == 2  # the insert of 5 and the whole-row update of 4
    same()
    dest.close()
    scratch.sql(f"SELECT pg_drop_replication_slot('{scratch.config.slot_name}')")
