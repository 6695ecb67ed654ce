"""How many handshakes each client address has in progress on a server.

A handshake holds server resources from the TCP accept until the client is accepted
or refused, up to ``ConnectionConfig.handshake_timeout``. A client that opens many
connections and sends nothing (slowloris) would otherwise hold every one of them: in
:class:`dtp.socket.DTPServer` that is every handshake slot (``max_handshakes``), which
stalls the handshakes of everyone else; in :mod:`dtp.aio` a socket and a task each.
:class:`AddressSlots` caps that per address, so one address can hold at most its share
and a connection beyond it is closed at once instead of waiting for a slot.

Used by both servers, so the blocking and asyncio ones count the same way.
"""

from __future__ import annotations

import ipaddress
import threading

__all__ = ["DEFAULT_MAX_HANDSHAKES_PER_ADDRESS", "AddressSlots", "address_key"]

DEFAULT_MAX_HANDSHAKES_PER_ADDRESS = 8
"""The servers' default cap: a quarter of the blocking server's default
``max_handshakes`` (32), so one address can never hold more than that quarter, yet a
client that opens a few connections at once (a pool, a NAT'd office) is not refused."""


def address_key(host: str) -> str:
    """What the cap counts by for a client's IP address ``host``: the address itself for
    IPv4 (and IPv4-mapped IPv6), the /64 network for IPv6 -- one subscriber usually
    holds a whole /64, so counting single IPv6 addresses would give one client 2**64
    caps. Anything that does not parse is counted as given."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])  # (a scope ID: fe80::1%eth0)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class AddressSlots:
    """Handshakes in progress per client address, at most ``cap`` each.

    Thread-safe: the blocking server takes a slot in the accepting thread and releases
    it in the connection's own thread. Addresses with nothing in progress are dropped,
    so the table holds only the addresses with a handshake under way (it cannot grow
    with the number of clients ever seen)."""

    def __init__(self, cap: int) -> None:
        if cap < 1:
            raise ValueError(f"the per-address handshake cap must be at least 1, got {cap}")
        self.cap = cap
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()

    def try_take(self, address: str) -> bool:
        """Count one more handshake from ``address``; False (nothing counted) when it
        already has ``cap`` in progress."""
        with self._lock:
            count = self._counts.get(address, 0)
            if count >= self.cap:
                return False
            self._counts[address] = count + 1
            return True

    def release(self, address: str) -> None:
        """One handshake from ``address`` ended (in any way). Releasing more than was
        taken is a bug in the caller: ValueError, as with a BoundedSemaphore, rather
        than a count that silently drifts and lets that address past its cap."""
        with self._lock:
            count = self._counts.get(address, 0)
            if count <= 0:
                raise ValueError(f"no handshake in progress from {address} to release")
            if count == 1:
                del self._counts[address]
            else:
                self._counts[address] = count - 1

    def in_progress(self, address: str) -> int:
        """Handshakes from ``address`` in progress now."""
        with self._lock:
            return self._counts.get(address, 0)

    def __len__(self) -> int:
        """Addresses with a handshake in progress."""
        with self._lock:
            return len(self._counts)
