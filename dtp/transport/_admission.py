"""What a server does with a new connection before it is served, sans I/O, both servers
alike: the admission policy, the handshake slots it hands out, the replay guard on first
messages, and when the freed heap goes back. docs/protocol.md §8 ("Admission", "Replayed
IK first messages") states the rules and their defaults; both servers drive these
classes with their own clocks and sockets (tests/transport/test_handshake_gate.py,
test_lockout.py, test_reconnect_flood.py, test_replay_guard.py, test_memory_churn.py).

The admission policy
--------------------

A connection is *unproven* until it sent its complete first ``HS_INIT`` record: it costs
its socket and bytes only, no slot, thread, task or Noise state, for at most
:data:`DEFAULT_FIRST_MESSAGE_TIMEOUT`. Beyond the bounds on unproven connections the
oldest gives way rather than the newcomer being refused: a genuine client sends its
first message with its connect, so it is never the oldest for long, while a refusing
bound would let silent connections lock everyone out. An address whose connections keep
ending unproven is suspect (:class:`Strikes`): its connections give way first, and a
suspect newcomer never makes another address's connection give way, so a reconnect
flood churns through its own connections only.

A proven connection takes the handshake slots (:class:`ServerSlots`,
:class:`AddressSlots`), or waits in a line holding only its socket, so a client opening
many connections at once is served in turn rather than refused. When the slots are all
taken, the *half-handshakes* -- waiting for the client's next message, not for the
server's own work -- give way, oldest first (:class:`HalfHandshakes`): over TCP the
address is proven already (no use for QUIC's Retry or WireGuard's cookie reply), so what
must not be spent on a client that stopped is a slot.

The replay guard
----------------

Anyone who recorded an IK message 1 can send it again and be authenticated as that
client (inherent to Noise IK: :mod:`dtp.identity._noise`); a server admitting through
the ledger would then hold the client's ledger connection for the replayer. A genuine
message 1 opens with a fresh ephemeral key that no one else can reuse (Noise's ``es``:
:func:`dtp.identity._ahead.new_ephemeral_key`), so :class:`ReplayGuard` remembers those
keys and refuses one it has seen, the most recent :data:`DEFAULT_CAPACITY` of them.

Accepted connections' keys are kept apart from the others' (refused, failed, replayed),
each pool with its own capacity, so throw-away identities the ledger refuses cannot push
an accepted client's key out. While an admission is being decided (the ledger read, up
to its grace) its key sits in a third set nothing pushes out, bounded by the admissions
in progress; a decided key moves to its verdict's pool, found by looking at the oldest
two keys held each time one comes in or is accepted (the servers do not say when they
refuse): a few dict operations a step.

The heap given back
-------------------

glibc's malloc keeps the pages freed by ended connections between the small objects
that outlive them (80,000 connections left an asyncio server 420 MiB resident, 5-6 MiB
in use); ``malloc_trim(0)`` after a collection of their reference cycles returns them.
A trim walks the heap under malloc's lock (a few ms for a few hundred MiB), so
:class:`HeapRelease` does it at a quiet moment -- no new connection for :data:`QUIET`
seconds after at least :data:`MIN_CHURN`, and once more :data:`AGAIN` seconds later --
or, under steady churn, every :data:`CHURN` connections at most every :data:`INTERVAL`
seconds (bench/compare.py ``churn_memory``).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import enum
import functools
import gc
import ipaddress
import logging
import operator
import struct
import sys
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Generic, Literal, TypeVar

from dtp.errors import finite_float
from dtp.identity._noise import MAX_MESSAGE_SIZE, PATTERN_IK, PATTERN_XX
from dtp.native.reference._limits import RECORD_HEADER_LEN
from dtp.native.types import REC_HS_INIT
from dtp.protocol._state import ConnState
from dtp.protocol.connection import CloseCode

if TYPE_CHECKING:
    from dtp.protocol.connection import Connection

__all__ = [
    "AGAIN",
    "CHURN",
    "DEFAULT_CAPACITY",
    "DEFAULT_FIRST_MESSAGE_TIMEOUT",
    "DEFAULT_MAX_HANDSHAKES",
    "DEFAULT_MAX_HANDSHAKES_PER_ADDRESS",
    "DEFAULT_MAX_WAITING_PER_ADDRESS",
    "ENDINGS",
    "INTERVAL",
    "LOG_EVERY",
    "MAX_STRIKE_SCORE",
    "MAX_STRUCK_ADDRESSES",
    "MIN_CHURN",
    "QUIET",
    "SERVER_BUSY",
    "STRIKE_HALF_LIFE",
    "SUSPECT_STRIKES",
    "AddressSlots",
    "Admission",
    "Ending",
    "FirstMessage",
    "HalfHandshakes",
    "HeapRelease",
    "Outcome",
    "Progress",
    "ReplayGuard",
    "ServerSlots",
    "Strikes",
    "Unproven",
    "Verdict",
    "Why",
    "address_key",
    "check_count",
    "checked_first_message_timeout",
    "first_message_key",
    "release_free_heap",
    "unserved_counts",
]

logger = logging.getLogger(__name__)


# --- the handshake slots ---------------------------------------------------------------

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


@functools.lru_cache(maxsize=4096)
def address_key(host: str) -> str:
    """What the caps count a client's IP address ``host`` by (docs/protocol.md §8): IPv4
    itself (IPv4-mapped IPv6 too); IPv6 by its /64, one subscriber's usual share, but by
    the embedded IPv4 address behind NAT64 (``64:ff9b::/96``), Teredo and 6to4
    (``2002::/16``); anything that does not parse as given. Cached: parsing costs some
    30 us of an accept, and clients come back."""
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
        if not self._waiting:
            # (nobody waits, the usual case: as if looked at under the lock just before
            # a line began -- the reader thread looks several times a connection)
            return expired
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
        if not self._waiting:
            return None  # (as in expire)
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
    """Handshakes in progress on a whole server, at most ``cap`` (``max_handshakes``,
    checked by :func:`check_count`), and one line of at most ``max_waiting`` connections
    waiting for one of them to end: :class:`AddressSlots` with one address for them all,
    so both count, hand on and expire the same way."""

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


# --- the admission policy --------------------------------------------------------------

H = TypeVar("H", bound=Hashable)

DEFAULT_FIRST_MESSAGE_TIMEOUT = 3.0
"""Seconds a new connection has to send its complete first handshake record (a genuine
client sends it with its connect, one round trip after the TCP handshake)."""

_HS_INIT = bytes([REC_HS_INIT])

#: The most bytes of a connection kept before its first record is complete: the record
#: whole (what a client sends behind it before our reply is kept too, up to as much)
_MAX_KEPT = 2 * (RECORD_HEADER_LEN + MAX_MESSAGE_SIZE)


def checked_first_message_timeout(timeout: float) -> float:
    """``timeout`` as the servers take it: a finite number of seconds > 0 (ValueError
    naming the setting, TypeError for what is no number)."""
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(
            f"first_message_timeout must be a number of seconds, not {type(timeout).__name__}"
        )
    value = finite_float(timeout)
    if value is None or not value > 0:
        raise ValueError(f"first_message_timeout must be a finite number > 0, got {timeout!r}")
    return value


class Progress(enum.Enum):
    """What the bytes of a connection so far say about its first record."""

    NEED_MORE = "need more"  #: not complete yet, nothing wrong so far
    COMPLETE = "complete"  #: a well-formed first handshake record is in
    INVALID = "invalid"  #: not DTP: close it, no reply


class FirstMessage:
    """Reads a connection's first record, resumable (fed any split of its bytes) and
    capped: the header is checked as soon as its 12 bytes are in -- kind ``HS_INIT``,
    flags 0, a body of 1 to :data:`~dtp.identity._noise.MAX_MESSAGE_SIZE` bytes -- and the
    body's first byte must name a pattern (IK or XX). Only the framing is looked at;
    the Noise message itself is the handshake's to judge, once a slot is spent on it."""

    __slots__ = ("_buf", "_need", "state")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._need = RECORD_HEADER_LEN  # bytes the record takes, once the header says
        self.state = Progress.NEED_MORE

    @property
    def wanted(self) -> int:
        """Bytes still to come before the record is complete (0 once it is)."""
        return max(self._need - len(self._buf), 0)

    def feed(self, data: bytes | bytearray | memoryview) -> Progress:
        """Take ``data``, the next bytes of the connection: the record's state now.
        Once it is COMPLETE or INVALID, more is kept (up to twice a record, then
        INVALID: a client sends nothing more before our reply) or ignored."""
        if self.state is Progress.INVALID:
            return self.state
        buf = self._buf
        buf += data
        size = len(buf)
        if size > _MAX_KEPT:
            self.state = Progress.INVALID
            return self.state
        if self.state is Progress.COMPLETE:
            return self.state
        # (the kind and flags bytes at once: an HTTP, TLS or SSH client is turned away
        # with its first segment, not after twelve bytes)
        if bytes(buf[:1]) not in (b"", _HS_INIT) or bytes(buf[1:2]) not in (b"", b"\0"):
            self.state = Progress.INVALID
            return self.state
        if size >= RECORD_HEADER_LEN and self._need == RECORD_HEADER_LEN:
            kind, flags, length = struct.unpack_from("<BBH", buf)
            if kind != REC_HS_INIT or flags or not 1 <= length <= MAX_MESSAGE_SIZE:
                self.state = Progress.INVALID
                return self.state
            self._need = RECORD_HEADER_LEN + length
        if size > RECORD_HEADER_LEN and buf[RECORD_HEADER_LEN] not in (PATTERN_IK, PATTERN_XX):
            self.state = Progress.INVALID
        elif self._need > RECORD_HEADER_LEN and size >= self._need:
            self.state = Progress.COMPLETE
        return self.state

    def take(self) -> bytes:
        """Every byte fed so far (the first record and what followed it), for the
        handshake to read first; the reader is emptied."""
        data = bytes(self._buf)
        self._buf = bytearray()
        return data


