"""Finding DTP endpoints without being told where they are (docs/messaging.md §6).

- On the LAN, with no ledger: :mod:`dtp.discovery.lan` (mDNS / DNS-SD) -- servers,
  graph peers and the services daemon's services announce themselves, and browsers
  find them (:func:`~dtp.discovery.lan.announce`, :func:`~dtp.discovery.lan.browse`).
- On the ledger and by gossip over pub/sub: :mod:`dtp.messaging.discovery` (a Host's
  services, signed announcements).

The layer sits between the public faces (:mod:`dtp.socket`, :mod:`dtp.aio`) and the
applications (messaging, graph, daemon), which announce through it
(docs/architecture.md).

mDNS runs on zeroconf, which comes with the ``lan`` extra (``pip install 'dtp-sui[lan]'``,
:mod:`dtp._extras`): the names from :mod:`dtp.discovery.lan` are imported on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dtp.discovery.errors import LanDiscoveryError, LanRecordError

if TYPE_CHECKING:
    from dtp.discovery.lan import (
        Announcement,
        AsyncBrowser,
        Browser,
        LanDiscovery,
        LanEvent,
        LanPeer,
        LanRecord,
        announce,
        announce_async,
        browse,
        browse_async,
    )

__all__ = [
    "Announcement",
    "AsyncBrowser",
    "Browser",
    "LanDiscovery",
    "LanDiscoveryError",
    "LanEvent",
    "LanPeer",
    "LanRecord",
    "LanRecordError",
    "announce",
    "announce_async",
    "browse",
    "browse_async",
]


def __getattr__(name: str) -> Any:
    # dtp.discovery.lan on first use: it runs on zeroconf (the lan extra), which the
    # errors, records and peer tables do not need
    if name in __all__:
        from dtp.discovery import lan

        return getattr(lan, name)
    raise AttributeError(f"module 'dtp.discovery' has no attribute {name!r}")
