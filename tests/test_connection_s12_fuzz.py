"""Random frame sequences from a peer that holds the session keys: whatever it seals,
the connection takes it, ignores it, or closes with a protocol code; nothing escapes
``receive_data`` as an exception, on either carrier kind, with or without the stream
data handler (its fast path)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dtp import _core
from dtp._types import (
    FRAME_ACK,
    FRAME_CLOSE,
    FRAME_CONTROL,
    FRAME_DATAGRAM,
    FRAME_MAX_DATA,
    FRAME_MAX_STREAM_DATA,
    FRAME_MAX_STREAMS,
    FRAME_PING,
    FRAME_RECEIPT,
    FRAME_RESET_STREAM,
    FRAME_STOP_SENDING,
    FRAME_STREAM,
    FRAME_STREAM_FIN,
    RawFrame,
)
from dtp.connection import CloseCode
from tests.test_connection import _sealed_by, connect

_BIG = st.sampled_from([0, 1, 2, 16383, 16384, 65536, 2**30, 2**62 - 1])
_SID = st.sampled_from([0, 1, 2, 3, 4, 6, 8, 10, 2**62 - 1])
_OFFSET = st.sampled_from([0, 0, 1, 100, 1000, 60000, 65535, 70000])
_DATA = st.sampled_from([b"", b"z", b"z" * 100, b"z" * 1000])

_KINDS = st.sampled_from([1, 2, 3, 16])
_FRAMES = st.one_of(
    st.builds(lambda s, o, d: RawFrame(FRAME_STREAM, s, o, 0, d), _SID, _OFFSET, _DATA),
    st.builds(lambda s, o, d: RawFrame(FRAME_STREAM_FIN, s, o, 0, d), _SID, _OFFSET, _DATA),
    st.builds(lambda s, e, f: RawFrame(FRAME_RESET_STREAM, s, e, f), _SID, _BIG, _OFFSET),
    st.builds(lambda s, e: RawFrame(FRAME_STOP_SENDING, s, e), _SID, _BIG),
    st.builds(lambda s, m: RawFrame(FRAME_MAX_STREAM_DATA, s, m), _SID, _BIG),
    st.builds(lambda m: RawFrame(FRAME_MAX_DATA, m), _BIG),
    st.builds(lambda m: RawFrame(FRAME_MAX_STREAMS, m), _BIG),
    st.builds(
        lambda hi, width, delay: RawFrame(FRAME_ACK, c=delay, ranges=((max(0, hi - width), hi),)),
        st.integers(0, 40),
        st.integers(0, 5),
        _BIG,
    ),
    st.builds(
        lambda k, d: RawFrame(FRAME_CONTROL, k, 0, 0, d), st.sampled_from([1, 2, 3, 16]), _DATA
    ),
    st.builds(lambda d: RawFrame(FRAME_DATAGRAM, 0, 0, 0, d), _DATA),
    st.builds(lambda d: RawFrame(FRAME_RECEIPT, 0, 0, 0, d), _DATA),
    st.builds(lambda c, d: RawFrame(FRAME_CLOSE, c, 0, 0, d), _BIG, _DATA),
    st.just(RawFrame(FRAME_PING)),
)

_PROTOCOL_CODES = {
    CloseCode.PROTOCOL_VIOLATION,
    CloseCode.FRAME_ENCODING_ERROR,
    CloseCode.FLOW_CONTROL_ERROR,
    CloseCode.HANDSHAKE_FAILED,  # an AUTH frame (kind 1) the server cannot verify
}


@settings(max_examples=60, deadline=None)
@given(
    records=st.lists(st.lists(_FRAMES, min_size=1, max_size=3), min_size=1, max_size=12),
    reliable=st.booleans(),
    ik=st.booleans(),
    handler=st.booleans(),
)
def test_any_sealed_frames_are_taken_ignored_or_a_typed_close(
    records: list[list[RawFrame]], reliable: bool, ik: bool, handler: bool
) -> None:
    c, s, link = connect(
        reliable_carrier=reliable,
        ik=ik,
        stream_window=65536,
        connection_window=131072,
        max_streams=4,
    )
    if handler:
        s.conn.stream_data_handler = lambda sid, data, end: None
    now = link.now
    for frames in records:
        s.conn.receive_data(_sealed_by(c.conn, _core.encode_frames(frames)), now)
        s.drain()
        s.conn.data_to_send(now)
        now += 0.01
        s.conn.handle_timer(now)
        if s.conn.closed:
            break
    term = s.conn.termination
    if term is not None and not term.by_peer:
        assert term.error_code in _PROTOCOL_CODES, term