STRIKE_HALF_LIFE = 30.0
"""Seconds over which an address's strikes (:class:`Strikes`) fall by half."""

SUSPECT_STRIKES = 1.5
"""Strikes at which an address is suspect: one connection that ends unproven is bad
luck (a port scan, a client that gave up); a second one within the half-life is not
(one strike, halved, plus one)."""

MAX_STRIKE_SCORE = 12.0
"""The most strikes an address holds: a flooding address is suspect again within
three half-lives of stopping, however long it flooded."""

MAX_STRUCK_ADDRESSES = 4096
"""Addresses :class:`Strikes` remembers, the least recently struck forgotten first: its
memory does not grow with the addresses that ever connected."""


class Strikes:
    """Per client address, how many of its connections ended unproven recently: a score
    that gains one for each and falls by half every ``half_life`` seconds (at most
    :data:`MAX_STRIKE_SCORE`, for at most ``limit`` addresses). An address with
    :data:`SUSPECT_STRIKES` or more is suspect (:class:`Unproven`). Not thread-safe:
    :class:`Unproven` calls it under its lock."""

    __slots__ = ("_scores", "half_life", "limit")

    def __init__(
        self, half_life: float = STRIKE_HALF_LIFE, limit: int = MAX_STRUCK_ADDRESSES
    ) -> None:
        self.half_life = half_life
        self.limit = max(limit, 1)
        # address -> (score, when it was last struck); insertion order is strike order
        self._scores: dict[str, tuple[float, float]] = {}

    def score(self, key: str, now: float) -> float:
        """``key``'s strikes at ``now``."""
        entry = self._scores.get(key)
        if entry is None:
            return 0.0
        score, then = entry
        if now <= then:
            return score
        decay: float = 0.5 ** ((now - then) / self.half_life)
        return score * decay

    def strike(self, key: str, now: float) -> None:
        """One of ``key``'s connections ended unproven at ``now``."""
        score = min(self.score(key, now) + 1.0, MAX_STRIKE_SCORE)
        entry = self._scores.pop(key, None)  # (to the end: the most recently struck)
        self._scores[key] = (score, now if entry is None else max(now, entry[1]))
        while len(self._scores) > self.limit:
            del self._scores[next(iter(self._scores))]

    def suspect(self, key: str, now: float) -> bool:
        """Whether ``key`` is suspect at ``now``."""
        return self.score(key, now) >= SUSPECT_STRIKES

    def __len__(self) -> int:
        return len(self._scores)


