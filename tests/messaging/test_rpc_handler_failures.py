"""RpcServer / AsyncRpcServer handlers that fail in every way: BaseExceptions
(KeyboardInterrupt, SystemExit), results whose encoding raises anything, an async
handler's own CancelledError; close() with requests queued for the pool; requests
whose deadline passed counting against max_pending. Each call gets an answer, inline and
with a pool alike. Real DTP connections on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.identity.keys import HostIdentity
from dtp.messaging import errors as E
from dtp.messaging._protocol import ErrorReceived, ResponseReceived, RpcProtocol
from dtp.messaging.rpc import AsyncRpcServer, CallContext, RpcClient, RpcServer
from tests.messaging.conftest import Endpoint
from tests.messaging.rpc_world import Served


@contextlib.contextmanager
def stream_pair() -> Iterator[tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket]]:
    """A DTP connection on 127.0.0.1: (client's stream, server's stream)."""
    identity = HostIdentity.generate()
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=identity)
    try:
        client = dtp.socket.create_connection(
            server.address, server_key=identity.noise_public, timeout=10
        )
        try:
            peer, _ = server.accept(timeout=10)
            try:
                yield client, peer
            finally:
                peer.close()
        finally:
            client.close()
    finally:
        server.close()


def _serving(rpc: RpcServer, stream: Any) -> tuple[threading.Thread, list[BaseException]]:
    """serve_stream(stream) in a thread; what it raised lands in the list."""
    raised: list[BaseException] = []

    def run() -> None:
        try:
            rpc.serve_stream(stream)
        except BaseException as exc:  # the point of the test
            raised.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, raised


class _ItemsFail(dict):  # type: ignore[type-arg]
    """A result whose encoding raises RuntimeError (as a dict changed meanwhile does)."""

    def items(self) -> Any:
        raise RuntimeError("secret detail")


def _raiser(exc_type: type[BaseException]) -> Any:
    def handler(p: Any, ctx: CallContext | None = None) -> Any:
        raise exc_type()

    return handler


def _raw_exchange(sock: Any, proto: RpcProtocol, count: int, timeout: float = 5.0) -> dict:
    """Read until ``count`` answers came: request id -> result or error."""
    sock.settimeout(timeout)
    got: dict[int, Any] = {}
    while len(got) < count:
        data = sock.recv(65536)
        assert data, "the server ended the stream"
        proto.receive_data(data, 0.0)
        for event in proto.events():
            if isinstance(event, ResponseReceived):
                got[event.request_id] = event.result
            elif isinstance(event, ErrorReceived):
                got[event.request_id] = event.error
    return got


# -- handlers raising BaseExceptions ----------------------------------------------------------


@pytest.mark.parametrize("context", [False, True])
@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_inline_handler_base_exception_is_answered_then_ends_serving(
    exc_type: type[BaseException], context: bool
) -> None:
    """Inline: the request is answered INTERNAL_ERROR (its client does not wait for its
    deadline), then the exception ends serve_stream as documented."""
    rpc = RpcServer(workers=0)
    rpc.register("die", _raiser(exc_type), context=context)
    rpc.register("echo", lambda p: p)
    with stream_pair() as (client_sock, server_sock):
        thread, raised = _serving(rpc, server_sock)
        client = RpcClient(client_sock, timeout=5)
        assert client.call("echo", 1) == 1
        started = time.monotonic()
        with pytest.raises(E.InternalError, match=exc_type.__name__):
            client.call("die", None, timeout=None)
        assert time.monotonic() - started < 2
        thread.join(5)
        assert not thread.is_alive()
        assert len(raised) == 1 and type(raised[0]) is exc_type


@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_inline_handler_base_exception_in_a_batch_is_answered(
    exc_type: type[BaseException],
) -> None:
    """Two requests in one read (the inline loop's general path): the first is
    answered, the one whose handler raised is answered, then serving ends."""
    rpc = RpcServer(workers=0)
    rpc.register("die", _raiser(exc_type))
    rpc.register("echo", lambda p: p)
    with stream_pair() as (client_sock, server_sock):
        thread, raised = _serving(rpc, server_sock)
        proto = RpcProtocol()
        ok = proto.send_request("echo", "first")
        die = proto.send_request("die", None)
        client_sock.sendall(proto.data_to_send())
        got = _raw_exchange(client_sock, proto, 2)
        assert got[ok] == "first"
        assert isinstance(got[die], E.InternalError) and exc_type.__name__ in str(got[die])
        thread.join(5)
        assert len(raised) == 1 and type(raised[0]) is exc_type


@pytest.mark.parametrize("context", [False, True])
@pytest.mark.parametrize("exc_type", [KeyboardInterrupt, SystemExit])
def test_pool_handler_base_exception_is_answered_and_serving_goes_on(
    exc_type: type[BaseException], context: bool
) -> None:
    """With a pool the exception vanished into the worker's future: no answer ever, and
    the request stayed counted against max_pending."""
    rpc = RpcServer(workers=2, max_pending=2)
    rpc.register("die", _raiser(exc_type), context=context)
    rpc.register("echo", lambda p: p)
    s = Served(rpc)
    try:
        client = s.connect(timeout=5)
        for _ in range(3):  # more than max_pending: none of them stays pending
            started = time.monotonic()
            with pytest.raises(E.InternalError, match=exc_type.__name__):
                client.call("die", None, timeout=None)
            assert time.monotonic() - started < 2
        assert client.call("echo", 2) == 2
    finally:
        s.close()


# -- results that cannot be encoded -----------------------------------------------------------


@pytest.mark.parametrize(("workers", "context"), [(0, False), (0, True), (2, False), (2, True)])
def test_a_result_whose_encoding_raises_is_answered_in_every_mode(
    workers: int, context: bool
) -> None:
    """A result whose packing raised RuntimeError: inline with a context, the serving
    loop ended (the connection closed); with a pool, no answer ever came."""
    rpc = RpcServer(workers=workers)
    if context:
        rpc.register("bad", lambda p, ctx: _ItemsFail(a=1), context=True)
    else:
        rpc.register("bad", lambda p: _ItemsFail(a=1))
    rpc.register("echo", lambda p: p)
    s = Served(rpc)
    try:
        client = s.connect(timeout=5)
        for _ in range(2):
            started = time.monotonic()
            with pytest.raises(E.InternalError, match="RuntimeError") as info:
                client.call("bad", None, timeout=None)
            assert "secret" not in str(info.value)
            assert time.monotonic() - started < 2
            assert client.call("echo", 1) == 1
    finally:
        s.close()


def test_an_unencodable_result_in_a_batch_is_answered_inline() -> None:
    """Two requests in one read: the inline loop's general path (answer_plain) let the
    encoding error end the serving, the stream's other requests unanswered."""
    rpc = RpcServer(workers=0)
    rpc.register("bad", lambda p: _ItemsFail(a=1))
    rpc.register("echo", lambda p: p)
    with stream_pair() as (client_sock, server_sock):
        thread, raised = _serving(rpc, server_sock)
        proto = RpcProtocol()
        bad = proto.send_request("bad", None)
        ok = proto.send_request("echo", "after")
        client_sock.sendall(proto.data_to_send())
        got = _raw_exchange(client_sock, proto, 2)
        assert isinstance(got[bad], E.InternalError) and got[ok] == "after"
        assert thread.is_alive() and raised == []
        client_sock.close()
        thread.join(5)
        assert raised == []


# -- close() with requests queued for the pool -------------------------------------------------


def test_close_answers_the_requests_queued_for_the_pool() -> None:
    """close() cancelled the pool's queued work: those requests were never answered
    (documented: refused with SERVER_BUSY); the one running is answered as usual."""
    rpc = RpcServer(workers=1)
    started = threading.Event()

    def slow(p: Any) -> Any:
        started.set()
        time.sleep(0.5)
        return "slept"

    rpc.register("slow", slow)
    s = Served(rpc)
    try:
        client = s.connect()
        calls = [client.start("slow", None) for _ in range(4)]
        assert started.wait(5)
        time.sleep(0.05)  # the other three wait in the pool's queue
        rpc.close()
        begun = time.monotonic()
        assert calls[0].result(timeout=5) == "slept"
        for call in calls[1:]:
            with pytest.raises(E.ServerBusy):
                call.result(timeout=5)
        assert time.monotonic() - begun < 2
        assert client.in_flight == 0
    finally:
        s.close()


# -- asyncio ------------------------------------------------------------------------------------


def test_async_handlers_own_cancelled_error_is_answered() -> None:
    """A handler that awaited something cancelled (its own CancelledError, not its
    task's) went unanswered: the call waited for its deadline, or for good, and the
    request stayed counted against max_pending. The caller's cancellation still ends a
    handler without an answer."""

    async def main() -> None:
        rpc = AsyncRpcServer(max_pending=1)

        async def awaits_a_cancelled_future(p: Any) -> Any:
            future = asyncio.get_running_loop().create_future()
            future.cancel()
            return await future

        handler_ended = asyncio.Event()

        async def slow(p: Any) -> Any:
            try:
                await asyncio.sleep(30)
            finally:
                handler_ended.set()

        rpc.register("own", awaits_a_cancelled_future)
        rpc.register("slow", slow)
        rpc.register("echo", lambda p: p)
        identity = HostIdentity.generate()
        server = await dtp.aio.start_server(rpc.serve_stream, "127.0.0.1", 0, identity=identity)
        async with server:
            reader, writer = await dtp.aio.open_connection(
                *server.address, server_key=identity.noise_public
            )
            from dtp.messaging.rpc import AsyncRpcClient

            client = AsyncRpcClient(reader, writer)
            for _ in range(2):  # max_pending=1: the first must not stay pending
                with pytest.raises(E.InternalError, match="CancelledError"):
                    await asyncio.wait_for(client.call("own", None), 5)
            with pytest.raises(E.RpcTimeout):
                await client.call("slow", None, timeout=0.2)
            await asyncio.wait_for(handler_ended.wait(), 5)  # cancelled by the CANCEL
            assert await client.call("echo", 3, timeout=5) == 3
            await client.close()
            writer.close()
            await writer.wait_closed()

    asyncio.run(main())


def test_async_requests_past_their_deadline_do_not_make_the_server_busy() -> None:
    """A peer that sends no CANCEL (the protocol's requester should; not every one
    does): its requests whose deadline passed were expired only after the next read's
    requests were taken, so those were refused SERVER_BUSY with nothing in progress."""

    async def main() -> None:
        rpc = AsyncRpcServer(max_pending=2)

        async def slow(p: Any) -> Any:
            await asyncio.sleep(30)

        rpc.register("slow", slow)
        rpc.register("echo", lambda p: p)
        identity = HostIdentity.generate()
        server = await dtp.aio.start_server(rpc.serve_stream, "127.0.0.1", 0, identity=identity)
        async with server:
            reader, writer = await dtp.aio.open_connection(
                *server.address, server_key=identity.noise_public
            )
            proto = RpcProtocol()
            for _ in range(2):
                proto.send_request("slow", None, timeout=0.1)
            writer.write(proto.data_to_send())
            await writer.drain()
            await asyncio.sleep(0.4)  # both deadlines passed; no CANCEL sent
            rid = proto.send_request("echo", "served")
            writer.write(proto.data_to_send())
            await writer.drain()
            answer = None
            while answer is None:
                data = await asyncio.wait_for(reader.read(65536), 5)
                assert data
                proto.receive_data(data, 0.0)
                for event in proto.events():
                    if getattr(event, "request_id", None) == rid:
                        answer = event
            assert isinstance(answer, ResponseReceived), answer
            assert answer.result == "served"
            writer.close()
            await writer.wait_closed()

    asyncio.run(main())


def test_notification_handlers_and_missing_methods_are_served_alike(
    rpc_driver: Callable[..., Endpoint], caplog: pytest.LogCaptureFixture
) -> None:
    """One rule on both servers (server_base.call_notification, refuse_missing): a
    notification handler registered with a context gets one naming the notification, a
    failing one is logged with its name and serving goes on, and a request for a method
    nobody registered is refused with METHOD_NOT_FOUND naming it."""
    s: Any = rpc_driver()
    seen: list[tuple[Any, str, int, Any]] = []

    def note(p: Any, ctx: CallContext) -> None:
        seen.append((p, ctx.method, ctx.request_id, ctx.meta))

    def boom(p: Any) -> None:
        raise RuntimeError("notification went wrong")

    s.rpc.register("note", note, context=True, notification=True)
    s.rpc.register("boom", boom, notification=True)
    asyncio_server = isinstance(s.rpc, AsyncRpcServer)
    address = s.server.sockets[0].getsockname()[:2] if asyncio_server else s.server.address
    sock = dtp.socket.create_connection(address, server_key=s.identity.noise_public, timeout=10)
    try:
        proto = RpcProtocol()
        with caplog.at_level(logging.ERROR):
            proto.send_notification("note", 1, meta={"k": "v"})
            proto.send_notification("boom", 2)
            proto.send_request("nothing here", None, timeout=10)
            proto.send_request("echo", "after", timeout=10)
            sock.sendall(proto.data_to_send())
            got: list[Any] = []
            while len(got) < 2 and (data := sock.recv(65536)):
                proto.receive_data(data)
                got += proto.events()
        missing, echoed = got
        assert isinstance(missing, ErrorReceived)
        assert missing.error.code == E.METHOD_NOT_FOUND
        assert "no method 'nothing here'" in str(missing.error)
        assert isinstance(echoed, ResponseReceived) and echoed.result == "after"
        assert seen == [(1, "note", 0, {"k": "v"})]
        assert "notification handler boom failed" in caplog.messages
    finally:
        sock.close()
