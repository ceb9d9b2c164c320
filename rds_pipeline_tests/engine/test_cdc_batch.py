"""The change batch: last operation per key wins, TOAST values never become NULL, key changes carry their
values, TRUNCATE keeps its place, rolled-back subtransactions are dropped. Then a golden stream, reduced."""

from __future__ import annotations

import pytest

from rds_pipeline.engine.core.changes import DELETE, UPSERT, ChangeBatch
from rds_pipeline.engine.core.messages import (
    UNCHANGED,
    Begin,
    Commit,
    Delete,
    Insert,
    Relation,
    RelationColumn,
    Truncate,
    Update,
)
from rds_pipeline.engine.errors import BatchError
from rds_pipeline.engine.replication.cdc.pgoutput import PgOutputDecoder
from rds_pipeline_tests.engine.test_pgoutput import load

T = Relation(
    None,
    1,
    "public",
    "t",
    "d",
    (RelationColumn("id", 23, -1, True), RelationColumn("v", 25, -1, False), RelationColumn("big", 25, -1, False)),
)
KEYLESS = Relation(None, 2, "public", "nokey", "n", (RelationColumn("v", 25, -1, False),))


def batch_of(*messages: object) -> ChangeBatch:
    batch = ChangeBatch()
    batch.add(T)
    for message in messages:
        batch.add(message)
    return batch


def final(batch: ChangeBatch, segment: int = 0) -> dict[tuple[object, ...], tuple[str, tuple[object, ...], object]]:
    return {k: (c.op, c.values, c.moved_from) for k, c in batch.segments[segment].changes.get(1, {}).items()}


def test_an_insert_and_a_partial_update_in_one_batch_keep_the_toasted_value() -> None:
    batch = batch_of(Insert(None, 1, ("1", "a", "B" * 9000)), Update(None, 1, None, None, ("1", "b", UNCHANGED)))
    assert final(batch) == {("1",): (UPSERT, ("1", "b", "B" * 9000), None)}
    assert batch.segments[0].changes[1][("1",)].complete


def test_an_update_alone_leaves_the_value_to_the_destination() -> None:
    batch = batch_of(Update(None, 1, None, None, ("1", "b", UNCHANGED)))
    [(op, values, moved)] = final(batch).values()
    assert op == UPSERT and values[2] is UNCHANGED and moved is None  # keep the destination's value, not NULL


def test_a_key_change_carries_its_unchanged_values_from_the_old_key() -> None:
    batch = batch_of(Update(None, 1, "K", ("1", None, None), ("2", "b", UNCHANGED)))
    assert final(batch) == {("1",): (DELETE, ("1",), None), ("2",): (UPSERT, ("2", "b", UNCHANGED), ("1",))}
    chained = batch_of(
        Update(None, 1, "K", ("1", None, None), ("2", "b", UNCHANGED)),
        Update(None, 1, "K", ("2", None, None), ("3", "c", UNCHANGED)),
    )
    assert final(chained)[("3",)] == (UPSERT, ("3", "c", UNCHANGED), ("1",))  # still under the first key
    assert final(chained)[("2",)][0] == DELETE and final(chained)[("1",)][0] == DELETE
    inserted = batch_of(
        Insert(None, 1, ("1", "a", "BIG")), Update(None, 1, "K", ("1", None, None), ("2", "b", UNCHANGED))
    )
    assert final(inserted)[("2",)] == (UPSERT, ("2", "b", "BIG"), None)  # the batch had the value itself


def test_the_last_operation_per_key_wins() -> None:
    assert final(batch_of(Delete(None, 1, "K", ("1", None, None)), Insert(None, 1, ("1", "again", "x")))) == {
        ("1",): (UPSERT, ("1", "again", "x"), None)
    }
    assert final(batch_of(Insert(None, 1, ("1", "a", "x")), Delete(None, 1, "K", ("1", None, None)))) == {
        ("1",): (DELETE, ("1",), None)
    }


def test_truncate_keeps_its_place_in_the_order() -> None:
    batch = batch_of(
        Insert(None, 1, ("1", "a", "x")), Truncate(None, (1,), True, True), Insert(None, 1, ("2", "b", "y"))
    )
    assert len(batch.segments) == 2 and batch.segments[0].truncate is not None
    assert list(final(batch, 0)) == [("1",)] and list(final(batch, 1)) == [("2",)]  # 1 is wiped, 2 survives
    assert batch.counts == {"insert": 2, "update": 0, "delete": 0, "truncate": 1}


