"""A client serves nothing: a request its peer sends it is answered METHOD_NOT_FOUND,
naming the method, by both clients alike, and the client's own call goes on. (The
asyncio client answered "no methods here", the blocking one named the method.)"""

from __future__ import annotations

import asyncio
import socket
import threading

from dtp.messaging import errors as E
from dtp.messaging._protocol import ErrorReceived, RequestReceived, RpcProtocol
from dtp.messaging.rpc import AsyncRpcClient, RpcClient


def _peer_asks_then_answers(peer: socket.socket, refusals: list[ErrorReceived]) -> None:
    """The peer: takes the client's call, sends a request of its own, reads the
    client's answer to it, then answers the call."""
    proto = RpcProtocol()
    peer.settimeout(10)
    call_id = None
    while not refusals:
        data = peer.recv(65536)
        assert data, "the client closed the stream"
        proto.receive_data(data)
        for event in proto.events():
            if isinstance(event, RequestReceived):
                call_id = event.request_id
                proto.send_request("the_peers_method", [1])
                peer.sendall(proto.data_to_send())
            elif isinstance(event, ErrorReceived):
                refusals.append(event)
    assert call_id is not None
    proto.send_response(call_id, "answered")
    peer.sendall(proto.data_to_send())


def _check(refusals: list[ErrorReceived]) -> None:
    assert len(refusals) == 1
    error = refusals[0].error
    assert isinstance(error, E.MethodNotFound)
    assert error.code == E.METHOD_NOT_FOUND
    assert error.message == "no method 'the_peers_method' here"


def test_the_blocking_client_refuses_a_request_naming_its_method() -> None:
    ours, peer = socket.socketpair()
    refusals: list[ErrorReceived] = []
    thread = threading.Thread(target=_peer_asks_then_answers, args=(peer, refusals))
    thread.start()
    client = RpcClient(ours, timeout=10)
    try:
        assert client.call("ours", None, meta={"k": 1}) == "answered"  # (not the quiet path)
    finally:
        client.close()
        thread.join(10)
        ours.close()
        peer.close()
    _check(refusals)


def test_the_asyncio_client_refuses_a_request_naming_its_method() -> None:
    ours, peer = socket.socketpair()
    refusals: list[ErrorReceived] = []
    thread = threading.Thread(target=_peer_asks_then_answers, args=(peer, refusals))
    thread.start()

    async def main() -> object:
        reader, writer = await asyncio.open_connection(sock=ours)
        client = AsyncRpcClient(reader, writer, timeout=10)
        try:
            return await client.call("ours", None)
        finally:
            await client.close()
            writer.close()
            await writer.wait_closed()

    try:
        assert asyncio.run(main()) == "answered"
    finally:
        thread.join(10)
        peer.close()
    _check(refusals)
