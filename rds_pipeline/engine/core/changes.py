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
- With ``layouts`` (the selected tables' columns and primary key, by source name), rows are projected onto the
  selected columns by name (a column dropped at the source reads NULL; one not selected is left out), keys are
  the selected primary key whatever the replica identity, and changes to unselected tables are not kept.
  Under REPLICA IDENTITY FULL the old row is whole, so an ``UNCHANGED`` new value takes the old one.
- ``skip`` names tables whose changes the current transaction must not touch (a table snapshotted after it).
- ``ranged`` holds, per table whose snapshot is being copied chunk by chunk, which keys the current transaction
  may touch (``ChunkFilter``): those of copied chunks whose snapshot it committed after.
- ``copy_tables`` names tables whose whole-row INSERTs and UPDATEs (text values, key unchanged) ``add_copy``
  keeps undecoded, as COPY BINARY rows (``CopyRow``, see ``copy_rows.py``): only their key is read. A later
  change to the same key that needs the values decodes the row first.
- Changes of a transaction that did not commit never reach a batch (the reader adds only committed ones), and
  those of a rolled-back subtransaction of a streamed transaction are dropped by ``xid``.
"""

from __future__ import annotations

import bisect
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

from rds_pipeline.engine.core.copy_rows import copy_row, row_fields, row_values
from rds_pipeline.engine.core.messages import UNCHANGED, Delete, Insert, Relation, Truncate, Update, Value
from rds_pipeline.engine.errors import BatchError

T = TypeVar("T")
UPSERT = "upsert"
DELETE = "delete"
_OID = struct.Struct("!I").unpack_from
_INSERT, _UPDATE, _NEW = 0x49, 0x55, 0x4E  # 'I', 'U', 'N'


@dataclass(frozen=True)
class Layout:
    """A selected table, as the batch projects its rows: the columns to keep and the key, by name."""

    columns: tuple[str, ...]
    key: tuple[str, ...]


@dataclass(frozen=True)
class ChunkFilter:
    """A table copied chunk by chunk (integer key ranges in key order, each under its own snapshot): a change to
    a key of a copied chunk applies only from transactions committed at or after that chunk's snapshot (what
    came before is in the copy); a key past the last copied chunk is skipped (its chunk's copy will hold it)."""

    uppers: tuple[int | None, ...]  # each copied chunk's exclusive upper key, in key order (None: to the end)
    lsns: tuple[int, ...]  # each chunk's snapshot LSN

    def allows(self, key: Value, commit_lsn: int) -> bool:
        if not isinstance(key, str):
            return False
        bounded = [upper for upper in self.uppers if upper is not None]  # only the last may be open
        index = bisect.bisect_right(bounded, int(key))
        if index >= len(self.uppers):
            return False
        return commit_lsn >= self.lsns[index]


@dataclass(slots=True)
class RowChange:
    op: str  # upsert or delete
    values: tuple[Value, ...]  # the new row (upsert), or the old key tuple (delete)
    moved_from: tuple[Value, ...] | None = None  # upsert: the destination key holding its UNCHANGED values
    at: int | None = None  # delete: the commit time of its transaction (for soft deletes)

    @property
    def complete(self) -> bool:
        return UNCHANGED not in self.values


@dataclass(slots=True)
class CopyRow:
    """An upsert of a whole new row (text values, none UNCHANGED), kept as the COPY BINARY row the destination
    loads (``copy_rows.py``): never decoded unless a later change to its key needs the values."""

    row: bytes
    op: ClassVar[str] = UPSERT
    moved_from: ClassVar[None] = None

    def decoded(self) -> RowChange:
        return RowChange(UPSERT, row_values(self.row))


Change = RowChange | CopyRow
# per relation, for ``add_copy``: its key's positions, the current segment's rows, its counts, its name
_CopyPath = tuple[tuple[int, ...], dict[tuple[Value, ...], Change], dict[str, int], tuple[str, str]]


def decoded(change: Change) -> RowChange:
    """``change`` with its values (a ``CopyRow`` decoded)."""
    return change.decoded() if type(change) is CopyRow else change  # type: ignore[return-value]


@dataclass
class Segment:
    """Changes up to a TRUNCATE (or the end of the batch), per relation OID and key, in first-seen order."""

    changes: dict[int, dict[tuple[Value, ...], Change]] = field(default_factory=dict)
    truncate: Truncate | None = None  # applied after ``changes``


@dataclass
class ChangeBatch:
    relations: dict[int, Relation] = field(default_factory=dict)
    segments: list[Segment] = field(default_factory=lambda: [Segment()])
    end_lsn: int | None = None  # the end LSN of the last transaction added: the state to commit with the batch
    messages: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {"insert": 0, "update": 0, "delete": 0, "truncate": 0})
    layouts: dict[tuple[str, str], Layout] | None = None  # None: keep every table, whole rows, replica identity keys
    skip: frozenset[tuple[str, str]] = frozenset()  # tables the current transaction must leave alone
    commit_time: int | None = None  # of the current transaction
    commit_lsn: int = 0  # of the current transaction (for ``ranged``)
    ranged: dict[tuple[str, str], ChunkFilter] = field(default_factory=dict)  # tables copied chunk by chunk
    per_table: dict[tuple[str, str], dict[str, int]] = field(default_factory=dict)
    copy_tables: frozenset[tuple[str, str]] = frozenset()  # tables ``add_copy`` may keep as COPY rows
    copied: int = 0  # changes ``add_copy`` took (never decoded)
    _copy_paths: dict[int, _CopyPath | None] = field(default_factory=dict, repr=False)
    _projection: dict[int, tuple[Relation, Layout, tuple[int | None, ...] | None, tuple[int, ...]]] = field(
        default_factory=dict, repr=False
    )

    def in_order(self, tables: Mapping[tuple[str, str], T]) -> Iterator[tuple[T, list[RowChange] | None]]:
        """What a destination applies, in order: ``(table, changes)`` per table and segment, and ``(table,
        None)`` for each table a TRUNCATE wipes after them. ``tables`` by source (schema, name); others are
        left out. Every change decoded (a ``CopyRow`` too)."""
        for table, changes in self.in_order_undecoded(tables):
            yield table, None if changes is None else list(map(decoded, changes))

    def in_order_undecoded(self, tables: Mapping[tuple[str, str], T]) -> Iterator[tuple[T, list[Change] | None]]:
        """``in_order``, with ``CopyRow`` upserts as they are (for a destination that loads them)."""
        for segment in self.segments:
            for oid, changes in segment.changes.items():
                relation = self.relations[oid]
                table = tables.get((relation.namespace, relation.name))
                if table is not None and changes:
                    yield table, list(changes.values())
            for oid in segment.truncate.relation_oids if segment.truncate is not None else ():
                wiped = self.relations.get(oid)
                table = tables.get((wiped.namespace, wiped.name)) if wiped is not None else None
                if table is not None:
                    yield table, None

    def add_transaction(self, messages: Iterable[object], end_lsn: int, aborted_xids: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        """Add one committed transaction's messages, in order."""
        for message in messages:
            if getattr(message, "xid", None) in aborted_xids:
                continue
            self.add(message)
        self.end_lsn = end_lsn

    def add_copy(self, data: bytes) -> bool:
        """The fast path, before decoding: an INSERT, or an UPDATE that kept its key, of a whole row of text
        values to a table of ``copy_tables`` whose columns are the selected ones, in order. Kept as a
        ``CopyRow`` under its key; returns False (nothing done) for anything else, which ``add`` then takes.
        One call per change: what it needs per relation is cached until a Relation or TRUNCATE message."""
        kind = data[0]
        if (kind != _INSERT and kind != _UPDATE) or data[5] != _NEW:
            return False  # not a row change, or an UPDATE carrying its old key or row
        (oid,) = _OID(data, 1)
        try:
            path = self._copy_paths[oid]
        except KeyError:
            path = self._copy_paths[oid] = self._copy_path(oid)
        if path is None:
            return False
        keys, rows, counts, name = path
        if self.skip and name in self.skip:
            return False
        row = copy_row(data, 6)
        if row is None:
            return False
        rows[row_fields(row, keys)] = CopyRow(row)  # a whole row: whatever came before under its key is void
        self.messages += 1
        self.copied += 1
        counted = "insert" if kind == _INSERT else "update"
        self.counts[counted] += 1
        counts[counted] = counts.get(counted, 0) + 1
        return True

    def _copy_path(self, oid: int) -> _CopyPath | None:
        """What ``add_copy`` needs for a relation (its key's positions, the current segment's rows, the table's
        counts and name), or None if it may not take its rows (see ``_copy_keys``). Cached either way."""
        relation = self.relations.get(oid)
        if relation is None:
            return None
        keys = self._copy_keys(relation, self._layout(relation))
        if keys is None:
            return None
        name = (relation.namespace, relation.name)
        return keys, self.segments[-1].changes.setdefault(oid, {}), self.per_table.setdefault(name, {}), name

    def _copy_keys(self, relation: Relation, layout: Layout | None) -> tuple[int, ...] | None:
        """The key's positions if ``add_copy`` may take the relation's rows: a table of ``copy_tables`` with a
        key, whose stream columns are its selected columns in order, not being copied chunk by chunk."""
        name = (relation.namespace, relation.name)
        if layout is None or name not in self.copy_tables or name in self.ranged or not layout.key:
            return None
        positions, keys = self._positions(relation, layout)
        return keys if positions is None else None

    def add(self, message: object) -> None:
        if type(message) is Insert and self.layouts is not None:  # the hot path: whole new rows
            relation = self.relations.get(message.relation_oid)
            if relation is not None:
                name = (relation.namespace, relation.name)
                layout = self.layouts.get(name)
                if layout is None or name in self.skip:
                    return
                positions, keys = self._positions(relation, layout)
                new = (
                    message.new
                    if positions is None
                    else tuple(message.new[i] if i is not None else None for i in positions)
                )
                key = tuple([new[i] for i in keys])
                if self.ranged and name in self.ranged and not self.ranged[name].allows(key[0], self.commit_lsn):
                    return
                self.messages += 1
                rows = self.segments[-1].changes.setdefault(relation.oid, {})
                rows[key] = RowChange(UPSERT, new)  # replaces any earlier change
                self.counts["insert"] += 1
                table = self.per_table.get(name)
                if table is None:
                    table = self.per_table[name] = {}
                table["insert"] = table.get("insert", 0) + 1
                return
        if isinstance(message, Relation):
            self.relations[message.oid] = message
            self._copy_paths.pop(message.oid, None)  # its shape (or the layout) may have changed
            return
        if not isinstance(message, (Insert, Update, Delete, Truncate)):
            return  # Begin, Commit, Type, Origin, Message: nothing to apply
        segment = self.segments[-1]
        if isinstance(message, Truncate):
            kept = tuple(oid for oid in message.relation_oids if self._kept(self.relations.get(oid)))
            if not kept:
                return
            self.messages += 1
            segment.truncate = Truncate(message.xid, kept, message.cascade, message.restart_identity)
            self.segments.append(Segment())
            self._copy_paths.clear()  # they point into the segment that just ended
            self.counts["truncate"] += 1
            for oid in kept:
                if oid in self.relations:
                    self._count(self.relations[oid], "truncate", total=False)
            return
        relation = self.relations.get(message.relation_oid)
        if relation is None:
            raise BatchError(f"a change for relation {message.relation_oid} came before its Relation message")
        if not self._kept(relation):
            return
        rows = segment.changes.setdefault(relation.oid, {})
        if isinstance(message, Insert):
            new = self._row(relation, message.new)
            if self._allowed(relation, self._key(relation, new)):
                self.messages += 1
                self._upsert(rows, relation, new)
                self._count(relation, "insert")
        elif isinstance(message, Update):
            new = message.new
            if message.old_kind == "O" and message.old is not None:  # REPLICA IDENTITY FULL: the old row is whole
                new = tuple(old if value is UNCHANGED else value for value, old in zip(new, message.old, strict=True))
            new = self._row(relation, new)
            new_key = self._key(relation, new)
            old_key = self._key(relation, self._row(relation, message.old)) if message.old is not None else None
            if old_key is not None and old_key != new_key:  # the key itself changed
                removed, added = self._allowed(relation, old_key), self._allowed(relation, new_key)
                if not (removed or added):
                    return
                self.messages += 1
                carried = rows.pop(old_key, None) if removed else None
                if removed:
                    rows[old_key] = RowChange(DELETE, old_key, at=self.commit_time)
                if added:
                    self._upsert(rows, relation, new, carried, moved_from=old_key)
            elif self._allowed(relation, new_key):
                self.messages += 1
                self._upsert(rows, relation, new)
            else:
                return
            self._count(relation, "update")
        else:
            key = self._key(relation, self._row(relation, message.old))
            if not self._allowed(relation, key):
                return
            self.messages += 1
            rows.pop(key, None)  # re-inserted later? it goes after the delete, in order
            rows[key] = RowChange(DELETE, key, at=self.commit_time)
            self._count(relation, "delete")

    def _allowed(self, relation: Relation, key: tuple[Value, ...]) -> bool:
        """Whether the current transaction may touch ``key`` of a table copied chunk by chunk (any other: yes)."""
        chunks = self.ranged.get((relation.namespace, relation.name)) if self.ranged else None
        return chunks is None or chunks.allows(key[0], self.commit_lsn)

    def _kept(self, relation: Relation | None) -> bool:
        if relation is None:
            return self.layouts is None
        name = (relation.namespace, relation.name)
        return name not in self.skip and (self.layouts is None or name in self.layouts)

    def _count(self, relation: Relation, kind: str, total: bool = True) -> None:
        self.counts[kind] += total
        table = self.per_table.setdefault((relation.namespace, relation.name), {})
        table[kind] = table.get(kind, 0) + 1

    def _row(self, relation: Relation, values: tuple[Value, ...]) -> tuple[Value, ...]:
        """The values of the selected columns, in their order (a column the source no longer has: NULL)."""
        layout = self._layout(relation)
        if layout is None:
            return values
        positions, _ = self._positions(relation, layout)
        if positions is None:
            return values
        return tuple(values[i] if i is not None else None for i in positions)

    def _positions(self, relation: Relation, layout: Layout) -> tuple[tuple[int | None, ...] | None, tuple[int, ...]]:
        """Where each of the layout's columns is in the relation's tuples (None: not there; None for all: every
        column in order, no projection), and the key's positions in the layout. Cached per relation: this
        runs for every row."""
        cached = self._projection.get(relation.oid)
        if cached is not None and cached[0] is relation and cached[1] is layout:
            return cached[2], cached[3]
        by_name = {c.name: i for i, c in enumerate(relation.columns)}
        positions: tuple[int | None, ...] | None = tuple(by_name.get(name) for name in layout.columns)
        if positions == tuple(range(len(relation.columns))):
            positions = None
        keys = tuple(layout.columns.index(k) for k in layout.key)
        self._projection[relation.oid] = (relation, layout, positions, keys)
        return positions, keys

    def _layout(self, relation: Relation) -> Layout | None:
        return None if self.layouts is None else self.layouts.get((relation.namespace, relation.name))

    def _key(self, relation: Relation, values: tuple[Value, ...]) -> tuple[Value, ...]:
        layout = self._layout(relation)
        if layout is not None:
            return tuple(values[i] for i in self._positions(relation, layout)[1])
        positions = [i for i, c in enumerate(relation.columns) if c.is_key]
        if not positions:
            raise BatchError(
                f"{relation.namespace}.{relation.name} has no replica identity key: give it a primary "
                "key, or REPLICA IDENTITY FULL"
            )
        return tuple(values[i] for i in positions)

    def _upsert(
        self,
        rows: dict[tuple[Value, ...], Change],
        relation: Relation,
        new: tuple[Value, ...],
        carried: Change | None = None,
        moved_from: tuple[Value, ...] | None = None,
    ) -> None:
        """``carried`` and ``moved_from``: for a key change, the old key's change in this batch and the old key."""
        key = self._key(relation, new)
        earlier = rows.pop(key, None)
        previous = carried if moved_from is not None else earlier
        if previous is not None and previous.op == UPSERT:
            previous = decoded(previous)
            new = tuple(old if value is UNCHANGED else value for value, old in zip(new, previous.values, strict=True))
            # what is still UNCHANGED lives where the earlier change's row came from
            moved_from = previous.moved_from or moved_from
        rows[key] = RowChange(UPSERT, new, moved_from if UNCHANGED in new else None)