class Unproven(Generic[H]):
    """Connections that have not sent their complete first record yet: at most ``cap``
    on the server and ``per_address`` from one address, each until its deadline; beyond
    a bound the oldest gives way -- its address's, else the oldest of the address
    holding the most, a suspect address's first (:class:`Strikes`), a suspect newcomer
    refused rather than displace another's (docs/protocol.md §8). :meth:`arrived`
    returns those to close. Thread-safe (the blocking server's accepting thread adds,
    its reader thread proves and expires)."""

    def __init__(
        self, cap: int, per_address: int, timeout: float, strikes: Strikes | None = None
    ) -> None:
        self.cap = max(cap, 1)
        self.per_address = max(per_address, 1)
        self.timeout = timeout
        self.strikes = Strikes() if strikes is None else strikes
        # insertion order is age order: the first is the oldest
        self._all: dict[H, tuple[str | None, float]] = {}
        self._by_address: dict[str, dict[H, None]] = {}
        # those that came from a suspect address, oldest first (a part of _all)
        self._suspects: dict[H, None] = {}
        self._lock = threading.Lock()

    def arrived(self, item: H, key: str | None, now: float) -> list[H]:
        """A new connection ``item`` from address ``key`` (None: not capped by address,
        a ledger bridge), its deadline ``now`` plus the timeout: the older connections
        that give way to it (the caller closes them; they are no longer here) -- or,
        last, ``item`` itself, refused: it is suspect, and the server's bound is
        reached with nobody else's suspect connections to give way."""
        gone: list[H] = []
        with self._lock:
            suspect = key is not None and self.strikes.suspect(key, now)
            if key is not None:
                mine = self._by_address.setdefault(key, {})
                while len(mine) >= self.per_address:
                    gone.append(self._drop(next(iter(mine)), now))
            while len(self._all) >= self.cap:
                if self._suspects:
                    gone.append(self._drop(next(iter(self._suspects)), now))
                elif suspect:
                    assert key is not None
                    if not self._by_address.get(key):
                        self._by_address.pop(key, None)  # (made above, for nothing)
                    self.strikes.strike(key, now)
                    gone.append(item)
                    return gone
                else:
                    gone.append(self._drop(self._heaviest_oldest(), now))
            self._all[item] = (key, now + self.timeout)
            if key is not None:
                # (set again: the address's table went with its last connection, when
                # that one gave way above)
                self._by_address.setdefault(key, {})[item] = None
            if suspect:
                self._suspects[item] = None
        return gone

    def left(self, item: H, struck_at: float | None = None) -> bool:
        """``item`` proved itself, failed or closed: not waiting any more -- unproven,
        its address struck, when ``struck_at`` (the time) is given. Whether it was
        (False: it gave way, or expired, already)."""
        with self._lock:
            if item not in self._all:
                return False
            self._drop(item, struck_at)
            return True

    def expired(self, now: float) -> list[H]:
        """The connections whose deadline has passed, taken out (the caller closes
        them; their addresses are struck). Deadlines grow with age, so this looks at
        the oldest ones only."""
        out: list[H] = []
        with self._lock:
            while self._all:
                item, (_, deadline) = next(iter(self._all.items()))
                if deadline > now:
                    break
                out.append(self._drop(item, now))
        return out

    def next_deadline(self) -> float | None:
        """The oldest connection's deadline (None: none waits)."""
        with self._lock:
            if not self._all:
                return None
            return next(iter(self._all.values()))[1]

    def drain(self) -> list[H]:
        """Every waiting connection, taken out (the server is closing)."""
        with self._lock:
            items = list(self._all)
            self._all.clear()
            self._by_address.clear()
            self._suspects.clear()
        return items

    def __len__(self) -> int:
        with self._lock:
            return len(self._all)

    def from_address(self, key: str) -> int:
        """Connections from ``key`` waiting now."""
        with self._lock:
            return len(self._by_address.get(key, ()))

    def _heaviest_oldest(self) -> H:
        """The oldest connection of the address holding the most (lock held); the
        oldest of all when none is capped by address."""
        heaviest = max(self._by_address.values(), key=len, default=None)
        if heaviest:
            return next(iter(heaviest))
        return next(iter(self._all))

    def strike(self, key: str, now: float) -> None:
        """Strike ``key`` for a connection that ended unproven without waiting here."""
        with self._lock:
            self.strikes.strike(key, now)

    def suspects(self) -> int:
        """Connections from suspect addresses waiting now."""
        with self._lock:
            return len(self._suspects)

    def _drop(self, item: H, struck_at: float | None = None) -> H:
        """``item`` out (lock held); its address struck at ``struck_at`` if given."""
        key, _ = self._all.pop(item)
        self._suspects.pop(item, None)
        if key is not None:
            mine = self._by_address[key]
            del mine[item]
            if not mine:
                del self._by_address[key]
            if struck_at is not None:
                self.strikes.strike(key, struck_at)
        return item


