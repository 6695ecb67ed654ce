"""What the two drivers of the :class:`~dtp.messaging._membership.Membership` engine share
(:class:`~dtp.messaging._membership_socket.MemberNode` in threads,
:class:`~dtp.messaging._membership_aio.AsyncMemberNode` on asyncio): their bounds, how a
member is reached (:data:`Route`), and the face that reads the engine without waiting
(:class:`NodeFace`). What waits -- for a lock, a queue, a socket -- stays in each driver."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

from dtp.messaging._membership import Member, Membership, MembershipConfig, MembershipEvent, Seed

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

    engine: Membership
    config: MembershipConfig
    _route: Route | None
    _callbacks: list[Callable[[MembershipEvent], object]]
    _log: logging.Logger = logger

    @property
    def me(self) -> Member:
        """This member's own record."""
        return self.engine.me

    def seed(self) -> Seed:
        """A :class:`~dtp.messaging._membership.Seed` for others to join through this member."""
        return Seed(self.me.host, self.me.port, self.me.key)

    def on_event(self, callback: Callable[[MembershipEvent], object]) -> None:
        """Call ``callback(event)`` for every change (on the asyncio node, on its loop; on
        the blocking one, in one of its threads); an exception it raises is logged, and
        the others still run."""
        self._callbacks.append(callback)

    def _tell_callbacks(self, event: MembershipEvent) -> None:
        for callback in list(self._callbacks):
            try:
                callback(event)
            except Exception:
                self._log.exception("a membership callback failed")

    def _where(self, host: str, port: int) -> tuple[str, int]:
        """The address to connect to for a member advertising ``host:port`` (:data:`Route`)."""
        return self._route(host, port) if self._route else (host, port)

    def _link_idle(self) -> float:
        """Seconds a link to one member stays open with nothing to send."""
        return max(self.config.sync_interval, 10 * self.config.probe_interval) * 2
