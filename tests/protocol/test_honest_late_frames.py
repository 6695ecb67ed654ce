"""What the protocol-violation checks must still take from an honest peer:
late copies on a lossy carrier after a stream both finished and was reset, frames on
our streams opened and forgotten after a reset. Driven through a pair of real
Connections (real handshake) in memory, as tests/protocol/test_protocol_abuse.py does."""

from __future__ import annotations

from dtp.native.types import (
    FRAME_MAX_STREAM_DATA,
    FRAME_RESET_STREAM,
    FRAME_STOP_SENDING,
    FRAME_STREAM,
    FRAME_STREAM_FIN,
    RawFrame,
)
from dtp.protocol._events import StreamDataReceived
from tests.protocol.hostile_frames import send_frames
from tests.support.pairs import connect


def test_late_copies_after_a_fin_and_a_reset_at_its_size_are_taken() -> None:
    # lossy: the peer's FIN (delivered), then its reset at the FIN's size (the sender
    # may reset a stream whose FIN is unacknowledged), then late copies of the data and
    # of the FIN: all within the final size, none a violation
    c, s, link = connect(reliable_carrier=False)
    records = [
        [RawFrame(FRAME_STREAM, 0, 0, 0, b"a" * 10)],
        [RawFrame(FRAME_STREAM_FIN, 0, 10, 0, b"b" * 10)],
        [RawFrame(FRAME_RESET_STREAM, 0, 7, 20)],
        [RawFrame(FRAME_STREAM, 0, 0, 0, b"a" * 10)],
        [RawFrame(FRAME_STREAM_FIN, 0, 10, 0, b"b" * 10)],
        [RawFrame(FRAME_RESET_STREAM, 0, 7, 20)],
    ]
    for frames in records:
        assert send_frames(c, s, frames, link.now) is None
    data = b"".join(e.data for e in s.of(StreamDataReceived) if e.stream_id == 0)
    assert data == b"a" * 10 + b"b" * 10


def test_frames_on_a_stream_of_ours_reset_and_forgotten_are_taken() -> None:
    # the server opens stream 1, resets it (forgotten); the client's STOP_SENDING and
    # MAX_STREAM_DATA for it cross the reset: late frames, not a violation
    c, s, link = connect(reliable_carrier=False)
    sid = s.conn.open_stream()
    s.conn.send_stream_data(sid, b"x" * 5)
    s.conn.reset_stream(sid, 3)
    s.drain()
    for frame in (
        RawFrame(FRAME_STOP_SENDING, sid, 1),
        RawFrame(FRAME_MAX_STREAM_DATA, sid, 1 << 20),
        RawFrame(FRAME_RESET_STREAM, sid, 1, 0),
    ):
        assert send_frames(c, s, [frame], link.now) is None