class HalfHandshakes(Generic[H]):
    """Handshakes in progress that wait for the client's next message, in the order they
    began: the ones that give way (:meth:`oldest`) when a proven newcomer finds every
    handshake slot taken. A handshake joins as it starts and leaves as the server takes
    over (its client authenticated: the server now decides, on its own time) or as it
    ends. Thread-safe."""

    def __init__(self) -> None:
        self._order: dict[H, None] = {}
        self._lock = threading.Lock()

    def started(self, item: H) -> None:
        with self._lock:
            self._order[item] = None

    def left(self, item: H) -> None:
        """``item``'s client authenticated, or its handshake ended."""
        with self._lock:
            self._order.pop(item, None)

    def give_way(self) -> H | None:
        """The oldest half-handshake, taken out (the caller ends it, and its slot goes
        to the first connection waiting for one); None when there is none."""
        with self._lock:
            if not self._order:
                return None
            item = next(iter(self._order))
            del self._order[item]
            return item

    def __len__(self) -> int:
        with self._lock:
            return len(self._order)


#: Why :class:`Admission` closes a connection (its ``close`` callback's second argument):
#: "busy" -- its line was full, or it waited past its deadline (the servers count it in
#: ``busy_refused``); "gave way" -- an unproven connection, the oldest, made room for a
#: newcomer; "timed out" -- no complete first record within the first-message timeout;
#: "gone" -- its client left while it waited.
Why = Literal["busy", "gave way", "timed out", "gone"]


def unserved_counts(why: Why, count: int) -> tuple[int, int]:
    """What ``count`` connections closed unserved for ``why`` add to a server's
    ``(busy_refused, unproven_closed)``: "busy" counts as busy, "gone" nowhere (its
    client left), anything else -- gave way, timed out -- as unproven, closed."""
    if why == "busy":
        return count, 0
    if why == "gone":
        return 0, 0
    return 0, count


class Outcome(enum.Enum):
    """How a handshake a server ran ended (both servers: :data:`ENDINGS` says what each
    counts and how the connection closes)."""

    ACCEPTED = "accepted"  #: the hooks accepted it: served
    REFUSED = "refused"  #: a hook (or the reservations) refused it
    BUSY = "busy"  #: accepted, but no place in the accept() queue in time
    FAILED = "failed"  #: the handshake failed, timed out, or its client left
    PROOF_REFUSED = "proof refused"  #: a Sui node did not confirm the client's zkLogin proof
    REPLAYED = "replayed"  #: a replayed first message (dtp.transport._admission)
    GAVE_WAY = "gave way"  #: a half-handshake that gave way to a proven newcomer
    CLOSED = "closed"  #: the server closed meanwhile


@dataclass(frozen=True)
class Ending:
    """What a server does with a handshake that ended one way (:data:`ENDINGS`)."""

    failed: int
    """What it adds to the server's ``handshakes_failed``."""
    refused: int
    """What it adds to the server's ``refused``."""
    code: CloseCode | None
    """The code the connection closes with (None: it is served)."""
    reason: str | None
    """The reason sent with it (None: the verdict's own, or none)."""


#: Each :class:`Outcome`'s counters and close. A "busy" refusal counts in
#: ``busy_refused`` as it is decided (before the client can read it), not here; a
#: handshake the server's close ended counts nowhere.
ENDINGS: dict[Outcome, Ending] = {
    Outcome.ACCEPTED: Ending(0, 0, None, None),
    Outcome.REFUSED: Ending(0, 1, CloseCode.REFUSED, None),
    Outcome.BUSY: Ending(0, 0, CloseCode.REFUSED, None),
    Outcome.FAILED: Ending(1, 0, CloseCode.HANDSHAKE_FAILED, "handshake failed"),
    Outcome.PROOF_REFUSED: Ending(1, 0, CloseCode.HANDSHAKE_FAILED, None),
    Outcome.REPLAYED: Ending(1, 0, CloseCode.HANDSHAKE_FAILED, "handshake failed"),
    Outcome.GAVE_WAY: Ending(1, 0, CloseCode.HANDSHAKE_FAILED, "gave way to a waiting client"),
    Outcome.CLOSED: Ending(0, 0, CloseCode.HANDSHAKE_FAILED, "the server is closed"),
}


