"""The simulated network for blocking code: a relay, in a thread of its own, whose real
sockets on 127.0.0.1 carry a program's TCP connections across the simulated links, in
real time.

    net = SimNetwork(seed=3)
    net.add_hosts("client", "server")
    net.link("client", "server", Link(delay=0.05, loss=0.2, datagrams=True))
    with Relay(net) as relay:
        srv = dtp.socket.create_server(
            ("127.0.0.1", 0), identity=key, config=lossy(key, server=True))
        relay.expose("server", 7000, srv.address)            # the service, on host "server"
        where = relay.address("client", "server", 7000)      # what "client" connects to
        sock = dtp.socket.create_connection(where, server_key=key.noise_public,
                                            config=lossy(client_key))

Each :meth:`Relay.address` is a real listening socket standing for one host's view of a
service: what connects to it comes from that host, crosses the link to the service's
host (delay, bandwidth, loss -- a retransmission delay on a stream link, dropped records
on a datagram link --, partitions), and reaches the real address :meth:`Relay.expose`
named. Partitions, heals and crashes of the network apply to these connections too.

Processes (``dtp daemon``, a Sui node stand-in) are reached the same way: expose their
real address, hand the other side the relay's.

The link model's draws come from the network's seed, but when a write happens and how
the operating system splits it are the program's and the kernel's: runs on the relay do
not replay exactly. The asyncio API on a :class:`VirtualEventLoop` does, and so does
blocking code under :meth:`SimNetwork.run_blocking
<dtp.testing.network.SimNetwork.run_blocking>`.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from typing import Any, TypeVar, cast

from dtp.testing._loops import LoopThread
from dtp.testing.network._network import _CURRENT, SimNetwork

__all__ = ["Relay"]

T = TypeVar("T")


class _Splice(asyncio.Protocol):
    """One side of a splice: what its transport reads, the other side's writes (with
    flow control both ways, a half-close passed on, a failure closing the other)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.other: _Splice | None = None
        self._early: list[bytes] = []
        self._early_eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (a stream transport: uvloop's do not derive from asyncio.Transport, so no
        # isinstance check -- it refused every connection on uvloop)
        self.transport = cast(asyncio.Transport, transport)

    def join(self, other: _Splice) -> None:
        self.other, other.other = other, self
        for side in (self, other):
            early, side._early = side._early, []
            for data in early:
                side.data_received(data)
            if side._early_eof:
                side.eof_received()

    def data_received(self, data: bytes) -> None:
        other = self.other
        if other is None or other.transport is None:
            self._early.append(bytes(data))
            return
        if not other.transport.is_closing():
            other.transport.write(data)

    def eof_received(self) -> bool:
        other = self.other
        if other is None or other.transport is None:
            self._early_eof = True
            return True
        if not other.transport.is_closing():
            if other.transport.can_write_eof():
                other.transport.write_eof()
            else:
                other.transport.close()
        return True  # (closed when the other side closes too)

    def connection_lost(self, exc: Exception | None) -> None:
        other = self.other
        if other is not None and other.transport is not None and not other.transport.is_closing():
            if exc is None:
                other.transport.close()
            else:
                other.transport.abort()

    def pause_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.resume_reading()


class Relay:
    """The relay of ``network`` (see the module docs): started on construction, in a
    thread with its own event loop on the real clock; a context manager, closed by
    :meth:`close`."""

    def __init__(self, network: SimNetwork) -> None:
        self.network = network
        self._thread = LoopThread()
        self._servers: list[asyncio.AbstractServer] = []
        self._addresses: dict[tuple[str, str, int], tuple[str, int]] = {}
        self._run(self._bind())

    async def _bind(self) -> None:
        self.network.bind(asyncio.get_running_loop())

    def _run(self, work: Coroutine[Any, Any, T]) -> T:
        return self._thread.run(work, timeout=60)

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def expose(self, host: str, port: int, target: tuple[str, int]) -> None:
        """Serve ``host``:``port`` of the network by the real address ``target``: each
        connection reaching it is spliced to a new TCP connection to ``target``."""
        network = self.network
        sim_host = network.resolve(host)

        def to_target() -> _Splice:
            near = _Splice()
            far = _Splice()

            async def reach() -> None:
                loop = asyncio.get_running_loop()
                try:
                    await loop.create_connection(lambda: far, *target)
                except OSError:
                    if near.transport is not None:
                        near.transport.abort()
                    return
                near.join(far)

            asyncio.get_running_loop().create_task(reach())
            return near

        async def listen() -> None:
            self._servers.append(await network.listen(sim_host, port, to_target))

        self._run(listen())

    def address(self, client: str, host: str, port: int) -> tuple[str, int]:
        """The real address (``127.0.0.1``, a free port) that stands for ``host``:``port``
        as seen from the host ``client``: a connection made to it comes from ``client``."""
        key = (client, host, port)
        if key in self._addresses:
            return self._addresses[key]
        network = self.network
        source = network.resolve(client)

        def from_client() -> _Splice:
            near = _Splice()

            async def reach() -> None:
                far = _Splice()
                try:
                    await network.connect(host, port, lambda: far)
                except OSError:
                    if near.transport is not None:
                        near.transport.abort()
                    return
                near.join(far)

            context = contextvars.copy_context()
            context.run(_CURRENT.set, source)
            asyncio.get_running_loop().create_task(reach(), context=context)
            return near

        async def listen() -> tuple[str, int]:
            server = await asyncio.get_running_loop().create_server(from_client, "127.0.0.1", 0)
            self._servers.append(server)
            name = server.sockets[0].getsockname()
            return str(name[0]), int(name[1])

        self._addresses[key] = self._run(listen())
        return self._addresses[key]

    def call(self, action: Any, *args: Any) -> Any:
        """Run ``action(*args)`` on the relay's loop (a network's ``partition``, ``heal``
        or ``crash`` while connections run) and return its result."""

        async def run() -> Any:
            return action(*args)

        return self._run(run())

    def close(self) -> None:
        """Stop listening, close the connections and the relay's loop."""
        if self._thread.closed:
            return

        async def stop() -> None:
            for server in self._servers:
                server.close()
            for end in self.network.open_connections():
                end.abort()

        try:
            self._run(stop())
        finally:
            self._thread.close(cancel=True)
