"""The host's runtime firewall, sans I/O: per-client rate limits and the policy refresh.

- :class:`TokenBucket` — a rate in units per second; :meth:`TokenBucket.charge` says
  how long to wait so that what was used stays within the rate. Callers wait *before*
  serving more (and so before returning flow-control credit): back-pressure, never drops.
  A stream's bytes move in pieces of at most :attr:`TokenBucket.take`, each once the
  bucket has refilled for it (:meth:`TokenBucket.wait_for`), so every one-second window
  carries the rate within 15 % (tests/paid/test_rate_smoothness.py).
- :class:`RateLimiter` — one pair of buckets (bytes/s, requests/s) per client address,
  shared by all of that client's connections, as the Host's ``Firewall`` publishes them.
- :class:`HostPolicy` — the Host as last read, re-read every ``refresh_interval``;
  :meth:`HostPolicy.refresh` reports the new limits and which clients are now denied, so
  changes made on the Host reach open connections within one interval.

Times are seconds (any monotonic origin), passed in.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

from dtp.errors import finite_float, shown
from dtp.ledger._objects import Firewall, Host
from dtp.native.reference._varint import varint_size

__all__ = [
    "DEFAULT_MAX_IDLE",
    "ClientBuckets",
    "HostPolicy",
    "PolicyChange",
    "RateLimiter",
    "TokenBucket",
    "datagram_charge",
]


def datagram_charge(size: int) -> int:
    """What a datagram of ``size`` payload bytes costs a bytes/s limit: the payload and
    its DATAGRAM frame's header (docs/protocol.md), else empty datagrams cost nothing."""
    return size + 1 + varint_size(size)


class TokenBucket:
    """``rate`` units per second with a burst of ``burst_seconds`` worth, and of one unit
    at least; rate 0 is unlimited. Usage is charged after the fact and may run the bucket
    into debt, so a large chunk is allowed at once and paid for by the wait that
    follows."""

    def __init__(self, rate: float, now: float, burst_seconds: float = 0.25) -> None:
        # (NaN passed the plain comparisons: a NaN capacity and NaN delays, which every
        # caller's ``delay > 0`` took for no wait at all)
        if not math.isfinite(burst_seconds) or burst_seconds <= 0:
            raise ValueError(f"burst_seconds must be a finite number > 0, got {burst_seconds!r}")
        self.burst_seconds = burst_seconds
        self.rate = _checked_rate(rate)
        self.tokens = self.capacity
        self.stamp = now

    @property
    def capacity(self) -> float:
        if not self.rate:
            return 0.0
        # one unit at least: below 1 / burst_seconds (4 requests/s by default) a single
        # request ran a full bucket into debt, so every request, the first one and those
        # of a client well within the rate, waited (3/4 s each at 1 request/s)
        return max(self.rate * self.burst_seconds, 1.0)

    @property
    def take(self) -> float:
        """The most one move of a stream's bytes takes at once under a limit: a fifth of
        the burst (a twentieth of a second of the rate by default; one unit at least).
        See :meth:`wait_for`."""
        return max(self.capacity / 5, 1.0)

    def take_of(self, amount: int) -> int:
        """How much of a move of ``amount`` units goes in one piece: all of it when
        unlimited or within :attr:`take`, else :attr:`take` (one unit at least)."""
        if not self.rate or amount <= self.take:
            return amount
        return int(self.take)

    def wait_for(self, amount: float, now: float) -> float:
        """Seconds to wait before a stream moves a piece of ``amount`` (at most
        :attr:`take`): until the bucket is within one take of full. So any one-second
        window carries the rate within 15 % (tests/paid/test_rate_smoothness.py), not a
        burst paid for by a long silence."""
        rate = self.rate  # (read once: see delay)
        if rate == 0:
            return 0.0
        self._refill(now)
        take = self.take
        need = max(self.capacity - take, min(amount, take)) - self.tokens
        return 0.0 if need <= 0 else need / rate

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = max(self.stamp, now)

    def full(self, now: float) -> bool:
        """Whether the bucket has refilled by ``now`` (as good as a new one)."""
        rate = self.rate
        if not rate:
            return True
        return self.tokens + max(0.0, now - self.stamp) * rate >= self.capacity

    def set_rate(self, rate: float, now: float) -> None:
        """Change the rate from ``now`` on (tokens beyond the new burst are dropped; a
        bucket that was unlimited starts full, as a new one does)."""
        rate = _checked_rate(rate)
        if not self.rate:
            # from unlimited: a new bucket, or the debt from before the limit was lifted
            # would come back whole with the next one
            self.rate = rate
            self.tokens = self.capacity
            self.stamp = max(self.stamp, now)
            return
        self._refill(now)
        self.rate = rate
        self.tokens = min(self.tokens, self.capacity)

    def delay(self, now: float) -> float:
        """Seconds to wait before using more (0 when there is no debt)."""
        # the rate read once: a set_rate(0) from another thread between the check and
        # the division (the UDP relay's buckets are charged under their own lock, the
        # limits set under another) raised ZeroDivisionError in the relay
        rate = self.rate
        if rate == 0:
            return 0.0
        self._refill(now)
        tokens = self.tokens
        return 0.0 if tokens >= 0 else -tokens / rate

    def charge(self, amount: float, now: float) -> float:
        """Use ``amount`` units at ``now``; returns the seconds to wait before the next
        use (0 while within the rate)."""
        rate = self.rate  # (read once: see delay)
        # (not "amount <= 0": a NaN amount made the tokens NaN, and every delay NaN,
        # which each caller's "delay > 0" took for no wait, until the next refill)
        if rate == 0 or not amount > 0:
            return 0.0
        self._refill(now)
        self.tokens = tokens = self.tokens - amount
        return 0.0 if tokens >= 0 else -tokens / rate


