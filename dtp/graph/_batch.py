"""Reading the canonical HAM batches the table itself produces (protocol.md 6.1).

``changed`` outputs and ``export`` batches are canonical and already validated, so the
graph layer walks them with this lean reader instead of the validating decoder: it
returns each update together with its raw canonical bytes, which the sync summaries hash
as they are. Peer input never comes here -- it goes through ``decode_ham_batch`` or the
C merge, which validate.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

from dtp.errors import ErrorCode, RemoteProtocolError
from dtp.native.core import decode_ham_batch, find_ham_souls
from dtp.native.reference._limits import HAM_BATCH_HEADER_LEN, HAM_BATCH_VERSION
from dtp.native.types import HamUpdate

_F64 = struct.Struct("<d")
_COUNT = struct.Struct("<I")
_HEADER = struct.Struct("<BI")
_ONE = _HEADER.pack(HAM_BATCH_VERSION, 1)  # the header of a batch of one update

#: Refused updates a filter describes at most (the rest it only counts): a batch of
#: millions of forgeries is not copied into as many descriptions.
MAX_DETAILS = 1024

Judge = Callable[[HamUpdate], "tuple[str, str] | None"]
"""A rule of a signed tier: None for an update it takes, else ``(reason, message)``."""

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


def drop_refused(
    batch: bytes,
    found: Sequence[tuple[int, int, HamUpdate]],
    held: Callable[[list[HamUpdate]], list[bool]] | None,
    judge: Judge,
    details: list[tuple[HamUpdate, str, str]] | None,
) -> tuple[bytes, dict[str, int]]:
    """A peer's ``batch`` without the updates ``judge`` refuses, and the count of
    refusals per reason: what the signed tiers' filters share (dtp.graph.namespace,
    sea, private).

    ``found``: the updates the filter looks at, each with its byte span in ``batch``, in
    batch order. ``held(updates)``, if given, tells which the table already holds
    exactly (checked when they first came: they pass unjudged). ``details``, if given,
    receives ``(update, reason, message)`` for each refused update while it holds fewer
    than :data:`MAX_DETAILS`. The batch comes back as the input itself when nothing was
    refused; otherwise the rest stays as the peer sent it, under a new count.
    """
    known = held([u for _, _, u in found]) if held is not None else None
    refused: dict[str, int] = {}
    dropped: list[tuple[int, int]] = []
    for k, (start, end, update) in enumerate(found):
        if known is not None and known[k]:
            continue
        verdict = judge(update)
        if verdict is None:
            continue
        reason, message = verdict
        refused[reason] = refused.get(reason, 0) + 1
        dropped.append((start, end))
        if details is not None and len(details) < MAX_DETAILS:
            details.append((update, reason, message))
    if not dropped:
        return batch, {}
    parts = [_HEADER.pack(HAM_BATCH_VERSION, batch_count(batch) - len(dropped))]
    pos = HAM_BATCH_HEADER_LEN
    for start, end in dropped:
        parts.append(batch[pos:start])
        pos = end
    parts.append(batch[pos:])
    return b"".join(parts), refused


def filter_souls(
    batch: bytes,
    prefixes: Sequence[bytes],
    claims: Callable[[bytes], object],
    judge: Judge,
    held: Callable[[list[HamUpdate]], list[bool]] | None,
    details: list[tuple[HamUpdate, str, str]] | None,
) -> tuple[bytes, dict[str, int]]:
    """:func:`drop_refused` on the updates of ``batch`` whose soul starts with one of
    ``prefixes`` and that ``claims``: every signed tier's filter. The C core finds them
    (validating the batch: RemoteProtocolError if malformed) and only those are decoded:
    decoding the whole batch in Python cost about a second of CPU per 8 MiB of small
    public updates that one such update brought along. An update ``held`` says the table
    holds exactly was checked when it first came: a batch sent again (a resync, a change
    forwarded by several neighbours) costs a lookup per update, not a signature check."""
    spans = sorted(
        span for prefix in prefixes if prefix in batch for span in find_ham_souls(batch, prefix)
    )
    found: list[tuple[int, int, HamUpdate]] = []
    for start, end in spans:
        (update,) = decode_ham_batch(_ONE + batch[start:end])
        if claims(update.soul):
            found.append((start, end, update))
    if not found:
        return batch, {}
    return drop_refused(batch, found, held, judge, details)


__all__ = [
    "MAX_DETAILS",
    "Entry",
    "Judge",
    "batch_count",
    "drop_refused",
    "entries",
    "filter_souls",
]