class Admission(Generic[H]):
    """The whole admission of new connections to a server's handshakes, for both
    servers: :class:`Unproven` first, then the handshake slots -- one of its address's
    (:class:`~dtp.transport._admission.AddressSlots`, None: no per-address cap) and one of
    the server's (:class:`~dtp.transport._admission.ServerSlots`), each with its line of
    connections waiting, in arrival order, until their deadline -- and
    :class:`HalfHandshakes`, which give way when a proven connection has to wait for a
    server slot. The driver owns the connections and the I/O; it tells the engine what
    happened (:meth:`arrived`, :meth:`proven`, :meth:`waiting_for_client`,
    :meth:`authenticated`, :meth:`ended`, :meth:`expire`) and the engine calls back:

    * ``start(item)``: its handshake may begin now (it holds its slots); False when it
      cannot (closed meanwhile, the server closing: the driver closed it), and its
      slots go to the next in line;
    * ``close(items, why)``: close these unserved (:data:`Why`);
    * ``give_way(item)``: end this half-handshake (its slot then goes to the first in
      the server's line, through :meth:`ended`);
    * ``gone(item)``: whether a connection waiting in a line was closed by its client
      (a look, under a lock: it must not wait, nor call back into the engine).

    Callbacks run in the thread that called the engine, never under its locks (but
    ``gone``'s)."""

    def __init__(
        self,
        *,
        max_handshakes: int,
        max_handshakes_per_address: int | None,
        max_waiting_per_address: int,
        max_waiting: int,
        max_unproven: int,
        first_message_timeout: float,
        start: Callable[[H], bool],
        close: Callable[[list[H], Why], None],
        give_way: Callable[[H], None],
        gone: Callable[[H], bool],
    ) -> None:
        self.server_slots: ServerSlots[H] = ServerSlots(max_handshakes, max(max_waiting, 1))
        self.address_slots: AddressSlots[H] | None = (
            None
            if max_handshakes_per_address is None
            else AddressSlots(max_handshakes_per_address, max_waiting_per_address)
        )
        # (what one address could hold of the slots and their line; no per-address cap:
        # nor on the unproven, beyond the server's)
        per_address = max_unproven
        if max_handshakes_per_address is not None:
            # (8 at least: a cap of 1 with no line let a client's second connect make
            # its first give way before the server had read that one's record)
            per_address = max(max_handshakes_per_address + max_waiting_per_address, 8)
        self.unproven: Unproven[H] = Unproven(max_unproven, per_address, first_message_timeout)
        self.half: HalfHandshakes[H] = HalfHandshakes()
        self._max_address_waiting = max(max_waiting, 1)
        self._start = start
        self._close = close
        self._give_way = give_way
        self._gone = gone
        # proven connections: their address key (None: not capped) and deadline
        self._proven: dict[H, tuple[str | None, float]] = {}
        self._lock = threading.Lock()

    # -- before the first record --------------------------------------------------------

    def arrived(self, item: H, key: str | None, now: float) -> bool:
        """A new connection from address ``key`` (None: not capped by address): it waits
        for its first record; the oldest give way to it where it finds no room. False
        when it was refused instead (a suspect address's, :class:`Unproven`): closed
        already ("gave way")."""
        gave_way = self.unproven.arrived(item, key, now)
        if gave_way:
            self._close(gave_way, "gave way")
        return not gave_way or gave_way[-1] is not item

    def dropped(self, item: H, now: float | None = None) -> bool:
        """An unproven connection sent what is not DTP, or closed, at ``now``: forgotten
        (the driver closes it), its address struck. Whether it was still waiting
        (False: closed already, as it gave way or timed out)."""
        return self.unproven.left(item, now)

    def struck(self, key: str | None, now: float) -> None:
        """A connection from ``key`` that never waited among the unproven (what it sent
        with its connect was not DTP, or it hung up at once) ended unproven: ``key`` is
        struck as if it had."""
        if key is not None:
            self.unproven.strike(key, now)

    def expire(self, now: float) -> None:
        """Close the unproven connections whose first-message timeout has passed, and
        those waiting in a line past their deadline ("busy"; the address slots those in
        the server's line held go to the next in their lines)."""
        late = self.unproven.expired(now)
        if late:
            self._close(late, "timed out")
        expired = self.server_slots.expire(now)
        if expired:
            self._close(expired, "busy")
            for item in expired:
                self._forget(item, now)
        if self.address_slots is not None:
            expired = self.address_slots.expire(now)
            if expired:
                self._close(expired, "busy")
                with self._lock:
                    for item in expired:
                        self._proven.pop(item, None)

    def next_deadline(self) -> float | None:
        """When :meth:`expire` has something to do next (None: nothing waits)."""
        first = self.unproven.next_deadline()
        line = self.server_slots.next_deadline()
        if line is not None and (first is None or line < first):
            first = line
        if self.address_slots is not None:
            line = self.address_slots.next_deadline()
            if line is not None and (first is None or line < first):
                first = line
        return first

    # -- proven: the slots ------------------------------------------------------------------

    def proven(
        self, item: H, key: str | None, deadline: float, now: float, *, waited: bool = True
    ) -> bool:
        """``item`` sent its complete first record: its handshake starts once it holds
        its address's slot and one of the server's, at once or in its turn in their
        lines, until ``deadline`` (its accept plus its handshake timeout; then it is
        closed "busy"). A connection that never was unproven comes here directly: one
        whose record came with its connect, read as it was accepted (``waited``
        False), or a ledger bridge's (``key`` None). False when it gave way or timed
        out already (it is closed)."""
        if not self.unproven.left(item) and key is not None and waited:
            return False
        slots = self.address_slots
        if key is not None and slots is not None:
            if slots.waiting(key) >= slots.max_waiting:
                # those that waited past their deadline go first, and those whose client
                # hung up meanwhile: left in line until their turn, they would turn live
                # newcomers away for connections nobody would serve
                expired, left = slots.purge(key, now, self._gone)
                self._close(expired, "busy")
                self._close(left, "gone")
            verdict = slots.take_or_wait(key, item, deadline)
            if verdict is Verdict.WAITING and slots.waiting_total() > self._max_address_waiting:
                # (the addresses' lines together hold at most as many as the server's:
                # 200 addresses' lines of 64 each would hold 12,800 descriptors)
                expired, _ = slots.purge(key, now, lambda waiting: waiting is item)
                self._close(expired, "busy")
                verdict = Verdict.FULL
            if verdict is Verdict.FULL:
                self._close([item], "busy")
                return True
            with self._lock:
                self._proven[item] = (key, deadline)
            if verdict is Verdict.WAITING:
                return True  # started when one of its address's handshakes ends
        else:
            key = None
            with self._lock:
                self._proven[item] = (None, deadline)
        if not self._to_server(item, deadline, now) and key is not None:
            self._release_address(key, now)
        return True

    def _to_server(self, item: H, deadline: float, now: float) -> bool:
        """``item`` holds its address's slot, if any: one of the server's now, or a
        place in its line -- making the oldest half-handshake give way, so that a client
        that proved itself waits for a client that stopped only as long as that one
        takes to end. False when it did not start and will not (its line was full, it
        could not start): its server slot is free again, its address slot the caller's
        to free."""
        slots = self.server_slots
        if slots.waiting >= slots.max_waiting:
            self._purge_server_line(now)
        verdict = slots.take_or_wait(item, deadline)
        if verdict is Verdict.WAITING:
            victim = self.half.give_way()
            if victim is not None:
                self._give_way(victim)
            return True
        if verdict is Verdict.TAKEN:
            if self._start(item):
                return True
            # (closed meanwhile, or no thread or task for it: the slot goes to the next)
            self._release_server_slot(now)
        else:
            self._close([item], "busy")
        with self._lock:
            self._proven.pop(item, None)
        return False

    def _purge_server_line(self, now: float) -> None:
        """Before a newcomer finds the server's line full: out of it go those that
        waited past their deadline (closed "busy") or whose client left ("gone"), their
        address slots freed."""
        expired, left = self.server_slots.purge(now, self._gone)
        self._close(expired, "busy")
        self._close(left, "gone")
        for item in expired + left:
            self._forget(item, now)

    # -- in the handshake -------------------------------------------------------------------

    def waiting_for_client(self, item: H) -> None:
        """``item``'s handshake (started) waits for its client's next message: it gives
        way, oldest first, when proven connections wait for a slot."""
        self.half.started(item)

    def authenticated(self, item: H) -> None:
        """``item``'s client proved its identity: what is left of its handshake is the
        server's own work (its hooks, the ledger admission), never cut short here."""
        self.half.left(item)

    def ended(self, item: H, now: float, start_next: bool = True) -> None:
        """``item``'s handshake ended at ``now``, however (accepted, refused, failed,
        timed out, gave way): its server slot goes to the first in the server's line,
        then its address slot to the first in its address's line. ``start_next`` False
        (the server is going away: an asyncio loop ending): those waiting are closed
        instead."""
        self.half.left(item)
        with self._lock:
            key, _ = self._proven.pop(item, (None, 0.0))
        self._release_server_slot(now, start_next)
        if key is not None:
            self._release_address(key, now, start_next)

    def _forget(self, item: H, now: float) -> None:
        """``item`` leaves the slots unserved: its address slot (if it held one) goes
        to the next in that address's line."""
        with self._lock:
            key, _ = self._proven.pop(item, (None, 0.0))
        if key is not None and self.address_slots is not None:
            self._release_address(key, now)

    def _release_server_slot(self, now: float, start_next: bool = True) -> None:
        """One server slot is free: the first in the server's line still there and
        within its deadline takes it and starts; those past their deadline are closed.
        Each that leaves the line unserved frees its address slot."""
        freed: list[str] = []

        def start(item: H) -> bool:
            if start_next and self._start(item):
                return True
            if not start_next:
                self._close([item], "busy")
            with self._lock:
                key, _ = self._proven.pop(item, (None, 0.0))
            if key is not None:
                freed.append(key)
            return False

        def refuse(expired: list[H]) -> None:
            self._close(expired, "busy")
            with self._lock:
                for item in expired:
                    key, _ = self._proven.pop(item, (None, 0.0))
                    if key is not None:
                        freed.append(key)

        self.server_slots.hand_on(start, refuse, now)
        for key in freed:
            self._release_address(key, now, start_next)

    def _release_address(self, key: str, now: float, start_next: bool = True) -> None:
        """One of ``key``'s slots is free: the next in its line takes it and goes on to
        the server's slots; those past their deadline are closed."""
        slots = self.address_slots
        if slots is None:
            return

        def start(item: H) -> bool:
            if not start_next:
                self._close([item], "busy")
                with self._lock:
                    self._proven.pop(item, None)
                return False
            with self._lock:
                _, deadline = self._proven.get(item, (key, 0.0))
            # (its place in the server's line is taken with its own deadline)
            return self._to_server(item, deadline, now)

        def refuse(expired: list[H]) -> None:
            self._close(expired, "busy")
            with self._lock:
                for item in expired:
                    self._proven.pop(item, None)

        slots.hand_on(key, start, refuse, now)

    # -- the end ------------------------------------------------------------------------

    def drain(self, now: float) -> list[H]:
        """Every connection not in a handshake -- unproven, or waiting in a line -- taken
        out (the server is closing: the driver closes them). The address slots those in
        the server's line held are freed (nobody is left to take them)."""
        items = self.unproven.drain()
        in_line = self.server_slots.drain()
        items += in_line
        if self.address_slots is not None:
            items += self.address_slots.drain()
        for item in in_line:
            self._forget(item, now)
        with self._lock:
            for item in items:
                self._proven.pop(item, None)
        return items

    # -- looks ------------------------------------------------------------------------------

    @property
    def in_progress(self) -> int:
        """Handshakes in progress (slots taken)."""
        return self.server_slots.in_progress

    @property
    def waiting(self) -> int:
        """Connections waiting for one of the server's slots."""
        return self.server_slots.waiting


