"""The sync protocol's messages (:mod:`dtp.graph.sync`): their types and limits, the
errors a session ends with, the checks of a message's fields, the reading of a DATA
message without msgpack's decoder, and the decision both peers take from two summaries."""

from __future__ import annotations

import struct
from typing import Final

from dtp.errors import DTPError, ErrorCode, RemoteProtocolError
from dtp.graph._summaries import LEAF_BITS, LEAF_LEVEL

VERSION = 2
"""The sync protocol's version, in HELLO. 2: HAM batches of version 2 (values in Gun's
text, ties in UTF-16 order, protocol.md 6.3); a peer of version 1 would pick other
winners at ties, so the two do not sync."""
HELLO, SUM, DATA, END, WANT = 1, 2, 3, 4, 5
REFUSED = 6
"""``[6, count, [[soul, field, state, reason, message], ...], final]``: updates of the
peer's that were refused (docs/graph.md, "Sync protocol"). Sent only to a peer that
announced it reads them: with an empty WANT (``[5, []]``) right after its HELLO, which
peers of the first version-2 release take as asking for nothing."""
REPORTS_PER_MESSAGE = 64
"""Refusals described in one REFUSED message at most."""
MAX_REPORTS = 4096
"""Refusals a session describes to its peer at most (beyond, it only counts them)."""
MAX_REASON = 80
"""Characters of a REFUSED entry's reason at most (``rule:`` and a rule's name)."""
MAX_REPORT_MESSAGE = 1024
"""Characters of a REFUSED entry's message at most."""
SMALL = 64
"""Nodes holding at most this many fields (both sides together) are pushed whole."""
MAX_MESSAGE = 4 << 20
"""Default cap of one message (HAM export batches are about 1 MiB)."""
_LEN = struct.Struct(">I")
_U64 = 1 << 64
_PUSH_LOW = 1 << 20  # a push makes its next batch once less than this is queued
_WANT_LEAVES = 1024  # leaves listed in one WANT message (about 3 KiB)
_LEAVES = 1 << LEAF_BITS


class GraphSyncError(RemoteProtocolError):
    """The peer broke the sync protocol; the session is over."""

    code = ErrorCode.HAM_MALFORMED


class SyncBacklogExceeded(DTPError):
    """The peer reads too slowly: live changes for it passed the backlog limit of
    the session, so the session ended. Reconnecting catches up through the summaries."""


MAX_BACKLOG = 64 << 20  # bytes of live changes queued for one peer before giving up


def _fail(message: str, code: ErrorCode = ErrorCode.HAM_MALFORMED) -> GraphSyncError:
    return GraphSyncError(f"graph sync: {message}", code)


Summary = dict[int, tuple[int, int]]  # child prefix -> (digest, count)


def _differs(mine: tuple[int, int], theirs: tuple[int, int]) -> bool:
    return mine != theirs


def _push_whole(level: int, mine: tuple[int, int], theirs: tuple[int, int]) -> bool:
    """The shared decision (step 2): push the node's fields, or compare its children."""
    return level >= LEAF_LEVEL or not mine[1] or not theirs[1] or mine[1] + theirs[1] <= SMALL


#: The longest message other than DATA a peer may send: a WANT of every leaf (at most 3
#: bytes each) or a SUM of every child of a node (about 20 bytes each), with room to spare.
_SMALL_MESSAGE: Final = 256 << 10
_BIN_HEADERS: Final = {0xC4: 1, 0xC5: 2, 0xC6: 4}  # msgpack bin 8/16/32: its length's size


def _data_batch(body: bytes) -> bytes | None:
    """The batch of a DATA message (``[3, batch]``, msgpack), read without msgpack's
    decoder; None when ``body`` is not exactly one (msgpack then judges it)."""
    if len(body) < 3 or body[0] != 0x92 or body[1] != DATA:
        return None
    size = _BIN_HEADERS.get(body[2])
    if size is None or len(body) < 3 + size:
        return None
    start = 3 + size
    if len(body) - start != int.from_bytes(body[3:start], "big"):
        return None
    return body[start:]


def _is_count(value: object) -> bool:
    return type(value) is int and 0 <= value < 1 << 32


def _is_digest(value: object) -> bool:
    return type(value) is int and 0 <= value < _U64