def _checked_rate(rate: float, name: str = "rate") -> float:
    """``rate`` as a float, or ValueError unless a finite number >= 0 (TypeError for
    what is not a number, a bool too); ``name``: the value's, for the error."""
    if isinstance(rate, bool) or not isinstance(rate, int | float):
        raise TypeError(f"{name} must be a number, got {type(rate).__name__}")
    # (an int beyond the float range raised OverflowError, not the ValueError said, out
    # of set_limits and of every new client's buckets)
    value = finite_float(rate)
    if value is None or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {shown(rate)}")
    return value


@dataclass
class ClientBuckets:
    """One client's buckets and how many of its connections use them."""

    bytes: TokenBucket
    requests: TokenBucket
    users: int = 0
    #: Serializes :meth:`admit` and :meth:`charge_bytes` (relays run a thread each).
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def admit(self, sizes: Sequence[int], now: float) -> int:
        """How many of ``sizes`` (datagrams, in order) are served now, each a request of
        :func:`datagram_charge` bytes, while neither bucket is in debt: for traffic that
        cannot wait (UDP), whose caller drops the rest."""
        admitted = 0
        with self.lock:
            for size in sizes:
                if self.bytes.delay(now) > 0 or self.requests.delay(now) > 0:
                    break
                # (charged its payload alone, an empty datagram cost nothing: under a
                # bytes/s limit alone, a client relayed as many as it could send)
                self.bytes.charge(datagram_charge(size), now)
                self.requests.charge(1, now)
                admitted += 1
        return admitted

    def charge_bytes(self, nbytes: int, now: float) -> None:
        """Count ``nbytes`` already sent to the client (e.g. a backend's replies): the
        debt delays what the client may send next."""
        with self.lock:
            self.bytes.charge(nbytes, now)


#: Seconds between sweeps of the idle buckets (made as connections are acquired).
_SWEEP_INTERVAL = 1.0

#: Idle clients' buckets kept at most (about 700 bytes each; a sweep looks at all of
#: them under the limiter's lock). Past it, the client whose last connection ended
#: longest ago is forgotten: its debt forgiven, as a new identity's would be.
DEFAULT_MAX_IDLE = 65536


