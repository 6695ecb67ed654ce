"""The simulated network's connections, as asyncio sees them: :class:`SimTransport`, one
end of a simulated TCP connection (the :class:`asyncio.Transport` interface, flow control
both ways, half-close, close and abort), and :class:`SimServer`, a listener (the
:class:`asyncio.AbstractServer` interface the DTP servers use).

Bytes written go through the link's :class:`~dtp.testing.network._links.Direction`, which
says when they arrive; each arrival is a call scheduled on the loop at that time. What
the kernel would do is modelled where programs can tell: writes are buffered beyond
:data:`SOCKET_BUFFER` bytes not yet read by the peer (``get_write_buffer_size``,
``pause_writing`` past the high-water mark), a reader that pauses holds what arrives,
FIN follows the data, data reaching a closed end resets the sender, and an abort resets
the peer.
"""

from __future__ import annotations

import asyncio
import errno
import heapq
import itertools
import socket
from collections import deque
from collections.abc import Callable
from typing import Any, Final, Protocol

from dtp.testing.network._links import Direction

__all__ = ["SOCKET_BUFFER", "SimServer", "SimSocket", "SimTransport"]

#: Bytes the kernels on both sides hold for a connection (send and receive buffers)
#: before the writer's own buffer grows.
SOCKET_BUFFER: Final = 256 * 1024
_HIGH: Final = 64 * 1024


class _Counts(Protocol):
    """What the ends count in the network's stats (:class:`~dtp.testing.network.NetworkStats`)."""

    resets: int


class Wiring(Protocol):
    """What a transport and a server use of their network
    (:class:`~dtp.testing.network.SimNetwork`)."""

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...
    @property
    def stats(self) -> _Counts: ...

    def count_sent(self, end: SimTransport, chunk: bytes, arrivals: list[float]) -> None: ...

    def forget(self, end: SimTransport) -> None: ...

    def unlisten(self, server: SimServer) -> None: ...


class Addressed(Protocol):
    """A host as its ends name it (:class:`~dtp.testing.network.SimHost`)."""

    @property
    def name(self) -> str: ...
    @property
    def ip(self) -> str: ...


class SimSocket:
    """What ``server.sockets`` and ``get_extra_info('socket')``-like uses see of a
    simulated listener: its name and family."""

    family = socket.AF_INET
    type = socket.SOCK_STREAM

    def __init__(self, name: tuple[str, int]) -> None:
        self._name = name

    def getsockname(self) -> tuple[str, int]:
        return self._name

    def fileno(self) -> int:
        return -1

    def __repr__(self) -> str:
        return f"<SimSocket {self._name[0]}:{self._name[1]}>"