def test_a_rolled_back_subtransaction_is_dropped() -> None:
    batch = ChangeBatch()
    batch.add_transaction(
        [T, Insert(7, 1, ("1", "kept", "x")), Insert(8, 1, ("2", "undone", "y"))], end_lsn=100, aborted_xids={8}
    )
    assert list(final(batch)) == [("1",)] and batch.end_lsn == 100


def test_changes_that_cannot_be_placed_are_refused() -> None:
    batch = ChangeBatch()
    with pytest.raises(BatchError, match="before its Relation"):
        batch.add(Insert(None, 9, ("1",)))
    batch.add(KEYLESS)
    with pytest.raises(BatchError, match="no replica identity key"):
        batch.add(Insert(None, 2, ("x",)))


def test_a_golden_stream_reduces_to_the_source_state() -> None:
    """PG18's captured stream, plain transactions only, applied to a dict: the rows the source ends with."""
    fixture = load("pg18_v4_parallel.json.gz")
    decoder = PgOutputDecoder(fixture["protocol_version"])
    messages = [decoder.decode(bytes.fromhex(m["hex"])) for m in fixture["messages"]]
    batch, current = ChangeBatch(), []
    for message in messages:
        current.append(message)
        if isinstance(message, Begin):
            current = [message]
        elif isinstance(message, Commit):
            batch.add_transaction(current, message.end_lsn)
    items = next(oid for oid, r in batch.relations.items() if r.name == "items")
    table: dict[object, tuple[object, ...]] = {}
    for segment in batch.segments:
        for key, change in segment.changes.get(items, {}).items():
            if change.op == DELETE:
                table.pop(key[0], None)
            else:
                table[key[0]] = change.values
        if segment.truncate is not None and items in segment.truncate.relation_oids:
            table.clear()
    assert list(table) == ["4"] and table["4"][1] == "from upstream"  # after the TRUNCATE, only the origin row
    assert batch.end_lsn == next(m for m in reversed(messages) if isinstance(m, Commit)).end_lsn


@pytest.mark.parametrize("layouts", [False, True], ids=["whole rows", "selected layout"])
def test_a_table_copied_chunk_by_chunk_takes_only_the_changes_its_copies_lack(layouts: bool) -> None:
    """Chunks [..100) at LSN 50 and [100..200) at LSN 80 are copied; keys from 200 are not yet. A transaction
    committed at 60 touches the first chunk only; one at 90 both; none touches keys past the last chunk. A key
    moved out of a copied chunk deletes it there; one moved in from beyond is upserted whole."""
    from rds_pipeline.engine.core.changes import ChunkFilter, Layout

    batch = ChangeBatch(layouts={("public", "t"): Layout(("id", "v", "big"), ("id",))} if layouts else None)
    batch.ranged = {("public", "t"): ChunkFilter((100, 200), (50, 80))}
    batch.add(T)

    def at(lsn: int, *messages: object) -> None:
        batch.commit_lsn = lsn
        for message in messages:
            batch.add(message)

    at(40, Insert(None, 1, ("1", "too old", "b")))  # before both copies: in them already
    at(60, Insert(None, 1, ("2", "after the first", "b")), Insert(None, 1, ("150", "before the second", "b")))
    at(90, Update(None, 1, None, None, ("151", "after both", "b")), Delete(None, 1, "K", ("152", None, None)))
    at(95, Insert(None, 1, ("250", "not copied yet", "b")))
    at(96, Update(None, 1, "K", ("3", None, None), ("300", "moved out", "b")))  # leaves chunk 1 for beyond
    at(97, Update(None, 1, "K", ("400", None, None), ("4", "moved in", "b")))  # arrives in chunk 1 from beyond
    changes = {key: (c.op, c.values[1] if c.op == UPSERT else None) for key, c in batch.segments[0].changes[1].items()}
    assert changes == {
        ("2",): (UPSERT, "after the first"),
        ("151",): (UPSERT, "after both"),
        ("152",): (DELETE, None),
        ("3",): (DELETE, None),
        ("4",): (UPSERT, "moved in"),
    }
    assert batch.counts == {"insert": 1, "update": 3, "delete": 1, "truncate": 0}
    open_end = ChunkFilter((100, None), (50, 80))  # the last chunk runs to the end: every key is copied
    assert open_end.allows("10000", 81) and not open_end.allows("10000", 79) and not open_end.allows(None, 99)
