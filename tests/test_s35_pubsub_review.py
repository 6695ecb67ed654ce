"""Pub/sub and the message wire protocol, session 35 review (docs/messaging.md §2, §4),
over real DTP connections on 127.0.0.1:

1. A method name with a lone surrogate (no UTF-8) is a ValueError ("1..256 bytes of
   UTF-8") on every path a request or notification takes. The blocking client's quiet
   path (``RpcProtocol.begin_request``) said ``NotEncodable``, a TypeError, while a busy
   blocking client, the asyncio client, ``notify`` and ``check_request`` let the codec's
   bare UnicodeEncodeError out: one mistake, two exception types by the client's state.
2. A peer whose stream ends inside a frame (a message cut off) counts as a violation of
   the link: the link ended with nothing counted, as after a clean end of stream.
3. ``PubSubNode.interested_links`` refuses what is no topic (PubSubError), as
   ``publish``, ``subscribe`` and ``wait_for_interest`` do: it answered, naming every
   peer that had not subscribed yet (those get every message).
"""

from __future__ import annotations

import asyncio
import socket
import threading

import pytest

import dtp.aio
import dtp.socket
from dtp.keys import HostIdentity
from dtp.messaging import errors as E
from dtp.messaging.framing import encode_frame
from dtp.messaging.protocol import RpcProtocol
from dtp.messaging.pubsub import PubSubNode
from dtp.messaging.rpc import AsyncRpcClient, AsyncRpcServer, RpcClient, RpcServer
from tests.test_s31_pubsub_review import Streams, streams  # noqa: F401 (a fixture)

NOT_UTF8 = "\udc80"  # a lone surrogate: a str, but no UTF-8 for the wire


# -- 1. a method name that is no UTF-8 -----------------------------------------------------------


def _refused_as_a_bad_name(call: object) -> None:
    with pytest.raises(ValueError, match="bytes of UTF-8") as info:
        call()  # type: ignore[operator]
    assert not isinstance(info.value, TypeError | UnicodeEncodeError)


def test_a_method_name_that_is_no_utf8_is_refused_alike_on_every_path(
    streams: Streams,  # noqa: F811 (the fixture)
) -> None:
    proto = RpcProtocol()
    _refused_as_a_bad_name(lambda: proto.begin_request(NOT_UTF8, None, 0.0, None))
    _refused_as_a_bad_name(lambda: proto.send_request(NOT_UTF8))
    _refused_as_a_bad_name(lambda: proto.check_request(NOT_UTF8))
    _refused_as_a_bad_name(lambda: proto.send_notification(NOT_UTF8))
    assert proto.in_flight == 0 and proto.data_to_send() == b""
    # bad params are still NotEncodable on the quiet path (only the name is checked again)
    with pytest.raises(E.NotEncodable):
        proto.begin_request("m", [NOT_UTF8], 0.0, None)

    # the blocking client over DTP: a quiet stream takes begin_request
    rpc = RpcServer(workers=0)
    rpc.register("echo", lambda p: p)
    client_sock, server_sock = streams.pair()
    served = threading.Thread(target=rpc.serve_stream, args=(server_sock,), daemon=True)
    served.start()
    try:
        client = RpcClient(client_sock, timeout=5)
        _refused_as_a_bad_name(lambda: client.call(NOT_UTF8))
        _refused_as_a_bad_name(lambda: client.notify(NOT_UTF8))
        assert client.call("echo", "still usable") == "still usable"
    finally:
        rpc.close()

    # the asyncio client: send_request
    arpc = AsyncRpcServer()

    @arpc.method("echo")
    async def echo(value: str) -> str:
        return value

    async def main() -> None:
        identity = HostIdentity.generate()
        srv = await dtp.aio.start_server(arpc.serve_connection, "127.0.0.1", 0, identity=identity)
        try:
            host, port = srv.address
            reader, writer = await dtp.aio.open_connection(
                host, port, server_key=srv.noise_public_key, timeout=5
            )
            async with AsyncRpcClient(reader, writer, timeout=5) as aclient:
                with pytest.raises(ValueError, match="bytes of UTF-8") as info:
                    await aclient.call(NOT_UTF8)
                assert not isinstance(info.value, UnicodeEncodeError)
                assert await aclient.call("echo", "hi") == "hi"
            writer.close()
            await writer.wait_closed()
        finally:
            srv.close()
            await srv.wait_closed()

    asyncio.run(main())


# -- 2. a stream ending inside a frame -------------------------------------------------------------


def test_a_stream_ending_inside_a_frame_counts_as_a_violation(
    streams: Streams,  # noqa: F811 (the fixture)
) -> None:
    node = PubSubNode("n")
    try:
        sub = node.subscribe("t")
        links = {}
        for name, cut in (("clean", False), ("cut", True)):
            raw, node_side = streams.pair()
            links[name] = link = node.attach(node_side, name)
            raw.sendall(encode_frame([10, bytes([cut]) * 16, "t", 1, name.encode(), None]))
            if cut:
                frame = encode_frame([10, b"\x02" * 16, "t", 1, b"cut off" * 10, None])
                raw.sendall(frame[: len(frame) // 2])
            raw.shutdown(socket.SHUT_WR)
            assert link.closed.wait(5)
        assert sorted(sub.get(timeout=5).data for _ in range(2)) == [b"clean", b"cut"]
        assert sub.qsize() == 0
        # a clean end of stream is no violation; a message cut off by the end is one
        assert links["clean"].violations == 0
        assert links["cut"].violations == 1
    finally:
        node.close()


# -- 3. interested_links checks its topic ----------------------------------------------------------


@pytest.mark.parametrize("topic", [5, None, "", "x" * 257, NOT_UTF8])
def test_interested_links_refuses_what_is_no_topic(
    streams: Streams,  # noqa: F811 (the fixture)
    topic: object,
) -> None:
    node = PubSubNode("n")
    try:
        _, node_side = streams.pair()
        node.attach(node_side, "quiet")  # its peer never subscribes: it wants everything
        assert node.interested_links("t") == ["quiet"]
        with pytest.raises(E.PubSubError, match="a topic is"):
            node.interested_links(topic)  # type: ignore[arg-type]
        assert node.links[0].remote is None
    finally:
        node.close()


def test_rpc_protocol_takes_no_max_events() -> None:
    # it was checked and stored, and nothing ever looked at it: a caller that set it
    # believed the event queue bounded (the callers drain it after each read instead)
    from dtp.messaging.protocol import RpcProtocol

    with pytest.raises(TypeError, match="max_events"):
        RpcProtocol(max_events=16)  # type: ignore[call-arg]
