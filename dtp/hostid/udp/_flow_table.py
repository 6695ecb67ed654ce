"""The forwarders' rules over their flows, held once for
:class:`dtp.hostid.udp._blocking.UdpForwarder` and
:class:`dtp.hostid.udp._asyncio.AsyncUdpForwarder` (docs/udp.md), sans-I/O: the
drivers pass ``now`` (``time.monotonic()``) and the counts, and keep the flows."""

from __future__ import annotations

from dtp.hostid.udp._engine import check_count, check_seconds

Source = tuple[str, int]


class FlowTable:
    """A forwarder's settings, checked, and its decisions about flows: which new source
    gets one, how many of its datagrams wait while it connects, when a source whose
    connect failed may try again, which flows are idle. Both forwarders are one (the
    caller serializes access: the blocking one holds its lock)."""

    def __init__(
        self,
        *,
        idle_timeout: float,
        max_sessions: int,
        final_timeout: float,
        max_pending: int,
        retry_after: float,
    ) -> None:
        # before the bind (a None idle_timeout would end the forwarder's thread silently,
        # or spin its sweeper, a float max_pending lose every new source's datagrams
        # uncounted)
        check_seconds("idle_timeout", idle_timeout)
        check_seconds("final_timeout", final_timeout, zero=True)
        check_seconds("retry_after", retry_after, zero=True)
        check_count("max_sessions", max_sessions, 1)
        check_count("max_pending", max_pending, 0)
        self.idle_timeout = idle_timeout
        self.max_sessions = max_sessions
        self.final_timeout = final_timeout
        self.max_pending = max_pending
        self.retry_after = retry_after
        #: Sources whose connect failed, and when they may try again.
        self._retry_at: dict[Source, float] = {}

    def may_open(self, source: Source, flows: int, now: float) -> bool:
        """Whether ``source``, which has no flow, gets one now: fewer than
        ``max_sessions`` flows (``flows``, those connecting included), and no failed
        connect of it in the last ``retry_after`` seconds (each attempt at an
        unreachable service costs a connect timeout)."""
        return flows < self.max_sessions and self._retry_at.get(source, 0.0) <= now

    def room(self, waiting: int, arriving: int) -> int:
        """How many of ``arriving`` datagrams (the first ones) may wait for a flow being
        connected beside the ``waiting`` ones; the rest are dropped and counted."""
        return min(arriving, max(0, self.max_pending - waiting))

    def connect_failed(self, source: Source, now: float) -> None:
        """``source``'s connect (or ``meter_for``) failed: it waits ``retry_after``."""
        self._retry_at[source] = now + self.retry_after

    def sweep(self, now: float) -> None:
        """Forget the failed connects whose wait is over."""
        for source in [s for s, t in self._retry_at.items() if t <= now]:
            del self._retry_at[source]

    def idle(self, last: float, now: float) -> bool:
        """Whether a flow whose latest datagram (either way) passed at ``last`` is idle."""
        return now - last >= self.idle_timeout

    @property
    def sweep_every(self) -> float:
        """Seconds between the forwarders' sweeps for idle flows."""
        return min(1.0, self.idle_timeout)
