"""Fixtures of the UDP tests: ``backend``, a DNS-like UDP backend, and ``driver``, one
test body for both UDP drivers, the blocking one (:func:`relay_udp`, :class:`UdpForwarder`,
in threads) and the asyncio one (:func:`relay_udp_async`, :class:`AsyncUdpForwarder`, on an
event loop in a thread of its own). Both pump the same engine (dtp.hostid.udp._engine);
these tests pin that they behave alike on real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, Protocol, TypeVar

import pytest

import dtp.aio
import dtp.socket
from dtp.hostid.udp import UdpForwarder, UdpStats, relay_udp
from dtp.hostid.udp._asyncio import AsyncUdpForwarder, _Flow, relay_udp_async
from dtp.hostid.udp._blocking import _Flow as _BlockingFlow
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import ConnectionConfig
from dtp.testing._loops import LoopThread
from tests.udp.world import DnsLikeBackend

T = TypeVar("T")

#: How long a driver's setup or teardown may take before the test fails.
BOUND = 30.0


class Forwarder(Protocol):
    """What the tests read of either forwarder."""

    address: tuple[str, int]
    stats: UdpStats

    @property
    def sessions(self) -> int: ...


class UdpDriver:
    """Runs relays and forwarders on one of the two drivers."""

    name: str
    loop_errors: list[dict[str, Any]]

    def serve_relay(
        self,
        identity: HostIdentity,
        backend: tuple[str, int],
        relay_kw: Callable[[], dict[str, Any]],
        ended: list[float],
        config: ConnectionConfig | None = None,
        raised: list[BaseException] | None = None,
        returned: list[UdpStats] | None = None,
    ) -> contextlib.AbstractContextManager[tuple[str, int]]:
        """A DTP server whose every connection is relayed to ``backend`` with the
        keywords ``relay_kw()`` gives (one call per connection); each relay's end is
        appended to ``ended`` (``time.monotonic()``), what a relay raised to ``raised``
        (when given; else it propagates), and what it returned to ``returned`` (when
        given). Yields the server's address."""
        raise NotImplementedError

    def event(self) -> tuple[object, Callable[[], None]]:
        """A ``finish`` event for this driver's relay, and a thread-safe way to set it."""
        raise NotImplementedError

    def forwarder(
        self,
        connect: Callable[[], dtp.socket.DTPSocket],
        address: tuple[str, int],
        fail: Callable[[], None] | None = None,
        **kw: Any,
    ) -> contextlib.AbstractContextManager[Forwarder]:
        """A forwarder on 127.0.0.1 whose flows connect to the DTP server at
        ``address`` (``connect`` is the blocking way to; the asyncio driver opens the
        same connection with :func:`dtp.aio.open_connection`). ``fail``, when given,
        runs first in each connect: what it raises is that connect's failure."""
        raise NotImplementedError

    def close(self, fwd: Forwarder) -> None:
        """Close a forwarder :meth:`forwarder` made (its ``close()``), ahead of the end
        of its ``with`` (which closes it again: a no-op)."""
        raise NotImplementedError

    def abort_flows(self, fwd: Forwarder) -> None:
        """Abort the connections of a forwarder's open flows (a close would wait for
        what a stalled peer never reads)."""
        raise NotImplementedError

    def send_on_ended_flow(
        self, address: tuple[str, int], server_key: bytes, batch: list[bytes]
    ) -> tuple[int, int, int]:
        """Send ``batch`` on a forwarder's flow whose connection (to the relay at
        ``address``) has ended; returns the forwarder's ``dropped_no_session`` and what
        the flow counts as sent (datagrams, bytes)."""
        raise NotImplementedError


@contextlib.contextmanager
def _noted(ended: list[float], raised: list[BaseException] | None) -> Iterator[None]:
    """Around a relay in a driver's server: its end appended to ``ended``, what it
    raised to ``raised`` (when given; else it propagates)."""
    try:
        yield
    except BaseException as exc:
        if raised is None:
            raise
        raised.append(exc)
    finally:
        ended.append(time.monotonic())


class BlockingDriver(UdpDriver):
    name = "blocking"

    # (loop_errors: none here, a blocking driver's threads have no loop to raise into)
    def __init__(self) -> None:
        self.loop_errors: list[dict[str, Any]] = []

    @contextlib.contextmanager
    def serve_relay(
        self,
        identity: HostIdentity,
        backend: tuple[str, int],
        relay_kw: Callable[[], dict[str, Any]],
        ended: list[float],
        config: ConnectionConfig | None = None,
        raised: list[BaseException] | None = None,
        returned: list[UdpStats] | None = None,
    ) -> Iterator[tuple[str, int]]:
        def handler(sock: dtp.socket.DTPSocket) -> None:
            with _noted(ended, raised):
                stats = relay_udp(sock, backend, **relay_kw())
                if returned is not None:
                    returned.append(stats)

        server = dtp.socket.create_server(("127.0.0.1", 0), identity=identity, config=config)
        serving = threading.Thread(target=server.serve_forever, args=(handler,), daemon=True)
        serving.start()
        try:
            yield server.address
        finally:
            server.close()
            serving.join(BOUND)

    def event(self) -> tuple[object, Callable[[], None]]:
        finish = threading.Event()
        return finish, finish.set

    @contextlib.contextmanager
    def forwarder(
        self,
        connect: Callable[[], dtp.socket.DTPSocket],
        address: tuple[str, int],
        fail: Callable[[], None] | None = None,
        **kw: Any,
    ) -> Iterator[Forwarder]:
        def connecting() -> dtp.socket.DTPSocket:
            if fail is not None:
                fail()
            return connect()

        with UdpForwarder(("127.0.0.1", 0), connect if fail is None else connecting, **kw) as fwd:
            yield fwd

    def close(self, fwd: Forwarder) -> None:
        assert isinstance(fwd, UdpForwarder)
        fwd.close()

    def abort_flows(self, fwd: Forwarder) -> None:
        assert isinstance(fwd, UdpForwarder)
        with fwd._lock:
            socks = [flow.sock for flow in fwd._flows.values()]
        for sock in socks:
            sock.abort()

    def send_on_ended_flow(
        self, address: tuple[str, int], server_key: bytes, batch: list[bytes]
    ) -> tuple[int, int, int]:
        no_connect: Any = None
        with UdpForwarder(("127.0.0.1", 0), no_connect) as fwd:
            sock = dtp.socket.create_connection(address, server_key=server_key, timeout=5)
            sock.close()
            flow = _BlockingFlow(("127.0.0.1", 9), sock, None, fwd.stats)
            with flow.lock:
                assert fwd._send_locked(flow, batch) is False
            return fwd.stats.dropped_no_session, flow.sent_datagrams, flow.sent_bytes


