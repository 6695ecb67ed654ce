"""How many handshakes a server, and each client address, has in progress.

A handshake holds server resources from its start until the client is accepted or
refused, up to ``ConnectionConfig.handshake_timeout``. :class:`ServerSlots` bounds them
on the whole server (``max_handshakes``), :class:`AddressSlots` per client address, so
one address can hold at most its share; further connections wait in a line -- holding
a socket, but no slot, thread or task -- for one of the handshakes to end. A client
that opens many connections at once (a pool warming up, a forwarder opening a flow per
source) is served in turn rather than refused; a line that is full, or a wait longer
than the handshake timeout, closes the connection.

Only connections that proved they speak DTP take these slots, and half-handshakes give
way to them: :class:`dtp.transport.handshake_gate.Admission`, which both servers use, so they
count the same way.
"""

from __future__ import annotations

import enum
import ipaddress
import operator
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = [
    "DEFAULT_MAX_HANDSHAKES",
    "DEFAULT_MAX_HANDSHAKES_PER_ADDRESS",
    "DEFAULT_MAX_WAITING_PER_ADDRESS",
    "SERVER_BUSY",
    "AddressSlots",
    "ServerSlots",
    "Verdict",
    "address_key",
    "check_count",
]

T = TypeVar("T")

DEFAULT_MAX_HANDSHAKES = 32
"""Both servers' default ``max_handshakes``: handshakes in progress at once on the whole
server."""

DEFAULT_MAX_HANDSHAKES_PER_ADDRESS = 8
"""The servers' default cap: a quarter of the blocking server's default
``max_handshakes`` (32), so one address can never hold more than that quarter, yet a
client that opens a few connections at once (a pool, a NAT'd office) is not refused."""

DEFAULT_MAX_WAITING_PER_ADDRESS = 64
"""Connections from one address that may wait for its handshake slots (each holds only
a socket meanwhile); beyond that they are closed at once."""


SERVER_BUSY = "server busy"
"""The reason a server refuses a client with (ConnectionRefused at the client) when it
cannot take it: its application takes connections slower than they come."""


class Verdict(enum.Enum):
    """What :meth:`AddressSlots.take_or_wait` did with a new connection."""

    TAKEN = "taken"  #: a slot is its: start the handshake
    WAITING = "waiting"  #: in its address's line: :meth:`AddressSlots.release` hands it on
    FULL = "full"  #: the line is full: close it


# RFC 6052's well-known prefix: the IPv4 address is the last 32 bits
_NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")


