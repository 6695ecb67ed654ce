"""A handler's RemoteError whose ``data`` msgpack cannot encode with a TypeError -- an
int beyond 64 bits raises OverflowError -- is still answered (without its data), on
every server: the exception does not go up through the server (inline it would end the
stream; with a pool or on asyncio the caller would wait for its deadline, or for good).

A handler result over the server's size cap reaches the caller as ResponseTooLarge
(a RequestTooLarge subclass, so that ``except RequestTooLarge`` still catches it), on
the blocking server inline and with a pool, and on the asyncio server; a request over
the cap stays a plain RequestTooLarge."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import pytest

import dtp.aio
from dtp.identity.keys import HostIdentity
from dtp.messaging import errors as E
from dtp.messaging._protocol import ErrorReceived, RpcProtocol
from dtp.messaging.rpc import AsyncRpcClient, AsyncRpcServer, RpcServer
from tests.messaging.rpc_world import Served

HUGE = 1 << 70


def _bad(params: Any) -> Any:
    raise E.InvalidParams("bad value", data=HUGE if params == "huge" else params)


def test_the_protocol_answers_without_the_data() -> None:
    proto = RpcProtocol()
    for request_id in (1, 2):
        proto._incoming[request_id] = None
    assert proto.send_error(1, E.INVALID_PARAMS, "bad value", HUGE)
    frame = proto.data_to_send()
    assert msgpack.unpackb(frame[4:]) == [2, 1, E.INVALID_PARAMS, "bad value", None]
    # (a code beyond 64 bits: an internal error)
    assert proto.send_error(2, HUGE, "odd code")
    frame = proto.data_to_send()
    assert msgpack.unpackb(frame[4:])[:3] == [2, 2, E.INTERNAL_ERROR]
    frame = proto.error_frame(3, E.INVALID_PARAMS, "bad value", -HUGE)
    assert msgpack.unpackb(frame[4:]) == [2, 3, E.INVALID_PARAMS, "bad value", None]


@pytest.mark.parametrize("workers", [0, 2])
def test_blocking_server_answers(workers: int) -> None:
    rpc = RpcServer(workers=workers)
    rpc.register("bad", _bad)
    rpc.register("echo", lambda p: p)
    s = Served(rpc)
    try:
        client = s.connect(timeout=5)
        with pytest.raises(E.InvalidParams) as info:
            client.call("bad", "huge")
        assert info.value.data is None
        # (a batch: the general path)
        calls = [client.start("bad", "huge"), client.start("echo", 1)]
        with pytest.raises(E.InvalidParams):
            calls[0].result()
        assert calls[1].result() == 1
        with pytest.raises(E.InvalidParams) as info:
            client.call("bad", 7)
        assert info.value.data == 7
    finally:
        s.close()


def test_asyncio_server_answers() -> None:
    async def main() -> None:
        rpc = AsyncRpcServer()
        rpc.register("bad", _bad)
        identity = HostIdentity.generate()
        server = await dtp.aio.start_server(rpc.serve_stream, "127.0.0.1", 0, identity=identity)
        try:
            host, port = server.address
            reader, writer = await dtp.aio.open_connection(
                host, port, server_key=identity.noise_public
            )
            async with AsyncRpcClient(reader, writer, timeout=5) as client:
                with pytest.raises(E.InvalidParams):
                    await client.call("bad", "huge")
            writer.close()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())


CAP = 4096


def test_the_protocol_types_both_errors() -> None:
    client, server = RpcProtocol(max_message_size=1 << 16), RpcProtocol(max_message_size=CAP)
    big_result = client.send_request("m", None)
    big_request = client.send_request("m", b"x" * (2 * CAP))
    server.receive_data(client.data_to_send())
    server.send_response(big_result, b"y" * (2 * CAP))
    client.receive_data(server.data_to_send())
    errors = {e.request_id: e.error for e in client.events() if isinstance(e, ErrorReceived)}
    assert type(errors[big_result]) is E.ResponseTooLarge
    assert type(errors[big_request]) is E.RequestTooLarge
    # (take_request's fast path answers the same way)
    frame = server.response_frame(5, b"z" * (2 * CAP))
    assert E.RESPONSE_TOO_LARGE_TEXT.encode() in frame


@pytest.mark.parametrize("workers", [0, 2])
def test_blocking_caller_gets_response_too_large(workers: int) -> None:
    rpc = RpcServer(workers=workers, max_message_size=CAP)
    rpc.register("big", lambda n: b"x" * n)
    s = Served(rpc)
    try:
        client = s.connect(timeout=5, max_message_size=1 << 20)
        with pytest.raises(E.ResponseTooLarge) as info:
            client.call("big", 2 * CAP)
        assert isinstance(info.value, E.RequestTooLarge)
        assert info.value.code == E.MESSAGE_TOO_LARGE
        with pytest.raises(E.RequestTooLarge) as info2:
            client.call("big", b"y" * (2 * CAP))  # (the request itself is too large)
        assert not isinstance(info2.value, E.ResponseTooLarge)
        assert client.call("big", 10) == b"x" * 10
    finally:
        s.close()


def test_asyncio_caller_gets_response_too_large() -> None:
    async def main() -> None:
        rpc = AsyncRpcServer(max_message_size=CAP)
        rpc.register("big", lambda n: b"x" * n)
        identity = HostIdentity.generate()
        server = await dtp.aio.start_server(rpc.serve_stream, "127.0.0.1", 0, identity=identity)
        try:
            host, port = server.address
            reader, writer = await dtp.aio.open_connection(
                host, port, server_key=identity.noise_public
            )
            async with AsyncRpcClient(reader, writer, timeout=5) as client:
                with pytest.raises(E.ResponseTooLarge):
                    await client.call("big", 2 * CAP)
                assert await client.call("big", 3) == b"xxx"
            writer.close()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())