class SimTransport(asyncio.Transport):
    """One end of a simulated connection (see the module docs)."""

    def __init__(
        self,
        network: Wiring,
        host: Addressed,
        local: tuple[str, int],
        remote: tuple[str, int],
        direction: Direction,
    ) -> None:
        super().__init__()
        self._network = network
        self._loop = network.loop
        self.host = host
        self._local, self._remote = local, remote
        self._direction = direction
        self._protocol: asyncio.BaseProtocol | None = None
        self.peer: SimTransport | None = None
        self._closing = False  # close() or abort() called
        self._lost = False  # connection_lost delivered
        self._eof_sent = False
        self._aborted = False
        self._reset_sent = False
        self._reading_paused = False
        # held while reading is paused or no protocol is attached yet: (chunk, counted)
        # pairs, None for the FIN
        self._inbox: deque[tuple[bytes, bool] | None] = deque()
        self._unread = 0  # bytes written that the peer's protocol has not taken yet
        self._high, self._low = _HIGH, _HIGH // 4
        self._write_paused = False
        # what we sent, by arrival: (arrives, order, kind, chunk, counted, leaves), kind
        # "data", "fin" or "rst"; one timer, for the earliest (equal times keep the order
        # they were sent in, which the loop's timer heap would not)
        self._outq: list[tuple[float, int, str, bytes, bool, float]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._last_arrival = self._loop.time()  # (of anything we sent: a FIN comes after)

    # -- asyncio.BaseTransport --------------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {
            "peername": self._remote,
            "sockname": self._local,
            "simulated": True,
            "socket": None,
        }.get(name, default)

    def is_closing(self) -> bool:
        return self._closing or self._lost

    def close(self) -> None:
        """Close: what was written still goes, then FIN; ``connection_lost(None)`` once
        it has left. Data arriving after this resets the peer, as a kernel does."""
        if self._closing or self._lost:
            return
        self._closing = True
        if not self._eof_sent:
            self._send_fin()
        leaves = max(self._loop.time(), self._direction.medium.busy_until)
        self._loop.call_at(leaves, self._connection_lost, None)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    # -- reading ------------------------------------------------------------------------------

    def is_reading(self) -> bool:
        return not self._reading_paused and not self.is_closing()

    def pause_reading(self) -> None:
        self._reading_paused = True

    def resume_reading(self) -> None:
        if not self._reading_paused:
            return
        self._reading_paused = False
        if self._inbox:
            self._loop.call_soon(self._take_inbox)

    def _take_inbox(self) -> None:
        while self._inbox and not self._reading_paused and not self._lost:
            item = self._inbox.popleft()
            if item is None:
                self._eof_arrived()
            else:
                self._deliver(*item)

    # -- writing ------------------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._eof_sent:
            raise RuntimeError("Cannot call write() after write_eof()")
        if self._lost or self._aborted or not data:
            return
        raw = bytes(data)  # (the caller may reuse its buffer: asyncio's transports copy too)
        self._unread += len(raw)
        for chunk in self._direction.chunks(raw):
            self._send_chunk(chunk)
        self._check_high()

    def _send_chunk(self, chunk: bytes) -> None:
        direction = self._direction
        times = direction.send(self._loop.time(), chunk)
        self._network.count_sent(self, chunk, times)
        if not times and direction.link.datagrams:
            self._taken(len(chunk))  # lost on the way: it will not be read
            return
        leaves = direction.medium.busy_until
        for n, when in enumerate(times):
            self._push(when, "data", chunk, n == 0, leaves)

    def _push(
        self, when: float, kind: str, chunk: bytes = b"", counted: bool = True, leaves: float = 0.0
    ) -> None:
        self._last_arrival = max(self._last_arrival, when)
        heapq.heappush(self._outq, (when, next(self._order), kind, chunk, counted, leaves))
        head = self._outq[0][0]
        if self._timer is None or self._timer.when() > head:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(head, self._fire)

    def _fire(self) -> None:
        """Deliver what has arrived by now, in order."""
        self._timer = None
        now = self._loop.time()
        queue = self._outq
        while queue and queue[0][0] <= now:
            _, _, kind, chunk, counted, _ = heapq.heappop(queue)
            if kind == "data":
                self._arrive(chunk, counted)
            elif kind == "fin":
                self._fin_arrives()
            elif self.peer is not None:
                self.peer._reset()
        # (a callback above may have written, and set the timer for its chunk already)
        if queue and (self._timer is None or self._timer.when() > queue[0][0]):
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(queue[0][0], self._fire)

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        if self._eof_sent or self._lost:
            return
        self._send_fin()

    def can_write_eof(self) -> bool:
        return True

    def abort(self) -> None:
        """Close at once: what was not sent yet is dropped, the peer gets a reset, and
        ``connection_lost(None)`` follows on the loop's next pass (as asyncio's)."""
        if self._lost or self._aborted:
            return
        self._closing = self._aborted = True
        now = self._loop.time()
        # what has not left yet never will (what has is on the wire still)
        kept = [entry for entry in self._outq if entry[2] != "data" or entry[5] <= now]
        heapq.heapify(kept)
        self._outq = kept
        self._send_reset()
        self._loop.call_soon(self._connection_lost, None)

    def get_write_buffer_size(self) -> int:
        return max(0, self._unread - SOCKET_BUFFER)

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._low, self._high

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is None:
            high = _HIGH if low is None else 4 * low
        if low is None:
            low = high // 4
        if not high >= low >= 0:
            raise ValueError(f"high ({high!r}) must be >= low ({low!r}) must be >= 0")
        self._high, self._low = high, low
        self._check_high()

    def _check_high(self) -> None:
        size = self.get_write_buffer_size()
        protocol = self._protocol
        if not self._write_paused and size > self._high and protocol is not None:
            self._write_paused = True
            _call(protocol.pause_writing)
        elif self._write_paused and size <= self._low and protocol is not None:
            self._write_paused = False
            _call(protocol.resume_writing)

    def _taken(self, size: int) -> None:
        """The peer took ``size`` of our bytes (or they were lost)."""
        self._unread = max(0, self._unread - size)
        if self._write_paused:
            self._check_high()

    # -- what arrives ------------------------------------------------------------------------

    def _arrive(self, chunk: bytes, first: bool) -> None:
        """Our chunk reaches the peer (``first``: not a duplicate)."""
        peer = self.peer
        if peer is None:
            return
        if peer._lost or peer._closing:
            # a closed end: the data is dropped and the kernel answers with a reset
            if first:
                self._taken(len(chunk))
            if not peer._aborted:
                peer._send_reset()
            return
        if peer._reading_paused or peer._protocol is None:
            peer._inbox.append((chunk, first))
            return
        peer._deliver(chunk, first)

    def _deliver(self, chunk: bytes, counted: bool) -> None:
        """Hand ``chunk`` to our protocol (``counted``: the sender's bytes, not a
        duplicate's, so the sender's buffer shrinks by it)."""
        protocol = self._protocol
        assert protocol is not None
        if isinstance(protocol, asyncio.BufferedProtocol):
            view = memoryview(chunk)
            while view:
                buf = memoryview(protocol.get_buffer(len(view))).cast("B")
                n = min(len(buf), len(view))
                buf[:n] = view[:n]
                protocol.buffer_updated(n)
                view = view[n:]
        else:
            assert isinstance(protocol, asyncio.Protocol)
            protocol.data_received(chunk)
        peer = self.peer
        if counted and peer is not None:
            peer._taken(len(chunk))

    def _send_fin(self) -> None:
        self._eof_sent = True
        if self._direction.held:
            self._direction.fin_held = True  # (sent after what the partition holds)
            return
        now = self._loop.time()
        self._push(max(now + self._direction.link.delay, self._last_arrival), "fin")

    def _fin_arrives(self) -> None:
        peer = self.peer
        if peer is None or peer._lost:
            return
        if peer._reading_paused or peer._protocol is None:
            peer._inbox.append(None)
            return
        peer._eof_arrived()

    def _eof_arrived(self) -> None:
        protocol = self._protocol
        if self._lost or protocol is None:
            return
        keep_open = protocol.eof_received() if isinstance(protocol, asyncio.Protocol) else None
        if not keep_open:
            self.close()

    def _send_reset(self) -> None:
        peer = self.peer
        if peer is None or self._reset_sent:
            return
        self._reset_sent = True
        self._network.stats.resets += 1
        self._push(self._loop.time() + self._direction.link.delay, "rst")

    def _reset(self) -> None:
        """A reset from the peer: ``connection_lost(ConnectionResetError)``."""
        if self._lost:
            return
        self._closing = True
        self._connection_lost(ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"))

    def _connection_lost(self, exc: BaseException | None) -> None:
        if self._lost:
            return
        self._lost = self._closing = True
        self._inbox.clear()
        if not self._direction.held:  # (else the heal still sends it: resend_held)
            self._network.forget(self)
        protocol = self._protocol
        if protocol is not None:
            protocol.connection_lost(exc)  # type: ignore[arg-type]

    def attach(self, protocol: asyncio.BaseProtocol) -> None:
        """Give the end its protocol (``connection_made``), and what arrived before."""
        self._protocol = protocol
        protocol.connection_made(self)
        if self._inbox and not self._reading_paused:
            self._loop.call_soon(self._take_inbox)

    def resend_held(self) -> None:
        """The partition healed: what it held goes now, in order, then the FIN if one
        was sent meanwhile."""
        direction = self._direction
        held = direction.release()
        # (a socket closed meanwhile still sends what it was given, as a kernel does;
        # an aborted one never)
        if held and not self._aborted:
            for chunk in held:
                self._send_chunk(chunk)
        if direction.fin_held:
            direction.fin_held = False
            self._send_fin()
        if self._lost:
            self._network.forget(self)

    def crash(self) -> None:
        """The host went down: our protocol loses the connection, the peer is reset."""
        if self._lost:
            return
        self._aborted = True
        self._send_reset()
        self._connection_lost(ConnectionAbortedError(errno.ECONNABORTED, "the host crashed"))

    def __repr__(self) -> str:
        state = "lost" if self._lost else "closing" if self._closing else "open"
        return f"<SimTransport {self._local} -> {self._remote} {state}>"


def _call(callback: Callable[[], object]) -> None:
    callback()


class SimServer(asyncio.AbstractServer):
    """A listener on ``host``:``port`` of the simulated network."""

    def __init__(
        self,
        network: Wiring,
        host: Addressed,
        port: int,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        start_serving: bool,
    ) -> None:
        self._network = network
        self.host = host
        self.port = port
        self._factory = protocol_factory
        self._serving = start_serving
        self._closed = False
        self._waiting: list[SimTransport] = []
        self._closed_event = asyncio.Event()
        self.accepted = 0

    @property
    def sockets(self) -> tuple[SimSocket, ...]:
        return () if self._closed else (SimSocket((self.host.ip, self.port)),)

    def accept(self, transport: SimTransport) -> None:
        """A connection arrived: served now, or held until :meth:`start_serving`."""
        if not self._serving:
            self._waiting.append(transport)
            return
        self.accepted += 1
        transport.attach(self._factory())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._serving = False
        self._network.unlisten(self)
        for transport in self._waiting:
            transport.abort()
        self._waiting.clear()
        self._closed_event.set()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._network.loop

    def is_serving(self) -> bool:
        return self._serving

    async def start_serving(self) -> None:
        if self._closed or self._serving:
            return
        self._serving = True
        waiting, self._waiting = self._waiting, []
        for transport in waiting:
            self.accept(transport)

    async def serve_forever(self) -> None:
        if self._closed:
            raise RuntimeError(f"server {self!r} is closed")
        await self.start_serving()
        try:
            await self._closed_event.wait()
        except asyncio.CancelledError:
            self.close()
            raise

    async def wait_closed(self) -> None:
        await self._closed_event.wait()

    def __repr__(self) -> str:
        return f"<SimServer {self.host.name} {self.host.ip}:{self.port}>"