# --- the replay guard ------------------------------------------------------------------

DEFAULT_CAPACITY: Final = 32768
"""Ephemeral keys a server remembers in each pool, accepted and others (about 6 MiB
each at most; the keys of admissions in progress come on top, see the module's doc).
The memory is bounded by this, not by time: a replay of an accepted
connection's message 1 is refused however late it comes, as long as fewer than this many
accepted IK connections came after the original."""

LOG_EVERY: Final = 60.0
"""Seconds between two log lines about refused replays (a flood gets one a minute)."""

#: States of a server connection whose verdict is still to come (IK: SERVER_DECIDING, then
#: AUTHENTICATING once :meth:`~dtp.protocol.connection.Connection.answer` sent message 2
#: ahead of it).
_UNDECIDED: Final = frozenset({ConnState.SERVER_DECIDING, ConnState.AUTHENTICATING})

#: Keys under decision looked at each time one comes in: more than one, so that the set
#: shrinks back to the admissions in progress (about twice them at most) while it grows.
_SETTLE_PER_SIGHT: Final = 2

# where the ephemeral public key sits in the wire form of message 1: after the
# pattern byte (dtp.identity._noise: "one byte, the pattern id, then the Noise message", and a
# Noise IK message opens with ``e``)
_KEY_START: Final = 1
_KEY_END: Final = _KEY_START + 32