def address_key(host: str) -> str:
    """What the cap counts by for a client's IP address ``host``: the address itself for
    IPv4 (and IPv4-mapped IPv6), the /64 network for IPv6 -- one subscriber usually
    holds a whole /64, so counting single IPv6 addresses would give one client 2**64
    caps -- except the addresses of IPv4 clients behind a NAT64 (``64:ff9b::/96``) or
    Teredo relay, and 6to4 addresses (``2002::/16``: the /48 of one IPv4 address, 65536
    /64s), counted by that IPv4 address. Anything that does not parse is counted as
    given."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])  # (a scope ID: fe80::1%eth0)
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        # IPv4 clients seen through a translator: each is its IPv4 address, not the
        # translator's /64 (one client holding that /64's cap would stall all the others)
        if ip in _NAT64_PREFIX:
            return str(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip.teredo is not None:
            return str(ip.teredo[1])
        if ip.sixtofour is not None:
            return str(ip.sixtofour)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


def _not_count(value: object) -> bool:
    """True unless ``value`` is an int (a bool is no count)."""
    return isinstance(value, bool) or not isinstance(value, int)


def check_count(name: str, value: int) -> None:
    """Refuse a server's count setting ``name`` (``max_handshakes``, ``max_pending``)
    unless ``value`` is an int of at least 1 (ValueError naming it: 0 served nobody, a
    bool is no count, and a float such as 1.5 let two in)."""
    if _not_count(value) or value < 1:
        raise ValueError(f"{name} must be an int of at least 1, not {value!r}")


class AddressSlots(Generic[T]):
    """Handshakes in progress per client address, at most ``cap`` each, and a line of at
    most ``max_waiting`` connections per address waiting for one of them to end.

    Thread-safe: the blocking server takes a slot in the accepting thread and releases
    it in the connection's own thread. Addresses with nothing in progress and nobody
    waiting are dropped, so the tables hold only the addresses with a handshake under
    way (they cannot grow with the number of clients ever seen)."""

    def __init__(self, cap: int, max_waiting: int = DEFAULT_MAX_WAITING_PER_ADDRESS) -> None:
        # ints only, as ServerSlots checks max_handshakes: a NaN passed every comparison
        # here and below, so the cap (or the line's bound) silently never applied
        if _not_count(cap) or cap < 1:
            raise ValueError(
                f"the per-address handshake cap must be an int of at least 1, got {cap!r}"
            )
        try:
            line = operator.index(max_waiting)  # (a listen backlog's int-likes pass)
        except TypeError:
            line = -1
        if line < 0:
            raise ValueError(
                f"the per-address waiting line must be an int of at least 0, got {max_waiting!r}"
            )
        self.cap = cap
        self.max_waiting = line
        self._counts: dict[str, int] = {}
        self._waiting: dict[str, deque[tuple[float, T]]] = {}
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

    def take_or_wait(self, address: str, item: T, deadline: float) -> Verdict:
        """A new connection ``item`` from ``address``: a slot for it (TAKEN), else a
        place in the address's line until ``deadline`` (a monotonic time; WAITING),
        else FULL (nothing kept: the caller closes it)."""
        with self._lock:
            count = self._counts.get(address, 0)
            if count < self.cap:
                self._counts[address] = count + 1
                return Verdict.TAKEN
            line = self._waiting.get(address)
            if line is None:
                if not self.max_waiting:
                    return Verdict.FULL
                line = self._waiting[address] = deque()
            elif len(line) >= self.max_waiting:
                return Verdict.FULL
            line.append((deadline, item))
            return Verdict.WAITING

    def release(self, address: str, now: float = 0.0) -> tuple[T | None, list[T]]:
        """One handshake from ``address`` ended (in any way): ``(next, expired)`` --
        the first waiting connection whose deadline is after ``now``, which now holds the
        slot (the caller starts its handshake), or None when the slot is free; and the
        connections that waited past their deadline (the caller closes them).
        Releasing more than was taken is a bug in the caller: ValueError, as with a
        BoundedSemaphore, rather than a count that silently drifts and lets that
        address past its cap."""
        expired: list[T] = []
        with self._lock:
            count = self._counts.get(address, 0)
            if count <= 0:
                raise ValueError(f"no handshake in progress from {address} to release")
            line = self._waiting.get(address)
            while line:
                deadline, item = line.popleft()
                if deadline > now:
                    if not line:
                        del self._waiting[address]
                    return item, expired  # the slot passes to it: the count stays
                expired.append(item)
            if line is not None:
                del self._waiting[address]
            if count == 1:
                del self._counts[address]
            else:
                self._counts[address] = count - 1
            return None, expired

    def hand_on(
        self,
        address: str,
        start: Callable[[T], bool],
        refuse: Callable[[list[T]], None],
        now: float | None = None,
    ) -> None:
        """:meth:`release` one handshake of ``address`` and hand its slot on: ``refuse``
        (close) the connections that waited past their deadline (``now``; by default
        the monotonic clock's), and ``start`` the next one in line -- which returns
        False when that one cannot start (it is gone, or the server is closing): the
        slot then goes to the one after it."""
        while True:
            waited, expired = self.release(address, time.monotonic() if now is None else now)
            if expired:
                refuse(expired)
            if waited is None or start(waited):
                return

    def purge(
        self, address: str, now: float, gone: Callable[[T], bool] | None = None
    ) -> tuple[list[T], list[T]]:
        """Take out of ``address``'s line the connections that can no longer be served:
        ``(expired, left)`` -- those whose deadline is not after ``now`` (the caller
        closes them, as :meth:`hand_on` refuses them), and those ``gone`` says left
        already (closed by their own handshake timer, say, or by their client). A
        newcomer that finds the line full calls it first: left there, such connections
        held their places until their turn, while live newcomers were turned away. Slots
        are untouched (those waiting hold none of ``address``'s); one pass over the
        line, so cheap. ``gone`` runs under the lock: it must not call back into these
        slots, nor wait."""
        expired: list[T] = []
        left: list[T] = []
        with self._lock:
            line = self._waiting.get(address)
            if not line:
                return expired, left
            kept: deque[tuple[float, T]] = deque()
            for deadline, item in line:
                if deadline <= now:
                    expired.append(item)
                elif gone is not None and gone(item):
                    left.append(item)
                else:
                    kept.append((deadline, item))
            if not kept:
                del self._waiting[address]
            elif len(kept) != len(line):
                self._waiting[address] = kept
        return expired, left

    def drain(self) -> list[T]:
        """Every waiting connection, taken out of the lines (the server is closing)."""
        with self._lock:
            lines, self._waiting = self._waiting, {}
        return [item for line in lines.values() for _, item in line]

    def expire(self, now: float) -> list[T]:
        """Take out of every line the connections whose deadline is not after ``now``
        (the caller closes them): they wait no longer than their deadline for a turn
        that would refuse them anyway."""
        expired: list[T] = []
        with self._lock:
            for address in [a for a, line in self._waiting.items() if line[0][0] <= now]:
                line = self._waiting[address]
                kept = deque(entry for entry in line if entry[0] > now)
                expired += [item for deadline, item in line if deadline <= now]
                if kept:
                    self._waiting[address] = kept
                else:
                    del self._waiting[address]
        return expired

    def next_deadline(self) -> float | None:
        """The earliest deadline of those waiting in the lines' heads (None: nobody
        waits). A line is in arrival order, its deadlines too but for connections of a
        longer handshake timeout (over the ledger carrier), met at their turn."""
        with self._lock:
            heads = [line[0][0] for line in self._waiting.values() if line]
        return min(heads, default=None)

    def in_progress(self, address: str) -> int:
        """Handshakes from ``address`` in progress now."""
        with self._lock:
            return self._counts.get(address, 0)

    def waiting(self, address: str) -> int:
        """Connections from ``address`` waiting for a slot."""
        with self._lock:
            line = self._waiting.get(address)
            return len(line) if line else 0

    def waiting_total(self) -> int:
        """Connections waiting for a slot, from every address."""
        with self._lock:
            return sum(map(len, self._waiting.values()))

    def __len__(self) -> int:
        """Addresses with a handshake in progress."""
        with self._lock:
            return len(self._counts)


class ServerSlots(Generic[T]):
    """Handshakes in progress on a whole server, at most ``cap`` (``max_handshakes``),
    and one line, in arrival order, of at most ``max_waiting`` connections waiting for
    one of them to end: :class:`AddressSlots` with a single address for them all, so
    both count, hand on and expire the same way.

    ``cap`` is checked by :func:`check_count`, as :class:`dtp.socket.DTPServer` checks its
    ``max_handshakes`` (ValueError unless an int of at least 1)."""

    _ALL = ""  # the one "address" every connection counts under

    def __init__(self, cap: int, max_waiting: int) -> None:
        check_count("max_handshakes", cap)
        self._slots: AddressSlots[T] = AddressSlots(cap, max_waiting)

    @property
    def cap(self) -> int:
        """Handshakes in progress at most."""
        return self._slots.cap

    @property
    def max_waiting(self) -> int:
        """Connections waiting for a slot at most."""
        return self._slots.max_waiting

    def take_or_wait(self, item: T, deadline: float) -> Verdict:
        """As :meth:`AddressSlots.take_or_wait`, for the server as a whole."""
        return self._slots.take_or_wait(self._ALL, item, deadline)

    def hand_on(
        self,
        start: Callable[[T], bool],
        refuse: Callable[[list[T]], None],
        now: float | None = None,
    ) -> None:
        """As :meth:`AddressSlots.hand_on`: one handshake ended (ValueError when none
        was in progress)."""
        self._slots.hand_on(self._ALL, start, refuse, now)

    def purge(self, now: float, gone: Callable[[T], bool] | None = None) -> tuple[list[T], list[T]]:
        """As :meth:`AddressSlots.purge`: ``(expired, left)`` taken out of the line."""
        return self._slots.purge(self._ALL, now, gone)

    def drain(self) -> list[T]:
        """Every waiting connection, taken out of the line (the server is closing)."""
        return self._slots.drain()

    def expire(self, now: float) -> list[T]:
        """As :meth:`AddressSlots.expire`."""
        return self._slots.expire(now)

    def next_deadline(self) -> float | None:
        """As :meth:`AddressSlots.next_deadline`."""
        return self._slots.next_deadline()

    @property
    def in_progress(self) -> int:
        """Handshakes in progress now."""
        return self._slots.in_progress(self._ALL)

    @property
    def waiting(self) -> int:
        """Connections waiting for a slot."""
        return self._slots.waiting(self._ALL)
