"""A client that sends its requests and then ends its side of the stream (a half-close:
it still reads) gets every answer, from a server with a worker pool and from the
asyncio server, as from an inline one (docs/messaging.md §2: every request a server
takes gets an answer unless cancelled or past its deadline)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

import dtp.aio
import dtp.identity.keys
import dtp.socket
from dtp.messaging._protocol import ResponseReceived, RpcProtocol
from dtp.messaging.rpc import AsyncRpcServer, CallContext, RpcServer
from tests.messaging.conftest import Endpoint
from tests.messaging.rpc_world import Served


def _ask_then_half_close(sock: Any, count: int) -> list[Any]:
    """Send ``count`` sleep requests, end our side, read the answers until the end."""
    proto = RpcProtocol()
    for _ in range(count):
        proto.send_request("sleep", 0.2, timeout=5)
    sock.sendall(proto.data_to_send())
    sock.shutdown(socket.SHUT_WR)
    sock.settimeout(5)
    got: list[Any] = []
    while len(got) < count:
        data = sock.recv(65536)
        if not data:
            break
        proto.receive_data(data)
        got += proto.events()
    return got


@pytest.mark.parametrize("workers", [0, 4])
def test_a_half_closed_client_gets_its_answers(workers: int) -> None:
    """With a pool, the server took the end of the client's side for the end of the
    stream: it closed the connection with the handlers still running (no answer)."""
    rpc = RpcServer(workers=workers)
    rpc.register("sleep", lambda p: time.sleep(p) or "slept")
    s = Served(rpc)
    try:
        sock = dtp.socket.create_connection(
            s.server.address, server_key=s.identity.noise_public, timeout=10
        )
        s.socks.append(sock)
        got = _ask_then_half_close(sock, 3)
        assert [type(e) for e in got] == [ResponseReceived] * 3
        assert [e.result for e in got] == ["slept"] * 3
    finally:
        s.close()


def test_a_half_closed_client_gets_its_answers_from_the_asyncio_server() -> None:
    """AsyncRpcServer cancelled the handlers' tasks at the end of the client's side."""

    async def main() -> list[Any]:
        rpc = AsyncRpcServer()

        async def sleep(p: float) -> str:
            await asyncio.sleep(p)
            return "slept"

        rpc.register("sleep", sleep)
        served: list[asyncio.Task[None]] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            served.append(asyncio.current_task())  # type: ignore[arg-type]
            try:
                await rpc.serve_stream(reader, writer)
            finally:
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as sock:
            got = await asyncio.to_thread(_ask_then_half_close, sock, 3)
        server.close()
        await server.wait_closed()
        await asyncio.gather(*served, return_exceptions=True)
        return got

    got = asyncio.run(main())
    assert [type(e) for e in got] == [ResponseReceived] * 3


def test_a_client_closing_for_good_still_ends_long_handlers() -> None:
    """Waiting for a half-closed client's answers must not keep a handler that waits
    for ctx.cancelled (or the stream) going once the client closed for good: the
    blocking server sets ctx.cancelled at the end of the client's side, as before."""
    import threading

    rpc = RpcServer(workers=2)
    started, ended = threading.Event(), threading.Event()

    def long_poll(p: Any, ctx: CallContext) -> bool:
        started.set()
        told = ctx.cancelled.wait(600)  # not told: the handler would wait 10 minutes
        ended.set()
        return told

    rpc.register("long_poll", long_poll, context=True)
    s = Served(rpc)
    try:
        sock = dtp.socket.create_connection(
            s.server.address, server_key=s.identity.noise_public, timeout=10
        )
        proto = RpcProtocol()
        proto.send_request("long_poll", None)
        sock.sendall(proto.data_to_send())
        assert started.wait(5)
        began = time.monotonic()
        sock.close()
        assert ended.wait(60)
        assert time.monotonic() - began < 30
    finally:
        s.close()


def test_the_asyncio_server_cancels_long_handlers_when_the_client_closes_for_good() -> None:
    async def main() -> float:
        rpc = AsyncRpcServer()
        started = asyncio.Event()

        async def forever(p: Any) -> None:
            started.set()
            await asyncio.Event().wait()

        rpc.register("forever", forever)
        identity = dtp.identity.keys.HostIdentity.generate()
        done = asyncio.Event()

        async def serve(reader: Any, writer: Any) -> None:
            try:
                await rpc.serve_stream(reader, writer)
            finally:
                done.set()

        server = await dtp.aio.start_server(serve, "127.0.0.1", 0, identity=identity)
        host, port = server.sockets[0].getsockname()[:2]
        _reader, writer = await dtp.aio.open_connection(
            host, port, server_key=identity.noise_public
        )
        proto = RpcProtocol()
        proto.send_request("forever", None)
        writer.write(proto.data_to_send())
        await writer.drain()
        await asyncio.wait_for(started.wait(), 5)
        began = time.monotonic()
        writer.close()
        await writer.wait_closed()
        await asyncio.wait_for(done.wait(), 5)
        server.close()
        await server.wait_closed()
        return time.monotonic() - began

    assert asyncio.run(main()) < 2


def test_the_end_of_the_clients_side_sets_ctx_cancelled(
    rpc_driver: Callable[..., Endpoint],
) -> None:
    """One rule on both servers (server_base.tell_client_ended): at the end of the
    client's side a running handler's ``ctx.cancelled`` is set (a handler waiting for it
    must not hold the stream, were the client gone for good), and its answer still
    reaches the half-closed client. The asyncio server left it clear."""
    s: Any = rpc_driver()

    def told(p: Any, ctx: CallContext) -> bool:
        return ctx.cancelled.wait(5)

    async def told_async(p: Any, ctx: CallContext) -> bool:
        for _ in range(500):
            if ctx.cancelled.is_set():
                return True
            await asyncio.sleep(0.01)
        return False

    asyncio_server = isinstance(s.rpc, AsyncRpcServer)
    s.rpc.register("told", told_async if asyncio_server else told, context=True)
    address = s.server.sockets[0].getsockname()[:2] if asyncio_server else s.server.address
    sock = dtp.socket.create_connection(address, server_key=s.identity.noise_public, timeout=10)
    try:
        proto = RpcProtocol()
        proto.send_request("told", None, timeout=10)
        sock.sendall(proto.data_to_send())
        time.sleep(0.1)  # (the handler runs before the end of our side)
        began = time.monotonic()
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(10)
        got: list[Any] = []
        while not got and (data := sock.recv(65536)):
            proto.receive_data(data)
            got += proto.events()
        assert [type(e) for e in got] == [ResponseReceived]
        assert got[0].result is True
        assert time.monotonic() - began < 4  # told at once, not at its own 5 s
    finally:
        sock.close()
