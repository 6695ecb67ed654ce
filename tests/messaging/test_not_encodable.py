"""Values msgpack cannot encode, given to the messaging APIs: a typed
:class:`~dtp.messaging.errors.NotEncodable` (a TypeError), nothing sent, the connection
usable. An int beyond 64 bits given to RpcClient.call / notify is such an error, naming
the value and the limit, not msgpack's bare ``OverflowError``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

import dtp.aio
from dtp.errors import DTPError
from dtp.identity.keys import HostIdentity
from dtp.messaging import errors as E
from dtp.messaging._framing import encode_frame
from dtp.messaging._protocol import RpcProtocol
from dtp.messaging.rpc import AsyncRpcClient, AsyncRpcServer
from tests.messaging.rpc_world import Served, make_rpc

PROMPT = 10.0
BAD: list[Any] = [2**64, -(2**63) - 1, [1, 2**70], {"a": {1, 2}}, object()]


@pytest.fixture
def served() -> Iterator[Served]:
    s = Served(make_rpc(workers=2))
    yield s
    s.close()


@pytest.mark.parametrize("bad", BAD, ids=["u64+1", "i64-1", "nested", "set", "object"])
def test_a_call_or_notification_that_cannot_be_encoded_is_refused_typed(
    served: Served, bad: Any
) -> None:
    client = served.connect()
    with pytest.raises(E.NotEncodable, match="cannot encode the message as msgpack") as info:
        client.call("echo", bad)
    assert isinstance(info.value, TypeError) and isinstance(info.value, DTPError)
    with pytest.raises(E.NotEncodable):
        client.notify("echo", bad)
    # nothing was sent and nothing is left in flight: the connection goes on
    assert client.call("echo", [2**64 - 1, -(2**63)]) == [2**64 - 1, -(2**63)]


def test_the_limit_is_named_for_an_int_out_of_range(served: Served) -> None:
    client = served.connect()
    with pytest.raises(E.NotEncodable, match=r"-2\*\*63 to 2\*\*64-1"):
        client.call("echo", 1 << 64)


def test_the_protocol_object_raises_it_at_each_entry_and_queues_nothing() -> None:
    proto = RpcProtocol()
    with pytest.raises(E.NotEncodable):
        proto.send_request("m", 1 << 64)
    with pytest.raises(E.NotEncodable):
        proto.check_request("m", {1})
    with pytest.raises(E.NotEncodable):
        proto.begin_request("m", 1 << 64, 0.0, None)
    with pytest.raises(E.NotEncodable):
        proto.send_notification("m", 1 << 64)
    assert proto.data_to_send() == b""
    with pytest.raises(E.NotEncodable):
        encode_frame([1 << 64])


def test_the_asyncio_client_refuses_it_too_and_goes_on() -> None:
    rpc = AsyncRpcServer()

    @rpc.method
    async def echo(value: Any) -> Any:
        return value

    async def main() -> None:
        identity = HostIdentity.generate()
        srv = await dtp.aio.start_server(rpc.serve_connection, "127.0.0.1", 0, identity=identity)
        try:
            host, port = srv.address
            reader, writer = await dtp.aio.open_connection(
                host, port, server_key=srv.noise_public_key, timeout=PROMPT
            )
            async with AsyncRpcClient(reader, writer, timeout=PROMPT) as client:
                with pytest.raises(E.NotEncodable):
                    await client.call("echo", 1 << 64)
                with pytest.raises(E.NotEncodable):
                    await client.notify("echo", {1})
                assert await client.call("echo", "still here") == "still here"
            writer.close()
            await writer.wait_closed()
        finally:
            srv.close()
            await srv.wait_closed()

    asyncio.run(main())
