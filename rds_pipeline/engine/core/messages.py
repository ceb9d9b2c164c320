"""The messages of pgoutput, PostgreSQL's logical replication protocol, as plain values: what the decoder
(``replication/cdc/pgoutput.py``) produces, a change batch holds and a destination's change applier reads.

Values stay as the server sent them: text (``str``), binary (``bytes``), ``None`` for NULL, or ``UNCHANGED`` for
a TOASTed value the update did not touch (never to be written as NULL).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Final

POSTGRES_EPOCH: Final = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)


class _Unchanged:
    """A TOASTed column an UPDATE left as it was (``'u'``): keep the destination's current value."""

    _instance: _Unchanged | None = None

    def __new__(cls) -> _Unchanged:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNCHANGED"


UNCHANGED: Final = _Unchanged()
Value = str | bytes | None | _Unchanged


def lsn_text(lsn: int) -> str:
    """``0/16B3748``, as PostgreSQL prints an LSN."""
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def lsn_int(text: str) -> int:
    """``0/16B3748`` -> its position as a number (to compare and order LSNs)."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def timestamp(microseconds: int) -> dt.datetime:
    return POSTGRES_EPOCH + dt.timedelta(microseconds=microseconds)


@dataclass(frozen=True)
class Begin:
    final_lsn: int
    commit_time: int  # microseconds since 2000-01-01 UTC; ``timestamp()`` turns it into a datetime
    xid: int


@dataclass(frozen=True)
class Commit:
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time: int


@dataclass(frozen=True)
class Origin:
    commit_lsn: int
    name: str


@dataclass(frozen=True)
class RelationColumn:
    name: str
    type_oid: int
    type_modifier: int
    is_key: bool  # part of the replica identity (every column under REPLICA IDENTITY FULL)


@dataclass(frozen=True)
class Relation:
    xid: int | None
    oid: int
    namespace: str  # "pg_catalog" when the server sent the empty string
    name: str
    replica_identity: str  # d (default), n (nothing), f (full), i (index)
    columns: tuple[RelationColumn, ...]


@dataclass(frozen=True)
class TypeInfo:
    xid: int | None
    oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    xid: int | None
    relation_oid: int
    new: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Update:
    xid: int | None
    relation_oid: int
    old_kind: str | None  # 'K' (the key columns only), 'O' (the whole old row, REPLICA IDENTITY FULL) or None
    old: tuple[Value, ...] | None
    new: tuple[Value, ...]


@dataclass(frozen=True, slots=True)
class Delete:
    xid: int | None
    relation_oid: int
    old_kind: str  # 'K' or 'O'
    old: tuple[Value, ...]


@dataclass(frozen=True)
class Truncate:
    xid: int | None
    relation_oids: tuple[int, ...]
    cascade: bool
    restart_identity: bool


@dataclass(frozen=True)
class LogicalMessage:
    xid: int | None
    transactional: bool
    lsn: int
    prefix: str
    content: bytes


@dataclass(frozen=True)
class StreamStart:
    xid: int
    first_segment: bool


@dataclass(frozen=True)
class StreamStop:
    pass


@dataclass(frozen=True)
class StreamCommit:
    xid: int
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time: int


@dataclass(frozen=True)
class StreamAbort:
    xid: int
    subxid: int  # equal to xid when the whole transaction aborted
    abort_lsn: int | None = None  # protocol 4 (parallel streaming) only
    abort_time: int | None = None


@dataclass(frozen=True)
class BeginPrepare:
    prepare_lsn: int
    end_lsn: int
    prepare_time: int
    xid: int
    gid: str


@dataclass(frozen=True)
class Prepare:
    flags: int
    prepare_lsn: int
    end_lsn: int
    prepare_time: int
    xid: int
    gid: str
    streamed: bool = False  # Stream Prepare ('p')


@dataclass(frozen=True)
class CommitPrepared:
    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time: int
    xid: int
    gid: str


@dataclass(frozen=True)
class RollbackPrepared:
    flags: int
    prepare_end_lsn: int
    rollback_end_lsn: int
    prepare_time: int
    rollback_time: int
    xid: int
    gid: str


Message = (
    Begin
    | Commit
    | Origin
    | Relation
    | TypeInfo
    | Insert
    | Update
    | Delete
    | Truncate
    | LogicalMessage
    | StreamStart
    | StreamStop
    | StreamCommit
    | StreamAbort
    | BeginPrepare
    | Prepare
    | CommitPrepared
    | RollbackPrepared
)
