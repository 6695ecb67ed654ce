"""Stream rules of docs/protocol.md section 10 a second implementation relies on: a
frame naming a peer stream opens every lower one, in order; an empty STREAM frame
announces a stream; and stream data on an in-order carrier must be exactly
contiguous, where a lossy carrier reassembles it. An authenticated client seals the
frames (tests/protocol/test_protocol_abuse.py's harness)."""

from __future__ import annotations

import pytest

from dtp.native.types import FRAME_RESET_STREAM, FRAME_STREAM, FRAME_STREAM_FIN, RawFrame
from dtp.protocol._events import StreamDataReceived, StreamOpened, StreamResetReceived
from dtp.protocol.connection import CloseCode
from tests.protocol.hostile_frames import run_records, send_frames
from tests.support.pairs import connect


@pytest.mark.parametrize("opener", [FRAME_STREAM, FRAME_STREAM_FIN, FRAME_RESET_STREAM])
def test_a_frame_on_a_peer_stream_opens_every_lower_one_in_order(opener: int) -> None:
    frame = (
        RawFrame(FRAME_RESET_STREAM, 6, 9, 0)
        if opener == FRAME_RESET_STREAM
        else RawFrame(opener, 6, 0, 0, b"x")
    )
    c, s, link = connect()  # IK: stream 0 is open already, by the ACCEPT
    assert send_frames(c, s, [frame], link.now) is None
    assert [e.stream_id for e in s.of(StreamOpened)] == [0, 2, 4, 6]
    if opener == FRAME_RESET_STREAM:
        assert [(e.stream_id, e.error_code) for e in s.of(StreamResetReceived)] == [(6, 9)]


def test_an_empty_stream_frame_announces_a_stream() -> None:
    c, s, link = connect(ik=False)  # XX: nothing is open before a frame says so
    sid = c.conn.open_stream()
    sent = c.conn.data_to_send(link.now)
    s.conn.receive_data(sent, link.now)
    s.drain()
    assert [e.stream_id for e in s.of(StreamOpened)] == [sid] == [0]
    assert not s.of(StreamDataReceived)
    # the record holds exactly the frame section 10.1 gives: 08 <id> 00 00
    assert len(sent) == 12 + 4 + 16


_OUT_OF_ORDER = {
    "gap": [[RawFrame(FRAME_STREAM, 0, 0, 0, b"ab")], [RawFrame(FRAME_STREAM, 0, 3, 0, b"d")]],
    "duplicate": [
        [RawFrame(FRAME_STREAM, 0, 0, 0, b"ab")],
        [RawFrame(FRAME_STREAM, 0, 0, 0, b"ab")],
    ],
    "overlap": [[RawFrame(FRAME_STREAM, 0, 0, 0, b"ab")], [RawFrame(FRAME_STREAM, 0, 1, 0, b"bc")]],
}


@pytest.mark.parametrize("case", sorted(_OUT_OF_ORDER))
def test_stream_data_on_an_in_order_carrier_must_be_exactly_contiguous(case: str) -> None:
    _, s, _ = run_records(True, _OUT_OF_ORDER[case])
    term = s.conn.termination
    assert term is not None and term.error_code == CloseCode.PROTOCOL_VIOLATION, term
    assert "out of order" in term.reason


@pytest.mark.parametrize("case", sorted(_OUT_OF_ORDER))
def test_a_lossy_carrier_reassembles_the_same_frames(case: str) -> None:
    _, s, _ = run_records(False, [*_OUT_OF_ORDER[case], [RawFrame(FRAME_STREAM, 0, 2, 0, b"cd")]])
    assert s.conn.termination is None
    assert bytes(s.data[0]) == b"abcd"


@pytest.mark.parametrize("reliable", [True, False])
def test_a_stream_arriving_whole_ends_as_one_sent_in_two_frames(reliable: bool) -> None:
    # its bytes and its end in one frame (a short call's request) take a shorter way in
    # (Connection._open_whole): the same events, the same stream state, the same counts
    whole = run_records(reliable, [[RawFrame(FRAME_STREAM_FIN, 2, 0, 0, b"call")]])
    split = run_records(
        reliable,
        [[RawFrame(FRAME_STREAM, 2, 0, 0, b"call")], [RawFrame(FRAME_STREAM_FIN, 2, 4, 0, b"")]],
    )
    (_, sw, _), (_, ss, _) = whole, split
    assert sw.conn.termination is None and ss.conn.termination is None
    assert [e.stream_id for e in sw.of(StreamOpened)] == [0, 2]
    assert [(e.stream_id, bytes(e.data), e.end_stream) for e in sw.of(StreamDataReceived)] == [
        (2, b"call", True)
    ]
    assert b"".join(bytes(e.data) for e in ss.of(StreamDataReceived)) == b"call"
    assert sw.conn.streams.by_id[2] == ss.conn.streams.by_id[2]
    for name in ("peer_opened", "conn_received", "untaken"):
        assert getattr(sw.conn.streams, name) == getattr(ss.conn.streams, name), name


def test_a_whole_stream_past_its_window_or_the_stream_limit_is_refused_as_any() -> None:
    # (run_records' windows: 1000 bytes a stream)
    _, s, _ = run_records(True, [[RawFrame(FRAME_STREAM_FIN, 2, 0, 0, b"x" * 1001)]])
    term = s.conn.termination
    assert term is not None and term.error_code == CloseCode.FLOW_CONTROL_ERROR
    c, s, link = connect(max_streams=2)  # stream 0 and one more
    assert send_frames(c, s, [RawFrame(FRAME_STREAM_FIN, 2, 0, 0, b"ok")], link.now) is None
    term = send_frames(c, s, [RawFrame(FRAME_STREAM_FIN, 4, 0, 0, b"no")], link.now)
    assert term is not None and "too many streams" in term.reason
    assert [e.stream_id for e in s.of(StreamOpened)] == [0, 2]
