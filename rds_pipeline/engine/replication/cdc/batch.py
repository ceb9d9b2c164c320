"""A batch of committed changes, reduced to what a destination applies: per table and primary key, the last
operation wins. Pure: no I/O.

- An INSERT or UPDATE is an upsert of the new row; a DELETE removes the key.
- An UPDATE that changes the key deletes the old key, then upserts the new one.
- A TOASTed value the UPDATE left alone arrives as ``UNCHANGED``: it takes the value an earlier change in the
  same batch gave it, and otherwise stays ``UNCHANGED`` so the destination keeps its current value (never NULL).
  When the key changed too, the value is under the old key: the upsert names it (``moved_from``), and the
  destination reads it from there before it applies the batch's deletes.
- A TRUNCATE ends a segment: the destination applies the segments in order, so what came before it is wiped
  and what came after it survives.
- Changes of a transaction that did not commit never reach a batch (the reader adds only committed ones), and
  those of a rolled-back subtransaction of a streamed transaction are dropped by ``xid``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from rds_pipeline.engine.replication.cdc.pgoutput import UNCHANGED, Delete, Insert, Relation, Truncate, Update, Value

UPSERT = "upsert"
DELETE = "delete"


class BatchError(ValueError):
    """A change the batch cannot place: a table without a key, or a change before its Relation message."""


@dataclass
class RowChange:
    op: str  # upsert or delete
    values: tuple[Value, ...]  # the new row (upsert), or the old key tuple (delete)
    moved_from: tuple[Value, ...] | None = None  # upsert: the destination key holding its UNCHANGED values

    @property
    def complete(self) -> bool:
        return UNCHANGED not in self.values


@dataclass
class Segment:
    """Changes up to a TRUNCATE (or the end of the batch), per relation OID and key, in first-seen order."""

    changes: dict[int, dict[tuple[Value, ...], RowChange]] = field(default_factory=dict)
    truncate: Truncate | None = None  # applied after ``changes``


@dataclass
class ChangeBatch:
    relations: dict[int, Relation] = field(default_factory=dict)
    segments: list[Segment] = field(default_factory=lambda: [Segment()])
    end_lsn: int | None = None  # the end LSN of the last transaction added: the state to commit with the batch
    messages: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {"insert": 0, "update": 0, "delete": 0, "truncate": 0})

    def add_transaction(self, messages: Iterable[object], end_lsn: int, aborted_xids: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        """Add one committed transaction's messages, in order."""
        for message in messages:
            if getattr(message, "xid", None) in aborted_xids:
                continue
            self.add(message)
        self.end_lsn = end_lsn

    def add(self, message: object) -> None:
        if isinstance(message, Relation):
            self.relations[message.oid] = message
            return
        if not isinstance(message, (Insert, Update, Delete, Truncate)):
            return  # Begin, Commit, Type, Origin, Message: nothing to apply
        self.messages += 1
        segment = self.segments[-1]
        if isinstance(message, Truncate):
            segment.truncate = message
            self.segments.append(Segment())
            self.counts["truncate"] += 1
            return
        relation = self.relations.get(message.relation_oid)
        if relation is None:
            raise BatchError(f"a change for relation {message.relation_oid} came before its Relation message")
        rows = segment.changes.setdefault(relation.oid, {})
        if isinstance(message, Insert):
            self._upsert(rows, relation, message.new)
            self.counts["insert"] += 1
        elif isinstance(message, Update):
            old_key = self._key(relation, message.old) if message.old is not None else None
            if old_key is not None and old_key != self._key(relation, message.new):  # the key itself changed
                carried = rows.pop(old_key, None)
                rows[old_key] = RowChange(DELETE, old_key)
                self._upsert(rows, relation, message.new, carried, moved_from=old_key)
            else:
                self._upsert(rows, relation, message.new)
            self.counts["update"] += 1
        else:
            key = self._key(relation, message.old)
            rows.pop(key, None)  # re-inserted later? it goes after the delete, in order
            rows[key] = RowChange(DELETE, key)
            self.counts["delete"] += 1

    def _key(self, relation: Relation, values: tuple[Value, ...]) -> tuple[Value, ...]:
        positions = [i for i, c in enumerate(relation.columns) if c.is_key]
        if not positions:
            raise BatchError(f"{relation.namespace}.{relation.name} has no replica identity key: give it a primary "
                             "key, or REPLICA IDENTITY FULL")  # fmt: skip
        return tuple(values[i] for i in positions)

    def _upsert(self, rows: dict[tuple[Value, ...], RowChange], relation: Relation, new: tuple[Value, ...],
                carried: RowChange | None = None, moved_from: tuple[Value, ...] | None = None) -> None:  # fmt: skip
        """``carried`` and ``moved_from``: for a key change, the old key's change in this batch and the old key."""
        key = self._key(relation, new)
        earlier = rows.pop(key, None)
        previous = carried if moved_from is not None else earlier
        if previous is not None and previous.op == UPSERT:
            new = tuple(old if value is UNCHANGED else value for value, old in zip(new, previous.values, strict=True))
            # what is still UNCHANGED lives where the earlier change's row came from
            moved_from = previous.moved_from or moved_from
        rows[key] = RowChange(UPSERT, new, moved_from if UNCHANGED in new else None)