def first_message_key(conn: Connection) -> bytes | None:
    """The initiator's ephemeral public key in the first handshake message ``conn`` (a
    server's connection) read, or None before it read one."""
    message = conn.first_handshake_message
    if message is None or len(message) < _KEY_END:
        return None
    return bytes(message[_KEY_START:_KEY_END])


class ReplayGuard:
    """The ephemeral keys of the IK first messages a server authenticated: at most
    ``capacity`` of the connections it accepted (:meth:`accepted`) and as many of the
    others, each pool forgetting its oldest first, plus those of the connections whose
    admission is still being decided (:meth:`is_replay`), never forgotten meanwhile.

    Thread-safe: the blocking server checks from each connection's own thread. A few
    dict operations per authenticated IK handshake."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        # an int: a NaN passed this check and every "more than capacity" after it, so
        # the pools grew without bound
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(
                f"the replay guard must remember an int of at least 1 keys, got {capacity!r}"
            )
        self.capacity = capacity
        # oldest first, each: a connection's key is held in _deciding from first sight
        # until its verdict, then kept in _accepted or _others (a key given alone, with
        # no connection to watch, goes to _others at once). _deciding refers to the
        # connections weakly: one that is gone was decided, and is not kept alive here
        self._others: OrderedDict[bytes, None] = OrderedDict()
        self._accepted: OrderedDict[bytes, None] = OrderedDict()
        self._deciding: OrderedDict[bytes, weakref.ref[Connection]] = OrderedDict()
        self._lock = threading.Lock()
        #: Replayed first messages refused so far
        self.refused = 0
        self._logged_at: float | None = None
        self._logged_count = 0

    def first_sight(
        self, key: bytes, peer: object = None, deciding: Connection | None = None
    ) -> bool:
        """True, and ``key`` remembered, the first time ``key`` comes; False for a key
        seen already (a replay: counted, and logged at most every :data:`LOG_EVERY`
        seconds, ``peer`` naming the last one). With ``deciding``, the connection whose
        admission now runs, the key is held apart, never pushed out, until that
        connection is decided; without it, it joins the unaccepted pool at once."""
        with self._lock:
            if key not in self._others and key not in self._accepted and key not in self._deciding:
                if deciding is None:
                    self._remember(self._others, key)
                else:
                    self._settle_some()
                    self._deciding[key] = weakref.ref(deciding)
                return True
            self.refused += 1
            now = time.monotonic()
            if self._logged_at is not None and now - self._logged_at < LOG_EVERY:
                return False
            # a flood of replays must not become a flood of log lines: one now, then
            # one a minute with the count since
            self._logged_at = now
            count, self._logged_count = self.refused - self._logged_count, self.refused
        logger.info(
            "refused %d replayed handshake first message(s) (the latest from %s)", count, peer
        )
        return False

    def accept(self, key: bytes) -> None:
        """``key``'s connection was accepted: keep it among the accepted connections'
        keys, which only other accepted connections push out (a key not remembered --
        forgotten meanwhile, or never seen -- is remembered there now)."""
        with self._lock:
            self._deciding.pop(key, None)
            self._others.pop(key, None)
            self._remember(self._accepted, key)
            self._settle_some()  # (drained by acceptances too, not only new handshakes)

    def _remember(self, pool: OrderedDict[bytes, None], key: bytes) -> None:
        pool[key] = None
        if len(pool) > self.capacity:
            pool.popitem(last=False)

    def _settle_some(self) -> None:
        """Look at the oldest keys under decision (:data:`_SETTLE_PER_SIGHT` of them,
        round-robin): one whose connection was decided goes to the pool of its verdict,
        one still undecided to the back of the line. Under the lock."""
        for _ in range(min(_SETTLE_PER_SIGHT, len(self._deciding))):
            key, ref = self._deciding.popitem(last=False)
            conn = ref()
            state = None if conn is None else conn.state
            if state in _UNDECIDED:
                self._deciding[key] = ref
            elif state is ConnState.ESTABLISHED:
                # accepted: accepted(), on its way, keeps it there as well
                self._remember(self._accepted, key)
            else:
                # refused, failed, or gone
                self._remember(self._others, key)

    def is_replay(self, conn: Connection, peer: object = None) -> bool:
        """Whether ``conn``, a server connection whose client just authenticated, came
        from a replayed IK message 1 (see :meth:`first_sight`). Only IK is checked: an
        XX client proves itself over the handshake hash, unique to the session, so its
        replayed messages never authenticate."""
        if conn.state is not ConnState.SERVER_DECIDING:  # (IK, awaiting the verdict)
            return False
        key = first_message_key(conn)
        return key is not None and not self.first_sight(key, peer, deciding=conn)

    def accepted(self, conn: Connection) -> None:
        """The server accepted ``conn`` (after :meth:`is_replay` let it through): its
        IK first message's key joins the accepted connections' (:meth:`accept`); an XX
        connection's has nothing to keep."""
        message = conn.first_handshake_message
        key = first_message_key(conn)
        if message is not None and message[0] == PATTERN_IK and key is not None:
            self.accept(key)

    def __len__(self) -> int:
        """Keys remembered now (both pools, and those under decision)."""
        with self._lock:
            return len(self._others) + len(self._accepted) + len(self._deciding)


