"""Which connections a server spends a handshake on: the admission policy both servers
share (docs/protocol.md §8, "Admission"), sans I/O.

A TCP connection proves it speaks DTP by sending its complete first handshake record
(an ``HS_INIT`` of at most :data:`~dtp.identity.noise.MAX_MESSAGE_SIZE` bytes, whose first byte
names a pattern: docs/protocol.md §2, §8). Until then it is *unproven*: it costs its
socket and the bytes it sent, no handshake slot, thread, task or Noise state, and it
has :data:`DEFAULT_FIRST_MESSAGE_TIMEOUT` to finish (nginx's ``client_header_timeout``
and HAProxy's ``timeout http-request`` bound a request's head the same way). At most
``max_unproven`` wait at once on a server and ``per_address`` from one client address
(:func:`~dtp.transport.handshake_slots.address_key`); a newcomer beyond either bound makes the
oldest of them give way, closed -- a genuine client sends its first message with its
connect, so it is never the oldest for long, while a silent one ages (a bound that
refused the newcomer instead would let silent connections lock everyone out, as the
handshake slots they took did: 0 of 75 clients got in).

An address whose connections keep ending unproven -- gave way, timed out, sent what is
not DTP, or hung up before their first record -- is *suspect* (:class:`Strikes`: a
second such end within :data:`STRIKE_HALF_LIFE` seconds of the first; forgiven as they
decay, by half every half-life). Its new connections
wait apart: when the server's bound is reached they give way first, oldest first, and a
suspect newcomer that finds only others' connections waiting is refused at once rather
than make one of them give way. A reconnect flood -- silent connections reopened as
fast as they are closed, thousands a second from a few hundred addresses -- thus churns
through its own connections only, and a genuine client's connect, waiting for the
server to read its first record, is never the one closed (tests/transport/
test_reconnect_flood.py: before, 5 of 200 such connects to the asyncio server and 1 of
200 to the blocking one were).

A proven connection takes the server's handshake slots (:mod:`dtp.transport.handshake_slots`).
When they are all taken, the *half-handshakes* -- connections whose handshake waits for
the client's next message (XX after message 2), not for the server's own work (its
hooks, the ledger admission) -- give way, oldest first, before a proven newcomer is
made to wait: :class:`HalfHandshakes`. On TCP, where QUIC's Retry and WireGuard's
cookie reply (proof of the source address before any state) have no use -- the TCP
handshake proved the address already -- the cost that matters is a slot held by a
client that has stopped, and that is what gives way.

Both servers drive these classes with their own clocks and sockets; they decide
nothing themselves (tests/transport/test_handshake_gate.py, tests/transport/test_lockout.py).
"""

from __future__ import annotations

import enum
import struct
import threading
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, Literal, TypeVar

from dtp.errors import finite_float
from dtp.identity.noise import MAX_MESSAGE_SIZE, PATTERN_IK, PATTERN_XX
from dtp.native.core import RECORD_HEADER_LEN
from dtp.native.types import REC_HS_INIT
from dtp.protocol.connection import CloseCode
from dtp.transport.handshake_slots import AddressSlots, ServerSlots, Verdict

__all__ = [
    "DEFAULT_FIRST_MESSAGE_TIMEOUT",
    "ENDINGS",
    "MAX_STRIKE_SCORE",
    "MAX_STRUCK_ADDRESSES",
    "STRIKE_HALF_LIFE",
    "SUSPECT_STRIKES",
    "Admission",
    "Ending",
    "FirstMessage",
    "HalfHandshakes",
    "Outcome",
    "Progress",
    "Strikes",
    "Unproven",
    "Why",
    "checked_first_message_timeout",
    "unserved_counts",
]

