"""The RPC protocol's fast path against its general path (hypothesis): begin_request,
take_response, take_request / admit_request and response_frame / error_frame send,
settle and report exactly what send_request, receive_data and send_response /
send_error do -- or take nothing and leave the protocol as it was."""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtp.messaging import errors as E
from dtp.messaging._protocol import (
    MAX_ID,
    RequestReceived,
    ResponseReceived,
    RpcProtocol,
)

PACK = msgpack.Packer(use_bin_type=True).pack


def frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


def norm(events: list[Any]) -> list[Any]:
    """Events as comparable tuples (errors by type, text and data: exceptions compare
    by identity)."""
    out = []
    for event in events:
        fields = []
        for f in dataclasses.fields(event):
            v = getattr(event, f.name)
            if isinstance(v, BaseException):
                v = (type(v), str(v), getattr(v, "data", None))
            fields.append(v)
        out.append((type(event), fields))
    return out


def same(a: Any, b: Any) -> bool:
    """Equal, with the same types all the way down (1 == 1.0 == True in Python)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, float) and a != a:
        return b != b
    return bool(a == b)


SIMPLE = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(max_size=300)
    | st.sampled_from(["", "a" * 31, "a" * 32, "é" * 200])
    | st.sampled_from([b"", b"\x00" * 255, b"\x01" * 256])
)
VALUES = st.recursive(
    SIMPLE,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@given(st.lists(st.tuples(st.text(min_size=1, max_size=64), VALUES), min_size=1, max_size=5))
def test_begin_request_frames_what_send_request_queues(calls: list[tuple[str, Any]]) -> None:
    fast, general = RpcProtocol(first_id=7), RpcProtocol(first_id=7)
    for method, params in calls:
        fast_id, data = fast.begin_request(method, params, 1.0, 2.5)
        general_id = general.send_request(method, params, now=1.0, timeout=2.5)
        assert fast_id == general_id and data == general.data_to_send()
        assert fast.is_pending(fast_id)
        assert fast.get_timer() is None or len(calls) > 1  # no timer until track()
        fast.track(fast_id)
        assert fast.get_timer() == general.get_timer() == 3.5
    fresh = RpcProtocol()
    fresh.begin_request("m", None, 0.0, 1.0)
    assert fresh.get_timer() is None
    for method, bad in (("", None), ("m", -1.0)):
        for proto in (fast, general):
            with pytest.raises((E.MalformedMessage, ValueError)):
                if proto is fast:
                    proto.begin_request(method, None, 0.0, bad)
                else:
                    proto.send_request(method, None, timeout=bad)


@given(st.lists(st.tuples(st.text(min_size=1, max_size=64), VALUES), min_size=1, max_size=5))
def test_begin_request_tracked_times_out_as_send_request(calls: list[tuple[str, Any]]) -> None:
    """``tracked``: the request has its timer at once, as track() gives it, and its
    deadline ends it as send_request's (events and CANCEL); no timer without one."""
    tracked, general = RpcProtocol(first_id=7), RpcProtocol(first_id=7)
    for i, (method, params) in enumerate(calls):
        tracked.begin_request(method, params, float(i), 2.5, tracked=True)
        general.send_request(method, params, now=float(i), timeout=2.5)
        assert tracked.get_timer() == general.get_timer() == 2.5  # (the first's)
    general.data_to_send()
    for proto in (tracked, general):
        proto.handle_timer(3.5 + len(calls))
    assert norm(tracked.events()) == norm(general.events()) != []
    assert tracked.data_to_send() == general.data_to_send()
    fresh = RpcProtocol()
    request_id, _ = fresh.begin_request("m", None, 0.0, None, tracked=True)
    assert fresh.get_timer() is None and fresh.is_pending(request_id)


def responses() -> st.SearchStrategy[bytes]:
    """What a client may read after a request: its answer (of any value, meta nil or a
    map), another id's, an error, a notification, garbage, several frames, a part."""
    one = st.one_of(
        st.builds(lambda v: PACK([1, 1, v, None]), VALUES),
        st.builds(lambda v: PACK([1, 1, v, {"k": 1}]), VALUES),
        st.builds(lambda i, v: PACK([1, i, v, None]), st.integers(0, 3), VALUES),
        st.just(PACK([2, 1, -32603, "boom", None])),
        st.just(b"\x94\x01\xcc\x01\xa1x\xc0"),  # the id in a longer form than needed
        st.just(b"\xdc\x00\x04\x01\x01\xa1x\xc0"),  # the array in a longer form
        st.just(PACK([3, "note", [1], None])),
        st.binary(max_size=20),
    )
    return st.builds(
        lambda bodies, cut: b"".join(frame(b) for b in bodies)[: cut or None],
        st.lists(one, min_size=1, max_size=3),
        st.integers(0, 40),
    )


@given(responses())
def test_take_response_is_receive_data(data: bytes) -> None:
    fast, general = RpcProtocol(max_message_size=4096), RpcProtocol(max_message_size=4096)
    request_id, _ = fast.begin_request("m", None, 0.0, None)
    general.send_request("m", None)
    general.data_to_send()
    got = fast.take_response(request_id, data)
    general.receive_data(data, 0.0)
    expected = general.events()
    if got is not None:
        (event,) = expected
        assert isinstance(event, ResponseReceived) and event.request_id == request_id
        assert same(got[0], event.result)  # (a response's meta is not kept)
        assert fast.events() == [] and fast.in_flight == 0
    else:  # nothing taken: the general path goes on from there
        assert fast.in_flight == 1
        fast.receive_data(data, 0.0)
        assert norm(fast.events()) == norm(expected)
    assert fast.in_flight == general.in_flight
    assert fast.data_to_send() == general.data_to_send()


