"""A handler result over the server's size cap reaches the caller as ResponseTooLarge
(a RequestTooLarge subclass, which it was raised as before), on the blocking server
inline and with a pool, and on the asyncio server; a request over the cap stays a plain
RequestTooLarge."""

from __future__ import annotations

import asyncio

import pytest

import dtp.aio
from dtp.keys import HostIdentity
from dtp.messaging import errors as E
from dtp.messaging.protocol import ErrorReceived, RpcProtocol
from dtp.messaging.rpc import AsyncRpcClient, AsyncRpcServer, RpcServer
from tests.test_messaging_rpc import Served

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
        server = await dtp.aio.start_server(rpc.serve, "127.0.0.1", 0, identity=identity)
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
