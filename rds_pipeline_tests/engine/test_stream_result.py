"""A run that backfills a log-based range catches the stream up twice (before and after the range's copy): its
result holds both catch-ups, every count included (before, the second one's evolved columns, skipped
transactions and partial flushes were dropped)."""

from __future__ import annotations

from rds_pipeline.engine.replication.cdc.stream import StreamResult


def test_a_later_catch_up_keeps_every_count() -> None:
    first = StreamResult("0/10", "0/20", "0/20", transactions=3, skipped=1, batches=1, partial_flushes=0)
    first.evolved = {"db.public.t": ["added a"]}
    first.counts.update(insert=5, update=1)
    first.per_table = {"db.public.t": {"insert": 5, "update": 1}}
    second = StreamResult("0/20", "0/30", "0/31", transactions=2, skipped=2, batches=2, partial_flushes=1)
    second.evolved = {"db.public.t": ["dropped b"], "db.public.u": ["retyped c"]}
    second.counts.update(delete=4, truncate=1)
    second.per_table = {"db.public.t": {"delete": 4}, "db.public.u": {"truncate": 1}}

    first.extend(second)

    assert (first.start_lsn, first.end_lsn, first.target_lsn) == ("0/10", "0/30", "0/31")
    assert (first.transactions, first.skipped, first.batches, first.partial_flushes) == (5, 3, 3, 1)
    assert first.evolved == {"db.public.t": ["added a", "dropped b"], "db.public.u": ["retyped c"]}
    assert first.counts == {"insert": 5, "update": 1, "delete": 4, "truncate": 1}
    assert first.per_table == {"db.public.t": {"insert": 5, "update": 1, "delete": 4}, "db.public.u": {"truncate": 1}}
    empty = StreamResult("0/30", None, "0/30")
    first.extend(empty)  # a catch-up that found nothing keeps the end where it was
    assert first.end_lsn == "0/30" and first.transactions == 5
