"""Refusing replayed Noise IK first messages at a server.

An IK message 1 carries the client's identity proof and is encrypted to the server's
static key alone, so anyone who recorded one can send it again and the server
authenticates the client a second time (inherent to Noise IK: see :mod:`dtp.identity.noise`).
The replayer cannot finish the handshake, but the server decides on it first: a server
admitting through the ledger would reserve the client's ledger connection (one DTP
connection each) for it and hold that reservation until the connection times out, so
the real client, reconnecting meanwhile, is refused.

A genuine message 1 opens with a fresh ephemeral public key (every connect takes a new
one: :func:`dtp.identity.ahead.new_ephemeral_key`), and no one without the matching private
key can make another valid message 1 with it (Noise's ``es``). So a server remembers the
ephemeral keys of the IK first messages it authenticated and refuses one it has seen.
:class:`ReplayGuard` holds the most recent :data:`DEFAULT_CAPACITY` of them, oldest
forgotten first: a replay after its key was forgotten is served as it was before this
guard (held until the connection times out), which a payload timestamp would need a
wire change to stop.

The keys of connections the server went on to accept are kept apart from the others
(refused, failed, replayed), each with its own :data:`DEFAULT_CAPACITY`: authenticating
costs nothing but a fresh static key, so one pool of both would let anyone push a
client's recorded key out with that many throw-away identities the ledger then refuses,
and replay it. Only accepted connections push accepted keys out -- on a server that
admits through the ledger, each one a funded ledger connection of its own.

While a connection's admission is being decided (the ledger read, up to its grace), its
key is held in a third set that nothing pushes out: in the unaccepted pool meanwhile, a
flood of :data:`DEFAULT_CAPACITY` throw-away handshakes in that window would push it out
before :meth:`ReplayGuard.accepted` could keep it, and let its replay through. That set
holds one key per admission in progress, which the blocking server bounds
(``max_handshakes``); a key whose connection was decided -- accepted, refused, failed or
gone -- leaves it for the pool of its verdict, found by looking at the oldest two keys
held each time one comes in or is accepted (the servers do not say when they refuse).
It holds about twice the admissions in progress at their peak, and drains by one or two
keys per handshake after a burst. Each step is a few dict operations.

Used by both servers, so the blocking and asyncio ones refuse the same way.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import OrderedDict
from typing import TYPE_CHECKING, Final

from dtp.identity.noise import PATTERN_IK
from dtp.protocol.state import ConnState

if TYPE_CHECKING:
    from dtp.protocol.connection import Connection

__all__ = ["DEFAULT_CAPACITY", "LOG_EVERY", "ReplayGuard", "first_message_key"]

logger = logging.getLogger(__name__)

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
# pattern byte (dtp.identity.noise: "one byte, the pattern id, then the Noise message", and a
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
