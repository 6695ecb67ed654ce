"""Fixtures of the messaging tests: ``served`` (a blocking RPC server), ``mesh`` (pub/sub
nodes), ``world`` (a broadcast), and ``rpc_driver``, which runs one RPC test on the blocking
driver (``RpcClient``/``RpcServer``) and on the asyncio one (``AsyncRpcClient``/
``AsyncRpcServer``, on an event loop in a thread of its own), both over real DTP connections
on 127.0.0.1, with the same handlers (``make_rpc``'s)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import pytest

import dtp.aio
import dtp.socket
from dtp.identity.keys import HostIdentity
from dtp.ledger.local import LocalLedger
from dtp.messaging.rpc import AsyncRpcClient, AsyncRpcServer
from dtp.testing._loops import LoopThread
from tests.messaging.broadcast_world import PRICE, SLOT_MS, World
from tests.messaging.mesh import Mesh
from tests.messaging.rpc_world import Served, make_rpc


@pytest.fixture
def served() -> Iterator[Served]:
    """A blocking RPC server (``make_rpc``) on a DTP server; closed after the test."""
    s = Served(make_rpc())
    yield s
    s.close()


@pytest.fixture
def mesh() -> Iterator[Mesh]:
    """Five pub/sub nodes linked in a ring with two chords; closed after the test."""
    # a ring plus chords: every message reaches most nodes over two or more paths
    m = Mesh(5, [(0, 1), (1, 2), (2, 3), (3, 4), (4, 0), (0, 2), (1, 3)])
    yield m
    m.close()


@pytest.fixture
def world() -> Iterator[World]:
    """A broadcast (``PRICE`` a slot of ``SLOT_MS``) on an in-memory LocalLedger."""
    ledger = LocalLedger(":memory:", clock_ms=0)
    caster = HostIdentity.generate()
    fans = [HostIdentity.generate() for _ in range(2)]
    for fan in fans:
        ledger.faucet(fan.sui_address, 10_000)
    b_id = ledger.create_broadcast(caster, "radio", PRICE, SLOT_MS)
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=caster)
    w = World(ledger, caster, fans, b_id, server, [])
    yield w
    for sock in w.socks:
        sock.abort("test over")
    server.close()


class Caller(Protocol):
    """What a test calls on either driver's client (the asyncio one's calls are run on
    its loop and waited for)."""

    def call(self, method: str, params: Any = None, **kw: Any) -> Any: ...

    def start(self, method: str, params: Any = None, **kw: Any) -> Pending: ...

    def close(self) -> None: ...


class Pending(Protocol):
    """A call started and not waited for (an RpcCall, or the asyncio call's future)."""

    def result(self, timeout: float | None = None) -> Any: ...


class Endpoint(Protocol):
    """A server answering RPC (``make_rpc``'s handlers) on one driver."""

    identity: HostIdentity

    def connect(self, **kw: Any) -> Caller: ...

    def close(self) -> None: ...


class _AsyncCaller:
    def __init__(self, loop: LoopThread, client: AsyncRpcClient, writer: Any) -> None:
        self._loop, self.client, self._writer = loop, client, writer

    def call(self, method: str, params: Any = None, **kw: Any) -> Any:
        return self._loop.run(self.client.call(method, params, **kw))

    def start(self, method: str, params: Any = None, **kw: Any) -> Pending:
        return self._loop.submit(self.client.call(method, params, **kw))

    def close(self) -> None:
        async def close() -> None:
            await self.client.close()
            self._writer.close()
            await self._writer.wait_closed()

        self._loop.run(close())


class AsyncServed:
    """``Served`` for the asyncio driver: an AsyncRpcServer with ``make_rpc``'s
    handlers ("sleep" awaits rather than blocks the loop; no "wait_cancel", which waits
    on a thread's Event) and its options ``**kw``, on a loop thread."""

    def __init__(self, **kw: Any) -> None:
        kw.pop("workers", None)  # (the blocking server's pool: each request is a task here)
        self.identity = HostIdentity.generate()
        self.rpc = AsyncRpcServer(**kw)
        for name, (fn, wants_ctx) in make_rpc(workers=0).methods.items():
            if name not in ("sleep", "wait_cancel"):  # (they block: threads only)
                self.rpc.register(name, fn, context=wants_ctx)

        async def sleep_then(p: list[Any]) -> Any:
            await asyncio.sleep(p[0])
            return p[1]

        self.rpc.register("sleep", sleep_then)
        self._loop = LoopThread()
        self._callers: list[_AsyncCaller] = []

        async def start() -> Any:
            return await dtp.aio.start_server(
                self.rpc.serve_stream, "127.0.0.1", 0, identity=self.identity
            )

        self.server = self._loop.run(start())

    def connect(self, **kw: Any) -> Caller:
        prepay = kw.get("prepay")
        host, port = self.server.sockets[0].getsockname()[:2]

        async def connect() -> _AsyncCaller:
            reader, writer = await dtp.aio.open_connection(
                host,
                port,
                server_key=self.identity.noise_public,
                identity=None if prepay is None else prepay.identity,
            )
            return _AsyncCaller(self._loop, AsyncRpcClient(reader, writer, **kw), writer)

        caller = self._loop.run(connect())
        self._callers.append(caller)
        return caller

    def close(self) -> None:
        try:
            for caller in self._callers:
                caller.close()

            async def stop() -> None:
                self.server.close()
                await self.server.wait_closed()

            self._loop.run(stop())
        finally:
            self._loop.close()


#: name -> how a test gets a server on that driver (``make_rpc``'s handlers, options)
DRIVERS: dict[str, Callable[..., Endpoint]] = {
    "blocking": lambda **kw: Served(make_rpc(**kw)),
    "asyncio": AsyncServed,
}


@pytest.fixture(params=sorted(DRIVERS))
def rpc_driver(request: pytest.FixtureRequest) -> Iterator[Callable[..., Endpoint]]:
    """Makes servers on the test's driver (``rpc_driver(response_fees=policy)``), and
    closes them after the test."""
    made: list[Endpoint] = []

    def serve(**kw: Any) -> Endpoint:
        endpoint = DRIVERS[request.param](**kw)
        made.append(endpoint)
        return endpoint

    yield serve
    for endpoint in made:
        endpoint.close()
