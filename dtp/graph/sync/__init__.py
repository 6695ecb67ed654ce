"""Graph sync over a DTP stream: docs/graph.md, "Sync protocol", says the messages
(HELLO, SUM, DATA, END, WANT, REFUSED), the comparison of summaries and the live phase;
protocol.md 6.8 their wire form.

:class:`SyncSession` is the sans-I/O protocol: bytes in (:meth:`~SyncSession.receive_data`),
bytes out (:meth:`~SyncSession.data_to_send`), no sockets, no clock. Both peers run the
same machine: each sends HELLO with the summary of its whole table; for a node of the
summary tree whose digests differ both take the same decision, pushing its fields
(DATA) or comparing its children (SUM); END says a side pushed all its decisions call
for; from the start every local change is forwarded as DATA. Pushes are made as the
peer reads, so a session holds about one batch of its push whatever the table's size.
Anything malformed raises :class:`GraphSyncError` (a
:class:`~dtp.errors.RemoteProtocolError`), which ends that sync session only.

The session is :mod:`~dtp.graph.sync._session` over :mod:`~dtp.graph.sync._messages`
(types, limits, errors, checks); it runs over a blocking stream
(:mod:`~dtp.graph.sync._blocking`), an asyncio one (:mod:`~dtp.graph.sync._asyncio`) or
in :mod:`~dtp.graph.sync._server`; :mod:`~dtp.graph.sync._lan` finds the peers on the
LAN (mDNS) and keeps a session with each.
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