class AsyncioDriver(UdpDriver):
    name = "asyncio"

    def __init__(self) -> None:
        self._loop = LoopThread(catch_errors=True)
        self.loop = self._loop.loop
        #: What the loop met that no code caught ("Exception in callback ...").
        self.loop_errors = self._loop.errors

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        """Run ``work`` on the driver's loop and return its result."""
        return self._loop.run(work, BOUND)

    def shut(self) -> None:
        """Stop the loop (what a test left running on it is cancelled first)."""
        self._loop.close(cancel=True, timeout=BOUND)

    @contextlib.contextmanager
    def serve_relay(
        self,
        identity: HostIdentity,
        backend: tuple[str, int],
        relay_kw: Callable[[], dict[str, Any]],
        ended: list[float],
        config: ConnectionConfig | None = None,
        raised: list[BaseException] | None = None,
        returned: list[UdpStats] | None = None,
    ) -> Iterator[tuple[str, int]]:
        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            with _noted(ended, raised):
                stats = await relay_udp_async(reader, writer, backend, **relay_kw())
                if returned is not None:
                    returned.append(stats)

        server = self.run(
            dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity, config=config)
        )

        async def stop() -> None:
            server.close()
            await server.wait_closed()

        try:
            yield server.address
        finally:
            self.run(stop())

    def event(self) -> tuple[object, Callable[[], None]]:
        async def make() -> asyncio.Event:
            return asyncio.Event()

        finish = self.run(make())
        return finish, functools.partial(self.loop.call_soon_threadsafe, finish.set)

    @contextlib.contextmanager
    def forwarder(
        self,
        connect: Callable[[], dtp.socket.DTPSocket],
        address: tuple[str, int],
        fail: Callable[[], None] | None = None,
        **kw: Any,
    ) -> Iterator[Forwarder]:

        async def open_flow() -> tuple[dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter]:
            if fail is not None:
                fail()
            if not isinstance(connect, functools.partial):
                connect()  # (a connect no flow may call: it raises)
                raise AssertionError("connect: a partial of create_connection")
            # the same server key and timeout as the blocking connect
            return await dtp.aio.open_connection(*address, **connect.keywords)

        fwd = self.run(AsyncUdpForwarder.start(("127.0.0.1", 0), open_flow, **kw))
        try:
            yield fwd
        finally:
            self.run(fwd.close())

    def close(self, fwd: Forwarder) -> None:
        assert isinstance(fwd, AsyncUdpForwarder)
        self.run(fwd.close())

    def abort_flows(self, fwd: Forwarder) -> None:
        assert isinstance(fwd, AsyncUdpForwarder)

        async def abort() -> None:
            for flow in list(fwd._flows.values()):
                if flow.writer is not None:
                    flow.writer.abort()

        self.run(abort())

    def send_on_ended_flow(
        self, address: tuple[str, int], server_key: bytes, batch: list[bytes]
    ) -> tuple[int, int, int]:
        async def main() -> tuple[int, int, int]:
            fwd = await AsyncUdpForwarder.start(("127.0.0.1", 0), None)  # type: ignore[arg-type]
            try:
                _, writer = await dtp.aio.open_connection(
                    *address, server_key=server_key, timeout=5
                )
                writer.close()
                await writer.wait_closed()
                flow = _Flow(("127.0.0.1", 9))
                flow.writer = writer
                fwd._send(flow, batch)
                return fwd.stats.dropped_no_session, flow.sent_datagrams, flow.sent_bytes
            finally:
                await fwd.close()

        return self.run(main())


@pytest.fixture(params=["blocking", "asyncio"])
def driver(request: pytest.FixtureRequest) -> Iterator[UdpDriver]:
    """Each test that takes it runs on both UDP drivers."""
    if request.param == "blocking":
        yield BlockingDriver()
        return
    made = AsyncioDriver()
    try:
        yield made
    finally:
        made.shut()


@pytest.fixture
def backend() -> Iterator[DnsLikeBackend]:
    """A DNS-like UDP backend on 127.0.0.1; closed after the test."""
    b = DnsLikeBackend()
    yield b
    b.close()
