"""What the two drivers of the :class:`~dtp.messaging._membership.Membership` engine share
(:class:`~dtp.messaging._membership_socket.MemberNode` in threads,
:class:`~dtp.messaging._membership_aio.AsyncMemberNode` on asyncio): their bounds, how a
member is reached (:data:`Route`), and the face that reads the engine without waiting
(:class:`NodeFace`). What waits -- for a lock, a queue, a socket -- stays in each driver."""

from __future__ import annotations

import asyncio
import logging
import queue
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, suppress
from typing import TYPE_CHECKING, Final

from dtp.errors import ConnectionRefused
from dtp.messaging import errors as E
from dtp.messaging._framing import Oversized
from dtp.messaging._membership import Member, Membership, MemberState, Seed
from dtp.messaging._membership_admission import Gate

if TYPE_CHECKING:
    import random

    from dtp.identity.keys import HostIdentity
    from dtp.messaging._membership import MembershipConfig, MembershipEvent
    from dtp.messaging._membership_admission import GroupAdmission

__all__ = ["EVENT_QUEUE", "LINK_QUEUE", "NodeFace", "Route"]

# (each driver logs under its own module's name, as before they shared this)
logger = logging.getLogger("dtp.messaging._membership")

#: Messages waiting for one peer's connection; past it new ones are dropped (stale
#: pings are worth nothing).
LINK_QUEUE: Final = 64
#: Events held for an ``events()`` reader that does not read (older ones dropped).
EVENT_QUEUE: Final = 1024

_Address = tuple[str, int, "bytes | None"]
#: ``route(host, port)``: where to connect to reach a member that advertises ``host:port``
#: (a NAT's or a tunnel's mapping); by default the address itself.
Route = Callable[[str, int], tuple[str, int]]


class NodeFace:
    """The face both member nodes share: this member's record, a seed for others, the
    event callbacks, and where (and for how long idle) a link to a member goes."""

    identity: HostIdentity
    engine: Membership
    config: MembershipConfig
    _gate: Gate
    _route: Route | None
    _callbacks: list[Callable[[MembershipEvent], object]]
    _listeners: Sequence[
        queue.Queue[MembershipEvent | None] | asyncio.Queue[MembershipEvent | None]
    ]
    #: Held while the engine is read (the blocking node's lock; nothing on asyncio).
    _held: AbstractContextManager[object]
    _log: logging.Logger = logger
    #: Addresses that refused this member at the handshake, logged once each.
    _refusals: set[tuple[str, int]]
    dropped: int

    def _face(
        self,
        identity: HostIdentity,
        config: MembershipConfig,
        route: Route | None,
        admission: GroupAdmission | None,
        log: logging.Logger,
    ) -> None:
        """The state both drivers start with (``log``: the driver's own logger)."""
        self.identity = identity
        self._log = log
        self._route = route
        self.config = config
        self._gate = Gate(admission)
        self._refusals = set()
        self._callbacks = []
        #: Messages dropped on the way out (peer unreachable or its queue full).
        self.dropped = 0

    def _engine_at(
        self,
        member_id: str,
        where: tuple[str, int],
        now: float,
        rng: random.Random | None,
        seeds: Sequence[Seed],
    ) -> Membership:
        """The engine of this member, reached at ``where``: alive, at incarnation 0,
        joining through ``seeds``; ``now`` on the driver's clock."""
        me = Member(member_id, where[0], where[1], self.identity.noise_public, 0, MemberState.ALIVE)
        return Membership(me, now, config=self.config, rng=rng, seeds=seeds)

    @property
    def me(self) -> Member:
        """This member's own record."""
        return self.engine.me

    @property
    def refused(self) -> int:
        """Messages refused: malformed, forged (a sender record another key than the
        connection's), oversized, or of members past ``max_members``."""
        return self.engine.refused

    @property
    def refused_peers(self) -> int:
        """Peers refused by the group's admission: at the handshake, or at a first frame
        that proved no group key (nothing they sent was read)."""
        return self._gate.refused

    @property
    def health(self) -> int:
        """The local health score (0: healthy; timeouts are this + 1 times longer)."""
        return self.engine.health

    def members(self, *, include_self: bool = True) -> list[Member]:
        """The live member list (alive and suspect), by id."""
        with self._held:
            return self.engine.members(include_self=include_self)

    def member(self, member_id: str) -> Member | None:
        """The record held of ``member_id`` (dead and left ones for a while too)."""
        with self._held:
            return self.engine.member(member_id)

    def seed(self) -> Seed:
        """A :class:`~dtp.messaging._membership.Seed` for others to join through this member."""
        return Seed(self.me.host, self.me.port, self.me.key)

    def on_event(self, callback: Callable[[MembershipEvent], object]) -> None:
        """Call ``callback(event)`` for every change (on the asyncio node, on its loop; on
        the blocking one, in one of its threads); an exception it raises is logged, and
        the others still run."""
        self._callbacks.append(callback)

    def _tell(self, event: MembershipEvent) -> None:
        """To the callbacks, then each ``events()`` queue (a full one loses its oldest)."""
        for callback in list(self._callbacks):
            try:
                callback(event)
            except Exception:
                self._log.exception("a membership callback failed")
        for listener in list(self._listeners):
            if listener.qsize() >= EVENT_QUEUE:
                with suppress(queue.Empty, asyncio.QueueEmpty):
                    listener.get_nowait()
            listener.put_nowait(event)

    def _where(self, host: str, port: int) -> tuple[str, int]:
        """The address to connect to for a member advertising ``host:port`` (:data:`Route`)."""
        return self._route(host, port) if self._route else (host, port)

    def _link_failed(self, host: str, port: int, exc: Exception) -> None:
        """A link could not carry its message: dropped, as a datagram is lost. A member
        that refuses this one at the handshake is logged once as a warning (the group's
        admission leaves this member out: a configuration to fix)."""
        first = (host, port) not in self._refusals and len(self._refusals) < 1024
        if isinstance(exc, ConnectionRefused) and first:
            self._refusals.add((host, port))
            self._log.warning("membership: %s:%s refused this member: %s", host, port, exc.reason)
            return
        self._log.debug("membership link to %s:%s: %s", host, port, exc)

    def _take(self, body: bytes | Oversized, now: float, key: bytes | None) -> bool:
        """A peer's frame into the engine (under the driver's lock, if it has one):
        False when it was too large to read (refused, counted)."""
        if isinstance(body, Oversized):
            self.engine.refused += 1
            return False
        try:
            self.engine.receive(body, now, peer_key=key)
        except E.MalformedMessage as exc:
            self._log.debug("membership message refused: %s", exc)
        return True

    def _link_idle(self) -> float:
        """Seconds a link to one member stays open with nothing to send."""
        return max(self.config.sync_interval, 10 * self.config.probe_interval) * 2