@dataclass
class RateLimiter:
    """Per-client token buckets (``Firewall.max_bytes_per_sec`` and
    ``max_requests_per_sec``; 0 = unlimited)."""

    bytes_per_sec: int = 0
    requests_per_sec: int = 0
    clients: dict[str, ClientBuckets] = field(default_factory=dict)
    #: Buckets of clients with no connection left, kept until refilled (else a
    #: reconnect forgave the debt), at most ``max_idle``, oldest released first
    idle: dict[str, ClientBuckets] = field(default_factory=dict)
    max_idle: int = DEFAULT_MAX_IDLE
    _next_sweep: float = field(default=float("-inf"), repr=False)

    def __post_init__(self) -> None:
        # checked when made, as set_limits checks them: a bad limit was taken here and
        # refused by the first client's buckets, every acquire failing
        _checked_rate(self.bytes_per_sec)
        _checked_rate(self.requests_per_sec)

    def acquire(self, client: str, now: float) -> ClientBuckets:
        """The buckets of ``client`` (created on its first connection, or kept from its
        last one while they refill)."""
        buckets = self.clients.get(client)
        if buckets is None:
            buckets = self.idle.pop(client, None)
            if buckets is None:
                buckets = ClientBuckets(
                    TokenBucket(self.bytes_per_sec, now), TokenBucket(self.requests_per_sec, now)
                )
            self.clients[client] = buckets
        buckets.users += 1
        if self.idle and now >= self._next_sweep:
            self._sweep(now)
        return buckets

    def release(self, client: str) -> None:
        """One connection of ``client`` ended; after its last one its buckets are idle,
        kept until they have refilled (as good as new, then dropped)."""
        buckets = self.clients.get(client)
        if buckets is not None:
            buckets.users -= 1
            if buckets.users <= 0:
                del self.clients[client]
                self.idle[client] = buckets
                # (a loop, not one drop: a max_idle lowered on a limiter in use was
                # never reached, each release dropping one as it added one)
                while self.idle and len(self.idle) > self.max_idle:
                    del self.idle[next(iter(self.idle))]

    def _sweep(self, now: float) -> None:
        """Drop the idle buckets that have refilled (at most every _SWEEP_INTERVAL)."""
        self._next_sweep = now + _SWEEP_INTERVAL
        for client in [
            c for c, b in self.idle.items() if b.bytes.full(now) and b.requests.full(now)
        ]:
            del self.idle[client]

    def set_limits(self, bytes_per_sec: int, requests_per_sec: int, now: float) -> None:
        """New limits, applied to every client's buckets at once."""
        # checked before anything changes: a bad limit stored, then refused by the first
        # bucket given it, would leave open clients some at the new limit and some at
        # the old, and every new client's buckets would fail to be made
        _checked_rate(bytes_per_sec)
        _checked_rate(requests_per_sec)
        self.bytes_per_sec, self.requests_per_sec = bytes_per_sec, requests_per_sec
        for buckets in (*self.clients.values(), *self.idle.values()):
            # under the buckets' own lock: ClientBuckets.admit looks at both buckets and
            # then charges them, from a relay's thread
            with buckets.lock:
                buckets.bytes.set_rate(bytes_per_sec, now)
                buckets.requests.set_rate(requests_per_sec, now)


@dataclass(frozen=True)
class PolicyChange:
    """What a refresh of the Host found."""

    firewall: Firewall
    limits_changed: bool
    """The per-client rate limits differ from the previous read."""
    denied: frozenset[str]
    """Of the clients with open connections, those the firewall no longer permits."""


class HostPolicy:
    """The host's firewall as last read from the ledger, refreshed every
    ``refresh_interval`` seconds. Who the firewall refuses is the ledger's to say
    (:meth:`Ledger.refused <dtp.ledger.interface.Ledger.refused>`: the lists are
    Tables, looked up client by client), and is given to :meth:`refresh`."""

    def __init__(self, host: Host, now: float, refresh_interval: float = 2.0) -> None:
        # (a NaN passes "<= 0", and the Host would never be read again: due() always False)
        if _checked_rate(refresh_interval, "refresh_interval") == 0:
            raise ValueError("refresh_interval must be positive")
        self.refresh_interval = refresh_interval
        self.firewall = host.firewall
        self.next_refresh = now + refresh_interval

    def due(self, now: float) -> bool:
        """Whether the Host should be read again."""
        return now >= self.next_refresh

    def refresh(self, host: Host, now: float, denied: frozenset[str] = frozenset()) -> PolicyChange:
        """Apply a fresh read of the Host; ``denied``: the clients with open connections
        its firewall refuses now."""
        old = self.firewall
        self.firewall = host.firewall
        self.next_refresh = now + self.refresh_interval
        changed = (old.max_bytes_per_sec, old.max_requests_per_sec) != (
            self.firewall.max_bytes_per_sec,
            self.firewall.max_requests_per_sec,
        )
        return PolicyChange(self.firewall, changed, frozenset(denied))