def requests() -> st.SearchStrategy[bytes]:
    one = st.one_of(
        st.builds(
            lambda i, m, v, t: PACK([0, i, m, v, t, None]),
            st.integers(-1, MAX_ID + 1),
            st.text(max_size=70) | st.integers(-5, 5),
            VALUES,
            st.integers(-1, 2**32),
        ),
        st.builds(lambda v: PACK([0, 5, "m", v, 0, {"r": b"x"}]), VALUES),
        st.just(PACK([4, 5])),
        st.just(b"\x96\x00\xcc\x05\xa1m\xc0\x00\xc0"),  # the id in a longer form
        st.just(b"\xdc\x00\x06\x00\x05\xa1m\xc0\x00\xc0"),  # the array in a longer form
        st.binary(max_size=20),
    )
    return st.builds(
        lambda bodies, cut: b"".join(frame(b) for b in bodies)[: cut or None],
        st.lists(one, min_size=1, max_size=3),
        st.integers(0, 40),
    )


@given(requests(), st.booleans())
def test_take_request_is_receive_data(data: bytes, busy: bool) -> None:
    fast, general = RpcProtocol(max_message_size=4096), RpcProtocol(max_message_size=4096)
    if busy:  # the same request id already pending on both
        for proto in (fast, general):
            proto.receive_data(frame(PACK([0, 5, "m", None, 0, None])), 0.0)
            proto.events()
    message = fast.take_request(data)
    general.receive_data(data, 1.0)
    expected = general.events()
    if message is not None:
        (event,) = expected
        assert isinstance(event, RequestReceived)
        _, request_id, method, params, timeout_ms, meta = message
        assert (request_id, method, meta) == (event.request_id, event.method, event.meta)
        assert same(params, event.params)
        assert event.deadline == (None if timeout_ms == 0 else 1.0 + timeout_ms / 1000)
        assert fast.events() == []
        assert fast.pending_incoming + 1 == general.pending_incoming
        # answered at once: the answer the general path gives
        general.send_response(request_id, params)
        assert fast.response_frame(request_id, params) == general.data_to_send()
        # or handed back: then it is the general path's event
        fast.admit_request(message, 1.0)
        assert norm(fast.events()) == norm(expected)
        assert fast.pending_incoming == general.pending_incoming + 1  # now pending
    else:  # nothing taken: the general path goes on from there
        fast.receive_data(data, 1.0)
        assert norm(fast.events()) == norm(expected)
        assert fast.data_to_send() == general.data_to_send()
        assert fast.pending_incoming == general.pending_incoming


@given(VALUES)
def test_response_and_error_frames_match_the_general_path(value: Any) -> None:
    fast, general = RpcProtocol(max_message_size=200), RpcProtocol(max_message_size=200)
    general.receive_data(frame(PACK([0, 9, "m", None, 0, None])), 0.0)
    general.events()
    general.send_response(9, value)
    assert fast.response_frame(9, value) == general.data_to_send()  # too large: an error
    general.receive_data(frame(PACK([0, 10, "m", None, 0, None])), 0.0)
    general.send_error(10, E.INVALID_PARAMS, "bad " * 30, value)
    assert fast.error_frame(10, E.INVALID_PARAMS, "bad " * 30, value) == general.data_to_send()


def test_response_frame_of_an_unencodable_result() -> None:
    fast, general = RpcProtocol(), RpcProtocol()
    general.receive_data(frame(PACK([0, 3, "m", None, 0, None])), 0.0)
    general.send_response(3, object())
    assert fast.response_frame(3, object()) == general.data_to_send()


# (bodies of 511 to 513 bytes: requests of 496 to 498 bytes of params, responses of
# 504 to 506: each side of the prefixes made once)
@pytest.mark.parametrize("size", [0, 1, 400, 496, 497, 498, 504, 505, 506, 5000])
def test_the_parts_of_a_frame_are_its_prefix_and_body(size: int) -> None:
    payload = b"x" * size
    fast, general = RpcProtocol(first_id=5), RpcProtocol(first_id=5)
    request_id, head, body = fast.begin_request_parts("echo", payload, 1.0, 2.0)
    assert request_id == general.send_request("echo", payload, now=1.0, timeout=2.0)
    assert head == len(body).to_bytes(4, "big") and head + body == general.data_to_send()
    general.receive_data(frame(PACK([0, 9, "m", None, 0, None])), 0.0)
    general.events()
    general.send_response(9, payload)
    head, body = fast.response_parts(9, payload)
    assert head == len(body).to_bytes(4, "big") and head + body == general.data_to_send()


def test_the_parts_of_an_error_answer_are_the_whole_frame() -> None:
    # a result that cannot be sent: its ERROR frame comes whole after an empty prefix
    fast = RpcProtocol(max_message_size=100)
    for result in (object(), b"x" * 200):
        head, body = fast.response_parts(3, result)
        assert head == b"" and body == fast.response_frame(3, result)
        assert body[4:6] == b"\x95\x02"  # [ERROR, id, code, text, None]
