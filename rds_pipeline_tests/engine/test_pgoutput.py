"""The pgoutput decoder against golden bytes captured from real servers (PG18 protocol 4 with parallel
streaming, PG18 protocol 1 with binary values, PG15 protocol 3 with streaming), and against a live capture."""

from __future__ import annotations

import datetime as dt
import gzip
import itertools
import json
import struct
from collections.abc import Iterator
from typing import Any

import pytest

from rds_pipeline.engine.core.messages import (
    UNCHANGED,
    Begin,
    BeginPrepare,
    Commit,
    CommitPrepared,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    Prepare,
    Relation,
    RollbackPrepared,
    StreamAbort,
    StreamCommit,
    StreamStart,
    StreamStop,
    Truncate,
    TypeInfo,
    Update,
    lsn_text,
    timestamp,
)
from rds_pipeline.engine.errors import DecodeError
from rds_pipeline.engine.replication.cdc.pgoutput import PgOutputDecoder
from rds_pipeline.local_postgres import LocalPostgres
from rds_pipeline_tests.engine.pgoutput_capture import BIG, FIXTURES, STREAMED_ROWS, capture, server_version

GOLDEN = sorted(p.name for p in FIXTURES.glob("*.json.gz"))
TEXT_ROW = ("1", "one", "happy", "x" * BIG, "NaN", "2024-01-02 03:04:05.678+00")


def load(name: str) -> dict[str, Any]:
    return json.loads(gzip.decompress((FIXTURES / name).read_bytes()))


def decoded(fixture: dict[str, Any]) -> list[tuple[dict[str, Any], Any]]:
    decoder = PgOutputDecoder(fixture["protocol_version"])
    return [(row, decoder.decode(bytes.fromhex(row["hex"]))) for row in fixture["messages"]]


def transactions(messages: list[Any]) -> Iterator[list[Any]]:
    """Plain transactions (Begin … Commit) in order, each as its list of messages."""
    current: list[Any] | None = None
    for message in messages:
        if isinstance(message, Begin):
            current = [message]
        elif current is not None:
            current.append(message)
            if isinstance(message, Commit):
                yield current
                current = None


def test_the_golden_files_cover_each_server_and_protocol() -> None:
    assert GOLDEN == ["pg15_v3_on.json.gz", "pg18_v1_off_binary.json.gz", "pg18_v4_parallel.json.gz"]


@pytest.mark.parametrize("name", GOLDEN)
def test_every_message_type_decodes_exactly(name: str) -> None:
    fixture = load(name)
    pairs = decoded(fixture)
    messages = [m for _, m in pairs]
    kinds = {type(m) for m in messages}
    expected = {
        Begin,
        Commit,
        Origin,
        Relation,
        TypeInfo,
        Insert,
        Update,
        Delete,
        Truncate,
        LogicalMessage,
        BeginPrepare,
        Prepare,
        CommitPrepared,
        RollbackPrepared,
    }
    if fixture["streaming"] != "off":
        expected |= {StreamStart, StreamStop, StreamCommit, StreamAbort}
    assert kinds == expected
    binary = fixture["binary"]

    # Begin's xid is the capture's xid (an Int32, not pypgoutput's Int64), and its final LSN is the commit's
    for row, message in pairs:
        if isinstance(message, Begin):
            assert message.xid == row["xid"]
    for txn in transactions(messages):
        assert txn[0].final_lsn == txn[-1].commit_lsn and txn[-1].end_lsn > txn[-1].commit_lsn

    relations = {m.oid: m for m in messages if isinstance(m, Relation)}
    by_name = {r.name: r for r in relations.values()}
    items, full = by_name["items"], by_name["full_rows"]
    assert items.namespace == "public" and items.replica_identity == "d" and full.replica_identity == "f"
    assert [(c.name, c.type_oid, c.is_key) for c in items.columns][:2] == [("id", 23, True), ("name", 25, False)]
    assert all(c.is_key for c in full.columns)  # REPLICA IDENTITY FULL: every column is part of the key
    [mood] = {(t.namespace, t.name) for t in messages if isinstance(t, TypeInfo)}
    assert mood == ("public", "mood")

    txns = list(transactions(messages))
    inserted = next(m for m in txns[0] if isinstance(m, Insert))
    if binary:  # binary values: int4 and numeric NaN in their send format
        assert inserted.new[0] == struct.pack("!i", 1) and inserted.new[3] == b"x" * BIG
        assert inserted.new[4] == bytes.fromhex("00000000c0000000")  # numeric NaN: sign 0xC000
    else:
        assert inserted.new == TEXT_ROW
    # an update that leaves the TOASTed column: 'u', never NULL, and no old tuple
    [same_key] = [m for m in txns[1] if isinstance(m, Update)]
    assert same_key.new[3] is UNCHANGED and same_key.old is None and same_key.new[1] in ("uno", b"uno")
    # a primary-key change: the old key ('K': the key columns, the others NULL)
    [key_change] = [m for m in txns[2] if isinstance(m, Update)]
    assert key_change.old_kind == "K" and key_change.old[1:] == (None,) * 5
    # REPLICA IDENTITY FULL: the whole old row ('O')
    [full_update] = [m for m in txns[3] if isinstance(m, Update)]
    assert full_update.old_kind == "O" and full_update.relation_oid == full.oid
    [key_delete] = [m for m in txns[4] if isinstance(m, Delete)]
    [full_delete] = [m for m in txns[5] if isinstance(m, Delete)]
    assert (key_delete.old_kind, full_delete.old_kind) == ("K", "O")
    assert full_delete.old[1] in ("b", b"b")
    [nulls] = [m for m in txns[6] if isinstance(m, Insert)]
    assert nulls.new[1:] == (None,) * 5
    # logical messages: one inside its transaction, one outside any
    [tx_message] = [m for m in txns[7] if isinstance(m, LogicalMessage)]
    [loose] = [m for m in messages if isinstance(m, LogicalMessage) and not m.transactional]
    assert (tx_message.transactional, tx_message.prefix, tx_message.content) == (True, "rds", b"tx hello")
    assert loose.content == b"not tx"
    # TRUNCATE items, child RESTART IDENTITY CASCADE, in its place in the transaction
    [truncate] = [m for m in txns[8] if isinstance(m, Truncate)]
    assert truncate.cascade and truncate.restart_identity
    assert {relations[o].name for o in truncate.relation_oids} == {"items", "child"}
    assert isinstance(txns[8][-2], Truncate)
    # a transaction from a replication origin
    [origin] = [m for m in txns[9] if isinstance(m, Origin)]
    assert origin.name == "upstream" and lsn_text(origin.commit_lsn) == "0/ABCDEF"
    assert timestamp(txns[9][0].commit_time) == dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.UTC)
    # two-phase: prepared then committed, prepared then rolled back
    gids = [(type(m).__name__, m.gid) for m in messages if hasattr(m, "gid")]
    assert gids == [
        ("BeginPrepare", "g1"),
        ("Prepare", "g1"),
        ("CommitPrepared", "g1"),
        ("BeginPrepare", "g2"),
        ("Prepare", "g2"),
        ("RollbackPrepared", "g2"),
    ]


