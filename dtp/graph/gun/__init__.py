"""The Gun peer: browsers and gun.js apps use a dtp graph node as their relay
(docs/graph.md, "The Gun peer").

:class:`GunServer` (asyncio, ``websockets``) serves Gun's wire and web pages on one port,
over the sans-I/O :class:`GunRelay`, which reads and writes a
:class:`~dtp.graph._store.Graph` -- so what a browser writes reaches the graph's DTP sync
peers, and what they write reaches the browser. :func:`serve_in_thread` runs a server
for a blocking program; ``python -m dtp.graph gun`` runs one from the command line.
"""

from dtp.graph.gun._relay import GunRelay, PeerLink
from dtp.graph.gun._server import (
    DEMO_SITE,
    GunServer,
    GunServerThread,
    find_gun_dir,
    serve_in_thread,
)
from dtp.graph.gun._wire import GunWireError

__all__ = [
    "DEMO_SITE",
    "GunRelay",
    "GunServer",
    "GunServerThread",
    "GunWireError",
    "PeerLink",
    "find_gun_dir",
    "serve_in_thread",
]
