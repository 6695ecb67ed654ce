"""Graph sync over a DTP stream (docs/graph.md, "Sync protocol").

:class:`SyncSession` is the sans-I/O protocol: bytes in (:meth:`~SyncSession.receive_data`),
bytes out (:meth:`~SyncSession.data_to_send`), no sockets, no clock. Both peers run the
same machine:

1. Each sends HELLO with the summary of its whole table (an XOR digest of every field's
   hash, and the field count).
2. Summaries form a tree: root -> 256 nodes -> 65536 leaves (souls are placed by
   ``blake2b(soul, 2 bytes)``). For a node whose digests differ, both sides take the
   same decision from the same two summaries: if it is a leaf, if either side has no
   field under it, or if both together have at most :data:`SMALL` fields, each side
   *pushes* its fields under it (DATA); otherwise each side sends the summaries of the
   node's children (SUM) and the comparison goes on one level down.
3. When a side has pushed everything its decisions call for, it sends END. The
   peer's END means everything the peer had at the start has arrived; it comes after
   the peer's answer to every SUM we sent (an END before one is a protocol error).
4. From the start on, every change to the local table (a local write, or a merge from
   a third peer) is forwarded as DATA -- the live phase needs no further message.
5. An update of the peer's dropped because the deferred queue was full is asked for
   again (WANT: the leaves to push again) once the clock reaches its state.
6. What is refused of the peer's updates (signatures, SEA, the graph's rules) is
   reported to it (REFUSED), to a peer that said it reads them (an empty WANT after
   its HELLO); a final REFUSED follows the peer's END.

Pushes are made as the peer reads (:meth:`SyncSession.data_to_send`, a batch at a time,
each read from the table as it is made), so a session holds about one batch of its push
whatever the table's size.

Peers already in sync exchange two HELLOs and two ENDs. A fresh peer receives the table
straight from the HAM export (batches of about 1 MiB, one C call each side).

Framing: each message is a 4-byte big-endian length, then a msgpack array whose first
item is the message type. Every message is bounded (``max_message``); anything
malformed raises :class:`GraphSyncError` (a :class:`~dtp.errors.RemoteProtocolError`),
which ends that sync session only.

The session is :mod:`~dtp.graph.sync._session` (``SyncSession``, one class read in the
order of a session's life) over :mod:`~dtp.graph.sync._messages` (types, limits, errors,
checks); it runs over a blocking stream (:mod:`~dtp.graph.sync._blocking`),
an asyncio one (:mod:`~dtp.graph.sync._asyncio`) or in :mod:`~dtp.graph.sync._server`;
:mod:`~dtp.graph.sync._lan` finds the peers on the LAN (mDNS) and keeps a session with each.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dtp.graph.sync._asyncio import sync_stream
from dtp.graph.sync._blocking import connect, sync_blocking
from dtp.graph.sync._messages import (
    DATA,
    END,
    HELLO,
    MAX_MESSAGE,
    REFUSED,
    SMALL,
    SUM,
    VERSION,
    WANT,
    GraphSyncError,
)
from dtp.graph.sync._messages import MAX_BACKLOG as MAX_BACKLOG
from dtp.graph.sync._messages import SyncBacklogExceeded as SyncBacklogExceeded
from dtp.graph.sync._run_checks import CONNECT_TIMEOUT, HELLO_TIMEOUT
from dtp.graph.sync._server import DEFAULT_NAMESPACE, MAX_SESSIONS, GraphServer
from dtp.graph.sync._session import SyncSession

if TYPE_CHECKING:
    from dtp.graph.sync._lan import LanSync, sync_with_lan

__all__ = [
    "CONNECT_TIMEOUT",
    "DATA",
    "DEFAULT_NAMESPACE",
    "END",
    "HELLO",
    "HELLO_TIMEOUT",
    "MAX_MESSAGE",
    "MAX_SESSIONS",
    "REFUSED",
    "SMALL",
    "SUM",
    "VERSION",
    "WANT",
    "GraphServer",
    "GraphSyncError",
    "LanSync",
    "SyncSession",
    "connect",
    "sync_blocking",
    "sync_stream",
    "sync_with_lan",
]


def __getattr__(name: str) -> Any:
    # LAN sync on first use: it brings in mDNS (zeroconf), which a graph that never
    # looks at the LAN has no need to import
    if name in ("LanSync", "sync_with_lan"):
        from dtp.graph.sync import _lan as lan

        return getattr(lan, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