T = TypeVar("T", bound=Hashable)

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
    flags 0, a body of 1 to :data:`~dtp.identity.noise.MAX_MESSAGE_SIZE` bytes -- and the
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
        self._buf += data
        if len(self._buf) > _MAX_KEPT:
            self.state = Progress.INVALID
            return self.state
        if self.state is Progress.COMPLETE:
            return self.state
        buf = self._buf
        # (the kind and flags bytes at once: an HTTP, TLS or SSH client is turned away
        # with its first segment, not after twelve bytes)
        if bytes(buf[:1]) not in (b"", _HS_INIT) or bytes(buf[1:2]) not in (b"", b"\0"):
            self.state = Progress.INVALID
            return self.state
        if len(buf) >= RECORD_HEADER_LEN and self._need == RECORD_HEADER_LEN:
            kind, flags, length = struct.unpack_from("<BBH", buf)
            if kind != REC_HS_INIT or flags or not 1 <= length <= MAX_MESSAGE_SIZE:
                self.state = Progress.INVALID
                return self.state
            self._need = RECORD_HEADER_LEN + length
        if len(buf) > RECORD_HEADER_LEN and buf[RECORD_HEADER_LEN] not in (PATTERN_IK, PATTERN_XX):
            self.state = Progress.INVALID
        elif self._need > RECORD_HEADER_LEN and len(buf) >= self._need:
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


class Unproven(Generic[T]):
    """Connections that have not sent their complete first record yet: at most ``cap``
    on the server and ``per_address`` from one address, each until its deadline. A
    newcomer beyond its address's bound makes that address's oldest give way; beyond the
    server's, the oldest of the address that holds the most (per-source fairness, as
    HAProxy's and nginx's per-source limits: a client that sends its first record with
    its connect holds one at a time, so while any address holds more, it never gives
    way -- not even when the server was too busy to read that record yet).

    Connections from a suspect address (:class:`Strikes`, struck each time one of its
    connections ends here unproven) are held apart: beyond the server's bound the
    oldest of them gives way first, and a suspect newcomer finding none of them is
    refused -- closed at once, never making another's connection give way.
    :meth:`arrived` returns those that gave way (and a refused newcomer), to close.
    Thread-safe (the blocking server's accepting thread adds, its reader thread proves
    and expires)."""

    def __init__(
        self, cap: int, per_address: int, timeout: float, strikes: Strikes | None = None
    ) -> None:
        self.cap = max(cap, 1)
        self.per_address = max(per_address, 1)
        self.timeout = timeout
        self.strikes = Strikes() if strikes is None else strikes
        # insertion order is age order: the first is the oldest
        self._all: dict[T, tuple[str | None, float]] = {}
        self._by_address: dict[str, dict[T, None]] = {}
        # those that came from a suspect address, oldest first (a part of _all)
        self._suspects: dict[T, None] = {}
        self._lock = threading.Lock()

    def arrived(self, item: T, key: str | None, now: float) -> list[T]:
        """A new connection ``item`` from address ``key`` (None: not capped by address,
        a ledger bridge), its deadline ``now`` plus the timeout: the older connections
        that give way to it (the caller closes them; they are no longer here) -- or,
        last, ``item`` itself, refused: it is suspect, and the server's bound is
        reached with nobody else's suspect connections to give way."""
        gone: list[T] = []
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

    def left(self, item: T, struck_at: float | None = None) -> bool:
        """``item`` proved itself, failed or closed: not waiting any more -- unproven,
        its address struck, when ``struck_at`` (the time) is given. Whether it was
        (False: it gave way, or expired, already)."""
        with self._lock:
            if item not in self._all:
                return False
            self._drop(item, struck_at)
            return True

    def expired(self, now: float) -> list[T]:
        """The connections whose deadline has passed, taken out (the caller closes
        them; their addresses are struck). Deadlines grow with age, so this looks at
        the oldest ones only."""
        out: list[T] = []
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

    def drain(self) -> list[T]:
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

    def _heaviest_oldest(self) -> T:
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

    def _drop(self, item: T, struck_at: float | None = None) -> T:
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


class HalfHandshakes(Generic[T]):
    """Handshakes in progress that wait for the client's next message, in the order they
    began: the ones that give way (:meth:`oldest`) when a proven newcomer finds every
    handshake slot taken. A handshake joins as it starts and leaves as the server takes
    over (its client authenticated: the server now decides, on its own time) or as it
    ends. Thread-safe."""

    def __init__(self) -> None:
        self._order: dict[T, None] = {}
        self._lock = threading.Lock()

    def started(self, item: T) -> None:
        with self._lock:
            self._order[item] = None

    def left(self, item: T) -> None:
        """``item``'s client authenticated, or its handshake ended."""
        with self._lock:
            self._order.pop(item, None)

    def give_way(self) -> T | None:
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
    REPLAYED = "replayed"  #: a replayed first message (dtp.transport.replay_guard)
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
    Outcome.REPLAYED: Ending(1, 0, CloseCode.HANDSHAKE_FAILED, "handshake failed"),
    Outcome.GAVE_WAY: Ending(1, 0, CloseCode.HANDSHAKE_FAILED, "gave way to a waiting client"),
    Outcome.CLOSED: Ending(0, 0, CloseCode.HANDSHAKE_FAILED, "the server is closed"),
}


