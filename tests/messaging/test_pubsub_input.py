"""Pub/sub: frames whose kind is not an int are refused (10.0 passed for PUBLISH), a
topic that is not encodable text is a PubSubError (was a UnicodeEncodeError); a loop
A-B-C-A delivers each message once, and a node leaving while messages flow stalls no
one; subscribe/unsubscribe racing with publishers. Real DTP connections on 127.0.0.1.

Pub/sub and the message wire protocol (docs/messaging.md §2, §4),
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
   peer that had not subscribed yet (those get every message)."""

from __future__ import annotations

import asyncio
import os
import queue
import socket
import threading
import time

import msgpack
import pytest

import dtp.aio
import dtp.socket
from dtp.identity.keys import HostIdentity
from dtp.messaging import errors as E
from dtp.messaging._framing import encode_frame
from dtp.messaging._protocol import RpcProtocol
from dtp.messaging.pubsub import MAX_TOPIC_LENGTH, PubSubNode
from dtp.messaging.rpc import AsyncRpcClient, AsyncRpcServer, RpcClient, RpcServer
from tests.messaging.mesh import Mesh, drain
from tests.messaging.stream_pairs import Streams
from tests.messaging.stream_pairs import streams as streams  # the fixture
from tests.support.polling import wait_for


def test_a_frame_kind_that_is_not_an_int_is_refused() -> None:
    """``[10.0, ...]`` was taken for PUBLISH (10.0 == 10) and delivered; ``[12.0, ...]``
    for SUBSCRIBE. Each is a violation now, and the link goes on."""
    mesh = Mesh(2, [(0, 1)])
    try:
        sub = mesh.nodes[1].subscribe("t")
        assert mesh.nodes[0].wait_for_interest("t", timeout=10)  # node 0's writer is idle
        link = mesh.nodes[1].links[0]
        raw = mesh.socks[0]  # node 0's side: write to node 1 directly
        raw.sendall(encode_frame([10.0, os.urandom(16), "t", 3, b"float kind", None]))
        raw.sendall(encode_frame([12.0, [["u", 0]]]))
        raw.sendall(encode_frame([True, 5]))
        raw.sendall(encode_frame([10, os.urandom(16), "t", 3, b"int kind", None]))
        assert drain(sub, 1) == [b"int kind"]
        time.sleep(0.1)
        assert sub.qsize() == 0
        assert link.violations == 3
        assert "u" not in (link.remote or {})
    finally:
        mesh.close()


@pytest.mark.parametrize("topic", ["\ud800", "a\udfffb", "", "x" * (MAX_TOPIC_LENGTH + 1)])
def test_a_topic_that_is_not_valid_is_a_pubsub_error(topic: str) -> None:
    node = PubSubNode("n")
    with pytest.raises(E.PubSubError):
        node.subscribe(topic)
    with pytest.raises(E.PubSubError):
        node.publish(topic, b"x")
    node.close()


def test_topic_limits_in_bytes() -> None:
    node = PubSubNode("n")
    longest = "é" * (MAX_TOPIC_LENGTH // 2)  # 2 bytes each: exactly the cap
    sub = node.subscribe(longest)
    node.publish(longest, b"fits")
    assert sub.get(timeout=1).data == b"fits"
    with pytest.raises(E.PubSubError):
        node.subscribe(longest + "e")
    node.close()


def test_a_triangle_delivers_each_message_once_and_survives_a_node_leaving() -> None:
    mesh = Mesh(3, [(0, 1), (1, 2), (2, 0)])
    try:
        subs = [node.subscribe("tri") for node in mesh.nodes]
        mesh.settle("tri")
        for i in range(30):
            mesh.nodes[i % 3].publish("tri", bytes([i]))
        for sub in subs:
            assert sorted(drain(sub, 30)) == [bytes([i]) for i in range(30)]
        time.sleep(0.2)
        assert all(sub.qsize() == 0 for sub in subs)
        # node 2 leaves while node 0 publishes: 0 and 1 go on, each message once
        stop = threading.Event()
        sent: list[bytes] = []

        def publish() -> None:
            i = 0
            while not stop.is_set() and i < 2000:
                data = i.to_bytes(4, "big")
                mesh.nodes[0].publish("tri", data)
                sent.append(data)
                i += 1
                time.sleep(0.0005)

        publisher = threading.Thread(target=publish, daemon=True)
        publisher.start()
        time.sleep(0.1)
        mesh.nodes[2].close()  # it leaves: its links, then its streams (its owner's)
        for sock in (mesh.socks[3], mesh.socks[4]):  # node 2's ends of 1-2 and 2-0
            sock.abort("node 2 left")
        time.sleep(0.1)
        stop.set()
        publisher.join(5)
        got = drain(subs[1], len(sent), timeout=10)
        assert sorted(got) == sorted(sent)  # the direct link carries them all, once
        time.sleep(0.2)
        assert subs[1].qsize() == 0
        assert wait_for(lambda: len(mesh.nodes[0].links) == 1, 5)
        assert mesh.nodes[0].interested_links("tri") == ["0->1"]
    finally:
        mesh.close()


def test_subscribe_and_unsubscribe_race_with_publishers() -> None:
    """Subscriptions opened and closed in a loop while two threads publish: each
    subscription gets each message at most once, a closed one's get() ends with
    PubSubError, and the node's table is empty at the end."""
    node = PubSubNode("n")
    stop = threading.Event()

    def publish(tag: int) -> None:
        i = 0
        while not stop.is_set():
            node.publish("race", msgpack.packb([tag, i]))
            i += 1

    publishers = [threading.Thread(target=publish, args=(t,), daemon=True) for t in (1, 2)]
    for thread in publishers:
        thread.start()
    try:
        for _ in range(200):
            sub = node.subscribe("race", maxsize=64)
            time.sleep(0.0005)
            sub.close()
            seen = []
            while True:
                try:
                    seen.append(sub.get(timeout=1).data)
                except E.PubSubError:
                    break
                except queue.Empty:  # pragma: no cover - the marker is always queued
                    pytest.fail("get() on a closed subscription waited")
            assert len(seen) == len(set(seen)) <= 64
    finally:
        stop.set()
        for thread in publishers:
            thread.join(5)
    assert node._subs == {}
    node.close()


NOT_UTF8 = "\udc80"  # a lone surrogate: a str, but no UTF-8 for the wire


# -- 1. a method name that is no UTF-8 -----------------------------------------------------------


def _refused_as_a_bad_name(call: object) -> None:
    with pytest.raises(ValueError, match="bytes of UTF-8") as info:
        call()  # type: ignore[operator]
    assert not isinstance(info.value, TypeError | UnicodeEncodeError)


def test_a_method_name_that_is_no_utf8_is_refused_alike_on_every_path(
    streams: Streams,
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
    streams: Streams,
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
    streams: Streams,
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
    from dtp.messaging._protocol import RpcProtocol

    with pytest.raises(TypeError, match="max_events"):
        RpcProtocol(max_events=16)  # type: ignore[call-arg]
