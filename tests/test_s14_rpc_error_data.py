"""A handler's RemoteError whose ``data`` msgpack cannot encode with a TypeError -- an
int beyond 64 bits raises OverflowError -- is still answered (without its data), on
every server. Before, the exception went up through the server: inline it ended the
stream (every call on it failed), with a pool or on asyncio the request was never
answered (the caller waited for its deadline, or for good)."""

from __future__ import annotations

import asyncio
from typing import Any

import msgpack
import pytest

import dtp.aio
from dtp.keys import HostIdentity
from dtp.messaging import errors as E
from dtp.messaging.protocol import RpcProtocol
from dtp.messaging.rpc import AsyncRpcClient, AsyncRpcServer, RpcServer
from tests.test_messaging_rpc import Served

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
        server = await dtp.aio.start_server(rpc.serve, "127.0.0.1", 0, identity=identity)
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
