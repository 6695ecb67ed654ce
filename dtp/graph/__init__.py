"""The replicated graph store: a HAM CRDT synced between peers over DTP (docs/graph.md).

::

    from dtp.graph import Graph, link

    g = Graph("notes.db")
    g.put("user/1", {"name": "alice", "friend": link("user/2")})
    g.get("user/1")                # {"name": "alice", "friend": {"#": "user/2"}}
    g.walk("user/1", "friend")     # "user/2"

Peers sync with :func:`dtp.graph.sync.connect` / :class:`dtp.graph.sync.GraphServer`
(blocking) or :func:`dtp.graph.sync.sync_stream` (asyncio).
"""

from dtp.graph.clock import HybridClock
from dtp.graph.namespace import owner_of, user_soul
from dtp.graph.persist import GraphStorageError
from dtp.graph.store import Change, ChangeStream, Graph, MergeReport, Subscription
from dtp.graph.sync import (
    GraphServer,
    GraphSyncError,
    SyncSession,
    connect,
    sync_blocking,
    sync_stream,
)
from dtp.graph.values import (
    JSON,
    GraphValueError,
    GunValue,
    decode_value,
    encode_value,
    gun_value,
    link,
    link_soul,
)

__all__ = [
    "JSON",
    "Change",
    "ChangeStream",
    "Graph",
    "GraphServer",
    "GraphStorageError",
    "GraphSyncError",
    "GraphValueError",
    "GunValue",
    "HybridClock",
    "MergeReport",
    "Subscription",
    "SyncSession",
    "connect",
    "decode_value",
    "encode_value",
    "gun_value",
    "link",
    "link_soul",
    "owner_of",
    "sync_blocking",
    "sync_stream",
    "user_soul",
]