# --- the heap given back ---------------------------------------------------------------

QUIET = 1.0
"""Seconds without a new connection that make a quiet moment."""

MIN_CHURN = 64
"""Connections since the last trim that make a quiet moment worth one."""

CHURN = 8192
"""Connections after which, quiet moment or not, the heap is trimmed..."""

INTERVAL = 10.0
"""... but no more often than this (seconds)."""

AGAIN = 3.0
"""Seconds after a quiet moment's trim when the heap is trimmed once more."""


def _load_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or None where there is none (musl, macOS, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    result: Callable[[int], int] = trim
    return result


_TRIM = _load_trim()


def release_free_heap() -> bool:
    """Collect the garbage reference cycles, then return the heap's free pages to the
    system (``malloc_trim(0)``): whether any page was released (False too where the C
    library has no such call). The collection first: a connection's objects refer to
    each other (protocol, session, streams), and freed only by the cyclic collector,
    whose oldest generation runs rarely, they would hold a third of the heap that stays
    resident after churn (20,000 objects after 5,000 connections)."""
    gc.collect()
    if _TRIM is None:
        return False
    return bool(_TRIM(0))


class HeapRelease:
    """When a server trims its heap: told of each new connection (:meth:`connected`),
    it says at each look (:meth:`due`) whether a trim is due, and when to look next
    (:meth:`next_look`). Times are seconds on any monotonic clock, passed in.
    Thread-safe (the blocking server's accepting thread counts, its admission thread
    looks)."""

    def __init__(
        self,
        quiet: float = QUIET,
        min_churn: int = MIN_CHURN,
        churn: int = CHURN,
        interval: float = INTERVAL,
    ) -> None:
        self.quiet = quiet
        self.min_churn = min_churn
        self.churn = churn
        self.interval = interval
        self._since = 0  # connections since the last trim
        self._last_connect = float("-inf")
        self._last_trim = float("-inf")
        # after a quiet moment's trim, one more (:data:`AGAIN` later): the connections
        # still closing at the first -- a linger, a handler's last steps, the threads
        # that served them -- free their memory after it
        self._again: float | None = None
        self._lock = threading.Lock()
        #: Trims done so far
        self.trims = 0

    def connected(self, now: float) -> None:
        """A new connection arrived at ``now``."""
        with self._lock:
            self._since += 1
            self._last_connect = now
            self._again = None  # (the next quiet moment trims again)

    def due(self, now: float) -> bool:
        """Whether to trim now; when True, the trim is counted as done (the caller
        calls :func:`release_free_heap`)."""
        with self._lock:
            quiet = self._since >= self.min_churn and now - self._last_connect >= self.quiet
            busy = self._since >= self.churn and now - self._last_trim >= self.interval
            again = self._again is not None and now >= self._again
            if not (quiet or busy or again):
                return False
            self._again = now + AGAIN if quiet else None
            self._since = 0
            self._last_trim = now
            self.trims += 1
            return True

    def next_look(self, now: float) -> float | None:
        """When :meth:`due` may say yes next (None: not before more connections)."""
        with self._lock:
            looks = [] if self._again is None else [self._again]
            if self._since >= self.min_churn:
                looks.append(self._last_connect + self.quiet)
            if self._since >= self.churn:
                looks.append(self._last_trim + self.interval)
            return max(now, min(looks)) if looks else None
