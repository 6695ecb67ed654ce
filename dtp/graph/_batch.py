"""Reading the canonical HAM batches the table itself produces (protocol.md 6.1).

``changed`` outputs and ``export`` batches are canonical and already validated, so the
graph layer walks them with this lean reader instead of the validating decoder: it
returns each update together with its raw canonical bytes, which the sync summaries hash
as they are. Peer input never comes here -- it goes through ``decode_ham_batch`` or the
C merge, which validate.
"""

from __future__ import annotations

import struct

from dtp.errors import ErrorCode, RemoteProtocolError

_F64 = struct.Struct("<d")
_COUNT = struct.Struct("<I")

Entry = tuple[bytes, bytes, float, bytes, bytes]
"""(soul, field, state, value, canonical bytes of the whole update)."""


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    first = buf[pos]
    if first < 0x40:
        return first, pos + 1
    size = 1 << (first >> 6)
    value = first & 0x3F
    for i in range(1, size):
        value = (value << 8) | buf[pos + i]
    return value, pos + size


def batch_count(batch: bytes | bytearray | memoryview) -> int:
    """The update count in a batch header (0 for anything shorter than a header)."""
    if len(batch) < 5:
        return 0
    return int(_COUNT.unpack_from(batch, 1)[0])


def entries(batch: bytes) -> list[Entry]:
    """Every update of a canonical batch, with its raw bytes."""
    count = batch_count(batch)
    out: list[Entry] = []
    append = out.append
    unpack = _F64.unpack_from
    pos = 5
    try:
        for _ in range(count):
            start = pos
            n = batch[pos]
            if n < 0x40:
                pos += 1
            else:
                n, pos = _varint(batch, pos)
            soul = batch[pos : pos + n]
            pos += n
            n = batch[pos]
            if n < 0x40:
                pos += 1
            else:
                n, pos = _varint(batch, pos)
            field = batch[pos : pos + n]
            pos += n
            state = unpack(batch, pos)[0]
            pos += 8
            n = batch[pos]
            if n < 0x40:
                pos += 1
            else:
                n, pos = _varint(batch, pos)
            value = batch[pos : pos + n]
            pos += n
            append((soul, field, state, value, batch[start:pos]))
    except (IndexError, struct.error):
        raise RemoteProtocolError("truncated HAM batch", ErrorCode.HAM_MALFORMED) from None
    return out


__all__ = ["Entry", "batch_count", "entries"]