@pytest.mark.parametrize("name", [n for n in GOLDEN if "_off" not in n])
def test_streamed_transactions_carry_their_xid(name: str) -> None:
    fixture = load(name)
    messages = [m for _, m in decoded(fixture)]
    starts = [m for m in messages if isinstance(m, StreamStart)]
    commits = [m for m in messages if isinstance(m, StreamCommit)]
    [abort] = [m for m in messages if isinstance(m, StreamAbort)]
    assert len(commits) == 2 and starts[0].first_segment and not starts[1].first_segment
    first, second = commits[0].xid, commits[1].xid
    inserts = [m for m in messages if isinstance(m, Insert) and m.xid is not None]
    # inside a stream every change names its (sub)transaction: the apply must drop an aborted subxid's changes
    assert {m.xid for m in inserts} == {first, second, abort.subxid}
    assert sum(m.xid == first for m in inserts) == STREAMED_ROWS
    assert sum(m.xid == second for m in inserts) == STREAMED_ROWS  # the kept rows
    # the rolled-back ones streamed before the ROLLBACK TO (the rest never left the server)
    assert 0 < sum(m.xid == abort.subxid for m in inserts) <= STREAMED_ROWS
    assert abort.xid == second and abort.subxid != second  # only the subtransaction was rolled back
    if fixture["protocol_version"] >= 4:  # parallel streaming adds the abort's LSN and time
        assert abort.abort_lsn is not None and abort.abort_time is not None
    else:
        assert abort.abort_lsn is None
    # outside a stream, changes carry no xid
    assert all(m.xid is None for m in messages if isinstance(m, Insert) and m not in inserts)


def test_bad_bytes_fail_clearly() -> None:
    decoder = PgOutputDecoder(2)
    with pytest.raises(DecodeError, match="unknown pgoutput message type 'Z'"):
        decoder.decode(b"Z\x00")
    with pytest.raises(DecodeError, match="empty"):
        decoder.decode(b"")
    begin = b"B" + struct.pack("!QqI", 1, 2, 3)
    assert decoder.decode(begin) == Begin(1, 2, 3)
    with pytest.raises(DecodeError, match="left over"):
        decoder.decode(begin + b"\x00\x00\x00\x00")  # a Begin with an Int64 xid, as pypgoutput reads it
    with pytest.raises(DecodeError, match="runs past the end"):
        decoder.decode(b"I" + struct.pack("!I", 7) + b"N" + struct.pack("!h", 1) + b"b" + struct.pack("!i", 99))
    with pytest.raises(DecodeError, match="not 1, 2, 3 or 4"):
        PgOutputDecoder(5)


def test_a_live_capture_has_the_golden_shape(logical_servers: list[LocalPostgres]) -> None:
    """Today's servers still send what the golden files hold: the same messages in the same order. A run of one
    kind counts once: where a streamed transaction is cut into chunks, and how many of an aborted
    subtransaction's changes were streamed before its abort, follow the server's memory accounting, which
    minor releases change (PostgreSQL 15.20 cuts at 272 inserts where 15.18 cut at 282)."""
    for server in logical_servers:
        version = server_version(server)
        protocol, streaming = (4, "parallel") if version >= 16 else (3, "on")
        server.psql("CREATE DATABASE live_capture")
        live = capture(server, "live_capture", protocol, streaming)
        golden = load(f"pg{version}_v{protocol}_{streaming}.json.gz")
        shapes = [
            [kind for kind, _ in itertools.groupby(type(m).__name__ for _, m in decoded(f))]
            for f in (golden, {**golden, "messages": live})
        ]
        assert shapes[0] == shapes[1], f"PostgreSQL {version}"
