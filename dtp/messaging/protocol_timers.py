"""The deadlines of an RPC stream: ours time out (and are cancelled at the peer), the
peer's are dropped (it has stopped waiting)."""

from __future__ import annotations

import heapq

from dtp.messaging.protocol_events import (
    RequestCancelled,
    RequestTimedOut,
)
from dtp.messaging.protocol_messages import (
    _MISSING,
    CANCEL,
)
from dtp.messaging.protocol_state import RpcState


class RpcTimers(RpcState):
    """The timer calls of :class:`~dtp.messaging.protocol.RpcProtocol`."""

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should next run (the earliest live deadline)."""
        timers = self._timers
        while timers:
            deadline, side, request_id = timers[0]
            if side == 0:
                if self._outgoing.get(request_id, _MISSING) == deadline:
                    return deadline
            else:
                request = self._incoming.get(request_id)
                if request is not None and request.deadline == deadline:
                    return deadline
            heapq.heappop(timers)  # answered, cancelled or reused: stale
        return None

    def handle_timer(self, now: float) -> None:
        """Expire deadlines up to ``now``: our requests time out (and are cancelled at the
        peer); the peer's requests are dropped (it has stopped waiting)."""
        timers = self._timers
        while timers and timers[0][0] <= now:
            deadline, side, request_id = heapq.heappop(timers)
            if side == 0:
                if self._outgoing.get(request_id, _MISSING) == deadline:
                    del self._outgoing[request_id]
                    self._out.append(self._frame([CANCEL, request_id]))
                    self._event(RequestTimedOut(request_id))
            else:
                request = self._incoming.get(request_id)
                if request is not None and request.deadline == deadline:
                    del self._incoming[request_id]
                    self._event(RequestCancelled(request_id, "deadline"))
