"""pgoutput tuple data turned into COPY BINARY rows by slicing bytes: the log-based fast path. Pure: no I/O.

pgoutput sends a row as a column count, then per column a kind byte and, for a text value, its length and
bytes. A COPY BINARY row of ``text`` fields is the same count, then per field the length (-1 for NULL) and the
bytes. So a whole row of text values becomes a COPY row by dropping each kind byte: no value is decoded in
Python, nothing is escaped, and the destination casts the text to each column's type, as COPY's text format
would. A row holding an UNCHANGED (TOASTed) or a binary value is left to the decoded path (``None``).
"""

from __future__ import annotations

import struct

from rds_pipeline.engine.errors import DecodeError

COPY_BINARY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, header extension length
COPY_BINARY_TRAILER = b"\xff\xff"
_NULL = b"\xff\xff\xff\xff"
_TEXT, _NULL_KIND = 0x74, 0x6E  # 't', 'n'
_I16 = struct.Struct("!h").unpack_from
_I32 = struct.Struct("!i").unpack_from


def copy_row(data: bytes, pos: int) -> bytes | None:
    """The tuple data at ``pos`` (to the end of ``data``) as one COPY BINARY row; None if a value is neither
    text nor NULL. The hot path of the log-based apply: one call per row, locals only."""
    (count,) = _I16(data, pos)
    parts = [data[pos : pos + 2]]
    append = parts.append
    pos += 2
    for _ in range(count):
        kind = data[pos]
        if kind == _TEXT:
            end = pos + 5 + _I32(data, pos + 1)[0]
            append(data[pos + 1 : end])
            pos = end
        elif kind == _NULL_KIND:
            append(_NULL)
            pos += 1
        else:
            return None
    if pos != len(data):
        raise DecodeError(f"a row's values end at byte {pos} of {len(data)} (protocol version mismatch?)")
    return b"".join(parts)


def row_fields(row: bytes, positions: tuple[int, ...]) -> tuple[str | None, ...]:
    """The text of a COPY BINARY row's fields at ``positions`` (in that order), e.g. its key."""
    if positions == (0,):  # the usual key: the first column
        length = _I32(row, 2)[0]
        return (None if length < 0 else row[6 : 6 + length].decode("utf-8"),)
    fields: list[str | None] = []
    pos = 2
    for _ in range(max(positions) + 1):
        length = _I32(row, pos)[0]
        fields.append(None if length < 0 else row[pos + 4 : pos + 4 + length].decode("utf-8"))
        pos += 4 + max(length, 0)
    return tuple(fields[i] for i in positions)


def row_values(row: bytes) -> tuple[str | None, ...]:
    """Every field of a COPY BINARY row, as the decoder would give them (text, or None for NULL)."""
    return row_fields(row, tuple(range(_I16(row, 0)[0])))
