"""A message msgpack packs but the peer cannot unpack -- a map with an array key, which
a Python tuple key becomes -- whose head still names its request: the request is
answered at once (or the call it answers fails at once), not left to its deadline."""

from __future__ import annotations

import time

import msgpack
import pytest

from dtp.messaging import errors as E
from dtp.messaging._protocol import (
    ErrorReceived,
    ProtocolViolation,
    RpcProtocol,
)
from dtp.messaging.rpc import RpcServer
from tests.messaging.rpc_world import Served


def _frame(message: object) -> bytes:
    body = msgpack.packb(message, use_bin_type=True)
    return len(body).to_bytes(4, "big") + body


def test_the_protocol_answers_an_undecodable_request_by_its_id() -> None:
    server = RpcProtocol()
    server.receive_data(_frame([0, 7, "echo", {(1, 2): 3}, 0, None]))
    (event,) = server.events()
    assert isinstance(event, ProtocolViolation) and event.request_id == 7
    answer = server.data_to_send()
    assert msgpack.unpackb(answer[4:])[:3] == [2, 7, E.PARSE_ERROR]
    # and a complaint about a frame whose head names nothing stays id-less
    server.receive_data(_frame([9, {(1,): 2}]))
    assert msgpack.unpackb(server.data_to_send()[4:])[1] is None


def test_the_protocol_fails_our_call_on_an_undecodable_answer() -> None:
    client = RpcProtocol()
    request_id = client.send_request("echo", None, now=0.0, timeout=60)
    client.receive_data(_frame([1, request_id, {(1, 2): 3}, None]), 0.0)
    events = client.events()
    assert [type(e) for e in events] == [ProtocolViolation, ErrorReceived]
    assert isinstance(events[1], ErrorReceived) and events[1].request_id == request_id
    assert not client.is_pending(request_id)


@pytest.mark.parametrize("workers", [0, 2])
def test_calls_with_tuple_keys_fail_at_once_both_ways(workers: int) -> None:
    """A request with a tuple key fails its call at once (not a complaint with a nil id,
    the call waiting for its deadline); so does a result with a tuple key, at the
    client."""
    rpc = RpcServer(workers=workers)
    rpc.register("echo", lambda p: p)
    rpc.register("tuple_key", lambda p: {(1, 2): 3})
    s = Served(rpc)
    try:
        client = s.connect()
        started = time.monotonic()
        # a call left to its deadline would take 60 s each
        with pytest.raises(E.ParseError):
            client.call("echo", {(1, 2): 3}, timeout=60)
        with pytest.raises(E.MalformedMessage):
            client.call("tuple_key", None, timeout=60)
        assert time.monotonic() - started < 30
        assert client.call("echo", {"fine": [1, 2]}, timeout=5) == {"fine": [1, 2]}
    finally:
        s.close()
