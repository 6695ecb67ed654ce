"""The replicated graph store: a HAM CRDT synced between peers over DTP (docs/graph.md).

::

    from dtp.graph import Graph, link

    g = Graph("notes.db")
    g.put("user/1", {"name": "alice", "friend": link("user/2")})
    g.get("user/1")                # {"name": "alice", "friend": {"#": "user/2"}}
    g.walk("user/1", "friend")     # "user/2"
    g.query("user/1").out("friend").souls()   # ["user/2"]

Privacy tiers (docs/graph.md, "Privacy tiers"): ``g.public(soul)``, ``g.protected(path,
identity)`` (only the author writes) and ``g.private(path, identity)`` (values encrypted
to the readers the author names) return node handles of one shape.

Peers sync with :func:`dtp.graph.sync.connect` / :class:`dtp.graph.sync.GraphServer`
(blocking) or :func:`dtp.graph.sync.sync_stream` (asyncio), and find each other on the
LAN with :func:`dtp.graph.sync_with_lan` (mDNS, no ledger). :func:`open_stored` reads a
value as the table stores it (``snapshot()``, ``stored_node()``, ``export()``), verified.
"""

from typing import TYPE_CHECKING, Any

from dtp.graph._clock import HybridClock
from dtp.graph._persist import GraphStorageError
from dtp.graph._queries import LiveQuery
from dtp.graph._query import Query, QueryError, QueryUpdate
from dtp.graph._store import Change, ChangeStream, Graph, MergeReport, Subscription
from dtp.graph._tiers import PrivateNode, ProtectedNode, PublicNode
from dtp.graph.namespace import owner_of, user_soul
from dtp.graph.stored import StoredValue, StoredValueError, open_stored
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

if TYPE_CHECKING:
    from dtp.graph.sync._lan import LanSync, sync_with_lan

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
    "LanSync",
    "LiveQuery",
    "MergeReport",
    "PrivateNode",
    "ProtectedNode",
    "PublicNode",
    "Query",
    "QueryError",
    "QueryUpdate",
    "StoredValue",
    "StoredValueError",
    "Subscription",
    "SyncSession",
    "connect",
    "decode_value",
    "encode_value",
    "gun_value",
    "link",
    "link_soul",
    "open_stored",
    "owner_of",
    "sync_blocking",
    "sync_stream",
    "sync_with_lan",
    "user_soul",
]


def __getattr__(name: str) -> Any:
    # LanSync and sync_with_lan: dtp.graph.sync's, which imports them (and mDNS) on
    # first use
    from dtp.graph import sync

    try:
        return sync.__getattr__(name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