class Admission(Generic[T]):
    """The whole admission of new connections to a server's handshakes, for both
    servers: :class:`Unproven` first, then the handshake slots -- one of its address's
    (:class:`~dtp.transport.handshake_slots.AddressSlots`, None: no per-address cap) and one of
    the server's (:class:`~dtp.transport.handshake_slots.ServerSlots`), each with its line of
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
        start: Callable[[T], bool],
        close: Callable[[list[T], Why], None],
        give_way: Callable[[T], None],
        gone: Callable[[T], bool],
    ) -> None:
        self.server_slots: ServerSlots[T] = ServerSlots(max_handshakes, max(max_waiting, 1))
        self.address_slots: AddressSlots[T] | None = (
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
        self.unproven: Unproven[T] = Unproven(max_unproven, per_address, first_message_timeout)
        self.half: HalfHandshakes[T] = HalfHandshakes()
        self._max_address_waiting = max(max_waiting, 1)
        self._start = start
        self._close = close
        self._give_way = give_way
        self._gone = gone
        # proven connections: their address key (None: not capped) and deadline
        self._proven: dict[T, tuple[str | None, float]] = {}
        self._lock = threading.Lock()

    # -- before the first record --------------------------------------------------------

    def arrived(self, item: T, key: str | None, now: float) -> bool:
        """A new connection from address ``key`` (None: not capped by address): it waits
        for its first record; the oldest give way to it where it finds no room. False
        when it was refused instead (a suspect address's, :class:`Unproven`): closed
        already ("gave way")."""
        gave_way = self.unproven.arrived(item, key, now)
        if gave_way:
            self._close(gave_way, "gave way")
        return not gave_way or gave_way[-1] is not item

    def dropped(self, item: T, now: float | None = None) -> bool:
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
        deadlines = [self.unproven.next_deadline(), self.server_slots.next_deadline()]
        if self.address_slots is not None:
            deadlines.append(self.address_slots.next_deadline())
        return min((d for d in deadlines if d is not None), default=None)

    # -- proven: the slots ------------------------------------------------------------------

    def proven(
        self, item: T, key: str | None, deadline: float, now: float, *, waited: bool = True
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
                # 200 addresses' lines of 64 each were 12,800 descriptors)
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

    def _to_server(self, item: T, deadline: float, now: float) -> bool:
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

    def waiting_for_client(self, item: T) -> None:
        """``item``'s handshake (started) waits for its client's next message: it gives
        way, oldest first, when proven connections wait for a slot."""
        self.half.started(item)

    def authenticated(self, item: T) -> None:
        """``item``'s client proved its identity: what is left of its handshake is the
        server's own work (its hooks, the ledger admission), never cut short here."""
        self.half.left(item)

    def ended(self, item: T, now: float, start_next: bool = True) -> None:
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

    def _forget(self, item: T, now: float) -> None:
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

        def start(item: T) -> bool:
            if start_next and self._start(item):
                return True
            if not start_next:
                self._close([item], "busy")
            with self._lock:
                key, _ = self._proven.pop(item, (None, 0.0))
            if key is not None:
                freed.append(key)
            return False

        def refuse(expired: list[T]) -> None:
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

        def start(item: T) -> bool:
            if not start_next:
                self._close([item], "busy")
                with self._lock:
                    self._proven.pop(item, None)
                return False
            with self._lock:
                _, deadline = self._proven.get(item, (key, 0.0))
            # (its place in the server's line is taken with its own deadline)
            return self._to_server(item, deadline, now)

        def refuse(expired: list[T]) -> None:
            self._close(expired, "busy")
            with self._lock:
                for item in expired:
                    self._proven.pop(item, None)

        slots.hand_on(key, start, refuse, now)

    # -- the end ------------------------------------------------------------------------

    def drain(self, now: float) -> list[T]:
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
