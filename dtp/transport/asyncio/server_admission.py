"""An asyncio server's admission of new connections (:class:`ServerAdmission`: the hooks
its :class:`~dtp.transport.handshake_gate.Admission` calls, and the timers that meet its
deadlines): a connection taken in, its first record read by its :class:`_Arrival` until
its first-message timeout; the lines for the handshake slots, expired on one timer; a
handshake's start, its transport handed to its :class:`Protocol`; what the admission
turns away or makes give way; the heap's trim after churn; and the ledger bridge's way
in (:meth:`handoff`)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from dtp.protocol.connection import ConnectionConfig
from dtp.transport.asyncio.protocol import Protocol, abort, carrier_failure
from dtp.transport.asyncio.server_arrival import _Arrival, _waiting_gone
from dtp.transport.asyncio.server_state import ServerState
from dtp.transport.handshake_gate import ENDINGS, Outcome, Why, unserved_counts
from dtp.transport.handshake_slots import address_key
from dtp.transport.heap_release import release_free_heap
from dtp.transport.session import Session

# (every part of the server logs under its name: one logger to configure)
logger = logging.getLogger("dtp.transport.asyncio.server")


def loop_time(loop: asyncio.AbstractEventLoop | None) -> float:
    """The clock the admission's deadlines are on: its event loop's, which its timers
    run by (``time.monotonic`` on asyncio's loops; a virtual clock on
    dtp.testing.network's), or ``time.monotonic`` before it has one."""
    return loop.time() if loop is not None else time.monotonic()


class ServerAdmission(ServerState):
    """The admission of :class:`~dtp.transport.asyncio.server.DTPServer` (docs/protocol.md §8)."""

    def handoff(self, sock: Any, peername: Any, config: ConnectionConfig) -> None:
        """Serve a carrier connection that came from elsewhere (an :meth:`attach`-ed
        listener's local socket, with the peer's name): it goes through the same
        handshake slots (not capped by address), hooks and callback as a TCP one, with
        ``config``'s handshake timeout. Call it from the event loop."""
        loop = asyncio.get_running_loop()

        def factory() -> _Arrival:
            # by_address=False: the bridge is a local socket, not the client's IP
            arrival = self._protocol_factory(config, by_address=False)
            arrival.peername = peername
            arrival.carrier_failure = carrier_failure(sock)
            return arrival

        async def attach() -> None:
            try:
                await loop.connect_accepted_socket(factory, sock=sock)
            except OSError as exc:
                logger.warning("handed-off connection %s: %s", peername, exc)
                sock.close()

        task = loop.create_task(attach())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _protocol_factory(
        self, config: ConnectionConfig | None = None, *, by_address: bool = True
    ) -> _Arrival:
        """A new connection's protocol until its handshake starts (``by_address``: a TCP
        client, capped by its address and held to its first message; else a ledger
        bridge)."""
        return _Arrival(self, config or self._config, by_address)

    def _arrived(self, arrival: _Arrival) -> None:
        """A new connection (its transport just made): it waits for its first record
        (TCP), or for its slots at once (a ledger bridge)."""
        transport = arrival.transport
        assert transport is not None
        if self._closed.is_set():
            # accepted as close() ran (a ledger bridge handed over just before it, its
            # attach still under way): closed unserved, as the blocking server closes
            # what it accepted once closed, rather than started after the server's end
            transport.close()
            return
        if self._loop is None:
            self._loop = asyncio.get_running_loop()  # (made outside it: its first connection)
        now = loop_time(self._loop)
        # the connection's own handshake timeout: a ledger connection's is longer (its
        # records take ledger transactions)
        arrival.deadline = now + arrival.config.handshake_timeout
        self._heap.connected(now)
        if self._heap_look is None:
            self._look_at_heap()
        if not arrival.by_address:
            transport.pause_reading()  # (its first record is read as its handshake starts)
            self._admission.proven(arrival, None, arrival.deadline, now)
            self._arm_expiry()
            return
        peer = transport.get_extra_info("peername")
        if not peer:
            transport.close()  # the client is gone already
            return
        arrival.key = address_key(str(peer[0]))
        self._admission.arrived(arrival, arrival.key, now)
        self._arm_expiry()

    def _now(self) -> float:
        """The admission's clock (:func:`loop_time`)."""
        return loop_time(self._loop)

    def _proven(self, arrival: _Arrival) -> None:
        """``arrival`` sent its complete first record: on to the handshake slots."""
        self._admission.proven(arrival, arrival.key, arrival.deadline, loop_time(self._loop))
        self._arm_expiry()  # (it may wait in a line, until its deadline)

    def _not_dtp(self, arrival: _Arrival) -> None:
        """``arrival``'s first bytes are not a DTP handshake record: closed, no reply."""
        if self._admission.dropped(arrival, self._now()):
            self.handshakes_failed += 1
        if arrival.transport is not None:
            arrival.transport.close()

    def _arm_expiry(self) -> None:
        """Have the next deadline -- a first-message timeout, a wait in a line -- met on
        time (one timer for them all)."""
        deadline = self._admission.next_deadline()
        loop = self._loop
        if deadline is None or loop is None or not loop.is_running():
            return  # (nothing waits; or the loop is ending: close() closes them)
        delay = max(deadline - loop.time(), 0.0)
        if self._expiry is not None:
            if self._expiry.when() <= loop.time() + delay:
                return  # (it fires first: then it looks again)
            self._expiry.cancel()
        self._expiry = loop.call_later(delay, self._expire)

    def _look_at_heap(self) -> None:
        """Trim the heap when :class:`~dtp.transport.heap_release.HeapRelease` says so, and look
        again when it says (one timer, made only while connections come)."""
        self._heap_look = None
        loop = self._loop
        if loop is None or not loop.is_running() or self._closed.is_set():
            return
        now = loop.time()
        if self._heap.due(now):
            release_free_heap()
        look = self._heap.next_look(now)
        if look is not None:
            self._heap_look = loop.call_later(max(look - now, 0.0), self._look_at_heap)

    def _expire(self) -> None:
        self._expiry = None
        self._admission.expire(loop_time(self._loop))
        self._arm_expiry()

    def _begin(self, arrival: _Arrival) -> bool:
        """The admission's ``start``: ``arrival`` holds its slots; its handshake begins
        (a Session, the transport handed to its :class:`Protocol`, its first record
        read). False when it cannot (the server closed, the client left): closed."""
        transport = arrival.transport
        if self._closed.is_set() or _waiting_gone(arrival) or transport is None:
            if transport is not None:
                transport.close()
            return False
        proto: Protocol | None = None
        try:
            loop = asyncio.get_running_loop()
            session = Session(arrival.config, now=loop.time())
            proto = Protocol(session, loop)
            proto.limit = self._limit
            proto.peername = arrival.peername
            proto.carrier_failure = arrival.carrier_failure
            arrival.proto = proto
            transport.set_protocol(proto)
            proto.connection_made(transport)
            first = arrival.reader.take()
            if first:
                proto.data_received(first)
            transport.resume_reading()
            self._start_serving(arrival)
        except Exception as exc:  # (out of memory for a task, say: the connection ends)
            if proto is not None:
                proto._fail(exc)
            else:
                transport.close()
            return False
        return True

    def _close_unserved(self, arrivals: list[_Arrival], why: Why) -> None:
        """The admission's ``close``: connections it turned away (``why``)."""
        if not arrivals:
            return
        busy, unproven = unserved_counts(why, len(arrivals))
        self.busy_refused += busy
        self.unproven_closed += unproven
        for arrival in arrivals:
            transport = arrival.transport
            if transport is not None:
                logger.debug("closed a connection from %s unserved: %s", arrival.key, why)
                transport.close()

    def _give_way(self, arrival: _Arrival) -> None:
        """The admission's ``give_way``: end a half-handshake, for a proven connection
        waiting for a slot (its task ends it, and its slot goes on)."""
        self.half_handshakes_evicted += 1
        arrival.gave_way = True
        if arrival.proto is not None:
            ending = ENDINGS[Outcome.GAVE_WAY]
            assert ending.code is not None and ending.reason is not None
            abort(arrival.proto, ending.code, ending.reason)
            arrival.proto._notify()
