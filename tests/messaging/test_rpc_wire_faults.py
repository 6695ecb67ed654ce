"""RPC wire faults, sans I/O: an answer that breaks the format but names one of our
requests fails that call at once (it waited for its deadline, or for good); a bool is
no message kind even in an oversized frame's head; junk frames get a bounded number of
complaints; a result whose encoding raises anything is still answered."""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import pytest

from dtp.messaging import _protocol as protocol
from dtp.messaging import errors as E
from dtp.messaging._framing import encode_frame
from dtp.messaging._protocol import (
    ErrorReceived,
    ProtocolViolation,
    RequestReceived,
    ResponseReceived,
    RpcProtocol,
)


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize(
    "answer",
    [
        [1, "ID", "result", "meta is not a map"],
        [1, "ID", "result"],
        [1, "ID", "result", None, "extra"],
        [2, "ID", "code", "message", None],
        [2, "ID", True, "message", None],
        [2, "ID", -32603, 5, None],
        [2, "ID", -32603, "message"],
    ],
)
def test_a_broken_answer_to_our_request_fails_that_call(answer: list[Any]) -> None:
    """The call the answer names fails at once: not only a violation, leaving the call
    to wait for its deadline, or for good without one."""
    client = RpcProtocol()
    other = client.send_request("other", None)
    rid = client.send_request("m", None)
    client.data_to_send()
    client.receive_data(encode_frame([rid if x == "ID" else x for x in answer]), 0.0)
    events = client.events()
    assert isinstance(events[0], ProtocolViolation)
    assert isinstance(events[-1], ErrorReceived) and events[-1].request_id == rid
    assert isinstance(events[-1].error, E.MalformedMessage)
    assert client.in_flight == 1 and client.is_pending(other)  # nobody else's call
    # the other call is answered as usual afterwards
    client.receive_data(encode_frame([1, other, "fine", None]), 0.0)
    (done,) = client.events()
    assert isinstance(done, ResponseReceived) and done.result == "fine"
    assert client.in_flight == 0


def test_a_broken_answer_naming_no_request_of_ours_is_only_a_violation() -> None:
    client = RpcProtocol()
    rid = client.send_request("m", None)
    client.data_to_send()
    for answer in ([1, rid + 7, "r", 3], [1, True, "r", None], [2, rid + 7, "x", "m", None]):
        client.receive_data(encode_frame(answer), 0.0)
    events = client.events()
    assert all(isinstance(e, ProtocolViolation) for e in events) and len(events) == 3
    assert client.is_pending(rid)


def test_a_bool_is_no_kind_in_an_oversized_frames_head() -> None:
    """An oversized ``[true, id, ...]`` was taken for a RESPONSE (True == 1), failing
    our call ``id`` with MessageTooLarge; ``[false, id, ...]`` for a REQUEST."""
    client = RpcProtocol(max_message_size=64)
    rid = client.send_request("m", None)
    client.data_to_send()
    client.receive_data(_frame(msgpack.packb([True, rid, b"x" * 200, None])), 0.0)
    (event,) = client.events()
    assert isinstance(event, ProtocolViolation) and event.request_id is None
    assert client.is_pending(rid)
    server = RpcProtocol(max_message_size=64)
    server.receive_data(_frame(msgpack.packb([False, 9, "m", b"x" * 200, 0, None])), 0.0)
    (event,) = server.events()
    assert isinstance(event, ProtocolViolation) and event.request_id is None
    # its complaint names no id (the peer waits for no answer to it)
    sender = RpcProtocol()
    sender.receive_data(server.data_to_send(), 0.0)
    (report,) = sender.events()
    assert isinstance(report, ProtocolViolation) and report.reported is not None


def test_junk_frames_get_a_bounded_number_of_complaints() -> None:
    """Each junk frame (5 bytes) was answered with an ERROR ten times its size: a peer
    that sends junk and never reads made us queue without bound (the blocking client's
    reader then waited on its flow control, calls' deadlines and all)."""
    proto = RpcProtocol()
    junk = _frame(b"\xc1") * 10_000
    proto.receive_data(junk, 0.0)
    assert proto.violations == 10_000
    assert len(proto.events()) == 10_000  # every one is still reported locally
    out = proto.data_to_send()
    peer = RpcProtocol()
    peer.receive_data(out, 0.0)
    cap = protocol.MAX_COMPLAINTS
    assert len(peer.events()) == cap
    assert len(out) < 100 * cap
    # requests are still answered, bad ones too (their sender waits for the answer)
    proto.receive_data(encode_frame([0, 5, 7, None, 0, None]), 0.0)
    proto.receive_data(_frame(b"\xc1"), 0.0)
    peer._outgoing[5] = None
    peer.receive_data(proto.data_to_send(), 0.0)
    (answer,) = peer.events()
    assert isinstance(answer, ErrorReceived) and answer.request_id == 5


class _ItemsFail(dict):  # type: ignore[type-arg]
    """A mapping whose encoding fails as a dict another thread changes would."""

    def items(self) -> Any:
        raise RuntimeError("secret detail")


def test_a_result_whose_encoding_raises_anything_is_answered() -> None:
    """Only TypeError / ValueError / OverflowError out of msgpack were caught: any other
    (a dict subclass whose items() fails, 'dictionary changed size during iteration')
    went up out of send_response with the request already taken off the pending ones:
    no answer ever (a pool's worker), or the serving loop ended (inline). Its text
    stays private."""
    server = RpcProtocol()
    server.receive_data(encode_frame([0, 3, "m", None, 0, None]), 0.0)
    (request,) = server.events()
    assert isinstance(request, RequestReceived)
    assert server.send_response(3, _ItemsFail(a=1)) is None
    client = RpcProtocol()
    client._outgoing[3] = None
    client.receive_data(server.data_to_send(), 0.0)
    (answer,) = client.events()
    assert isinstance(answer, ErrorReceived) and isinstance(answer.error, E.InternalError)
    assert "RuntimeError" in answer.error.message and "secret" not in answer.error.message
    assert server.pending_incoming == 0
    # the fast path's frame is the same
    assert RpcProtocol().response_frame(3, _ItemsFail(a=1)) == encode_frame(
        [2, 3, E.INTERNAL_ERROR, answer.error.message, None]
    )
    # msgpack's own reasons still go back
    server.receive_data(encode_frame([0, 4, "m", None, 0, None]), 0.0)
    server.events()
    server.send_response(4, object())
    client._outgoing[4] = None
    client.receive_data(server.data_to_send(), 0.0)
    (answer,) = client.events()
    assert isinstance(answer, ErrorReceived) and "can not serialize" in str(answer.error)


def test_a_request_reusing_an_id_in_progress_leaves_the_first_running() -> None:
    """The duplicate is refused (an ERROR with that id, a violation), and the first
    request with that id is still owed its answer: it was dropped, so its handler's
    answer was never sent and its deadline forgotten."""
    server = RpcProtocol()
    server.receive_data(encode_frame([0, 7, "slow", None, 5000, None]), 0.0)
    (first,) = server.events()
    assert isinstance(first, RequestReceived) and first.request_id == 7
    server.receive_data(encode_frame([0, 7, "other", None, 0, None]), 0.0)
    (violation,) = server.events()
    assert isinstance(violation, ProtocolViolation) and violation.request_id == 7
    refusal = msgpack.unpackb(server.data_to_send()[4:])
    assert refusal[:2] == [2, 7] and "already in progress" in refusal[3]
    server.send_response(7, "done")
    answer = msgpack.unpackb(server.data_to_send()[4:])
    assert answer == [1, 7, "done", None]
