"""The counters of a UDP relay or forwarder (docs/udp.md), kept by the drivers: the
blocking driver's threads share them, so each addition takes their lock (the asyncio
driver, one thread, may add to the fields directly on its per-datagram path)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field


@dataclass
class UdpStats:
    """Counters of one relay or forwarder (all sessions)."""

    #: Datagrams (and bytes) from the UDP side sent into DTP.
    datagrams_out: int = 0
    bytes_out: int = 0
    #: Datagrams (and bytes) from DTP delivered to the UDP side.
    datagrams_in: int = 0
    bytes_in: int = 0
    #: Dropped: too large for a DTP datagram.
    dropped_oversized: int = 0
    #: Dropped: not covered by a receipt (relay) or beyond the deposit (forwarder).
    dropped_unpaid: int = 0
    #: Dropped: the session limit was reached, its connection could not be made or had
    #: ended (forwarder).
    dropped_no_session: int = 0
    #: Dropped: over the client's rate limits, the host firewall's (relay).
    dropped_rate_limited: int = 0
    #: Dropped: the DTP connection's carrier was backed up (more than
    #: ``dtp.protocol.connection.DATAGRAM_SEND_BACKLOG`` unsent): never queued behind it.
    dropped_backlog: int = 0
    #: Dropped: the UDP socket refused the send -- the backend's port is closed (an ICMP
    #: error left by an earlier datagram), unreachable or the buffer full (relay; such
    #: datagrams are not billed), or the same for the local client (forwarder).
    dropped_send_failed: int = 0
    #: Dropped: the relay was finishing (its daemon stopping): its final usage was
    #: reported, and a datagram forwarded after that would go unpaid.
    dropped_finishing: int = 0
    #: Dropped: arrived on the DTP connection but not read in time (it keeps the newest
    #: 1024, ``DTPSocket.datagrams_dropped``): a blocking relay or forwarder whose reader
    #: fell behind (the asyncio ones take each datagram as it arrives).
    dropped_unread: int = 0
    sessions_opened: int = 0
    #: Receipts signed and sent to relays (forwarder), and the MIST they added: the
    #: payments a forwarder made, for its owner's status.
    receipts_sent: int = 0
    fees_paid: int = 0
    sessions_closed: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, **counts: int) -> None:
        """Add to counters atomically (sessions run in threads of their own)."""
        with self._lock:
            for name, value in counts.items():
                setattr(self, name, getattr(self, name) + value)

    def snapshot(self) -> dict[str, int]:
        """The counters as a dict."""
        with self._lock:
            return {k: v for k, v in vars(self).items() if not k.startswith("_")}
