"""RPC under pressure and misuse: writes held up by flow control, closing while a call
waits, answers too large for the client, handlers that raise TimeoutError, a client that
never reads its answers. Real DTP connections (and plain TCP) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import pytest

import dtp.aio
from dtp.keys import HostIdentity
from dtp.messaging import errors as E
from dtp.messaging.rpc import AsyncRpcClient, AsyncRpcServer, RpcClient, RpcServer
from tests.test_messaging_rpc import Served

BIG = b"x" * 900_000  # several such requests fill the stream's flow-control window


def _slow_server() -> RpcServer:
    """Inline server: while ``sleep`` runs, nothing on the stream is read."""
    rpc = RpcServer(workers=0)
    rpc.register("sleep", lambda p: time.sleep(p) or "slept")
    rpc.register("size", lambda p: len(p) if isinstance(p, bytes) else p)
    return rpc


def test_a_write_waits_for_flow_control_up_to_its_calls_deadline_not_a_reads() -> None:
    """A short call leaves a short read timeout on the stream; big requests started
    with a long timeout then wait for the busy server's window and all arrive, and the
    client stays usable (before, each write ended at the stale read timeout and failed
    every call for good)."""
    s = Served(_slow_server())
    try:
        client = s.connect()
        assert client.call("size", 0, timeout=5) == 0
        slow = client.start("sleep", 1.5, timeout=0.2)
        with pytest.raises(E.RpcTimeout):
            slow.result()  # the read waited 0.2 s: that is the stream's timeout now
        calls = [client.start("size", BIG, timeout=30) for _ in range(10)]
        assert [c.result() for c in calls] == [len(BIG)] * 10
        assert client.call("size", 7, timeout=5) == 7
        assert client.violations == []
    finally:
        s.close()


def test_a_write_past_its_calls_deadline_fails_every_call_clearly() -> None:
    """When the peer takes nothing before the call's own deadline the stream may hold
    half a frame: every call fails with RpcConnectionLost saying so, no call hangs."""
    s = Served(_slow_server())
    try:
        client = s.connect()
        assert client.call("size", 0, timeout=5) == 0
        blocker = client.start("sleep", 3.0, timeout=10)
        started = time.monotonic()
        with pytest.raises(E.RpcConnectionLost, match="sending timed out"):
            for _ in range(40):
                client.start("size", BIG, timeout=0.5)
        assert time.monotonic() - started < 3.0
        with pytest.raises(E.RpcConnectionLost):
            blocker.result()
        with pytest.raises(E.RpcConnectionLost):
            client.call("size", 1, timeout=1)
    finally:
        s.close()


def test_a_plain_socket_write_is_not_taken_for_a_read_timeout() -> None:
    """Over plain TCP (sendall, recv, settimeout): a 32 MiB request that the busy server
    does not take before the call's deadline fails every call clearly (before, the
    write's timeout was taken for the read's: the call went on waiting and the stream,
    holding half a frame, was garbled); one within its deadline is answered whole."""
    listener = socket.create_server(("127.0.0.1", 0))
    client_sock = socket.create_connection(listener.getsockname())
    server_sock, _ = listener.accept()
    listener.close()
    rpc = RpcServer(workers=0, max_message_size=64 << 20)
    rpc.register("sleep", lambda p: time.sleep(p) or "slept")
    rpc.register("size", lambda p: len(p))
    thread = threading.Thread(target=rpc.serve_stream, args=(server_sock,), daemon=True)
    thread.start()
    try:
        client = RpcClient(client_sock, max_message_size=64 << 20)
        assert client.call("size", b"y" * (32 << 20), timeout=30) == 32 << 20
        with pytest.raises(E.RpcTimeout):
            client.call("sleep", 1.5, timeout=0.2)
        with pytest.raises(E.RpcConnectionLost, match="sending timed out"):
            client.call("size", b"y" * (32 << 20), timeout=0.3)
        with pytest.raises(E.RpcConnectionLost):
            client.call("size", b"zz", timeout=5)
        assert rpc.violations == 0
    finally:
        client_sock.close()
        thread.join(5)
        server_sock.close()
    assert not thread.is_alive()


@pytest.mark.parametrize("how", ["call", "start"])
def test_close_ends_a_wait_without_a_timeout(how: str) -> None:
    """close() (stream not owned) fails the calls in flight, and a thread waiting for
    one without a timeout returns within about a second, not when the server answers."""
    rpc = RpcServer(workers=4)
    rpc.register("sleep", lambda p: time.sleep(p) or "slept")
    s = Served(rpc)
    try:
        client = s.connect()
        outcome: list[BaseException] = []

        def wait() -> None:
            try:
                if how == "call":
                    client.call("sleep", 6)
                else:
                    client.start("sleep", 6).result()
            except BaseException as exc:
                outcome.append(exc)

        thread = threading.Thread(target=wait, daemon=True)
        thread.start()
        time.sleep(0.3)
        closed = time.monotonic()
        client.close()
        thread.join(3)
        assert not thread.is_alive()
        assert time.monotonic() - closed < 2.5
        assert len(outcome) == 1 and isinstance(outcome[0], E.RpcConnectionLost)
    finally:
        s.close()


def test_async_handler_raising_timeouterror_is_answered() -> None:
    """A handler whose own work times out (TimeoutError, async or not) gets an internal
    error answer like any failure; only the request's deadline goes unanswered (before,
    every TimeoutError was taken for the deadline: no answer, and the request stayed
    counted against max_pending)."""

    async def main() -> None:
        rpc = AsyncRpcServer(max_pending=2)

        async def backend_timeout(p: Any) -> Any:
            await asyncio.sleep(0.01)
            raise TimeoutError("the backend did not answer")

        def sync_timeout(p: Any) -> Any:
            raise TimeoutError("the backend did not answer")

        rpc.register("atimeout", backend_timeout)
        rpc.register("stimeout", sync_timeout)
        rpc.register("echo", lambda p: p)
        identity = HostIdentity.generate()
        server = await dtp.aio.start_server(rpc.serve, "127.0.0.1", 0, identity=identity)
        async with server:
            reader, writer = await dtp.aio.open_connection(
                *server.address, server_key=identity.noise_public
            )
            client = AsyncRpcClient(reader, writer)
            for method in ("atimeout", "stimeout", "atimeout", "atimeout"):
                with pytest.raises(E.InternalError, match="TimeoutError"):
                    await client.call(method, None, timeout=5)
            assert await client.call("echo", 1, timeout=5) == 1
            await client.close()
            writer.close()
            await writer.wait_closed()

    asyncio.run(main())
