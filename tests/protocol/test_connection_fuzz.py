"""Random frame sequences from a peer that holds the session keys: whatever it seals,
the connection takes it, ignores it, or closes with a protocol code; nothing escapes
``receive_data`` as an exception, on either carrier kind, with or without the stream
data handler (its fast path)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dtp.native import core as _core
from dtp.native.types import (
    RawFrame,
)
from dtp.protocol.connection import CloseCode
from dtp.testing.strategies import any_frame
from tests.support.pairs import connect, sealed_by

_FRAMES = any_frame(
    big=[0, 1, 2, 16383, 16384, 65536, 2**30, 2**62 - 1],
    stream_ids=[0, 1, 2, 3, 4, 6, 8, 10, 2**62 - 1],
    offsets=[0, 0, 1, 100, 1000, 60000, 65535, 70000],
    data=[b"", b"z", b"z" * 100, b"z" * 1000],
    control_kinds=[1, 2, 3, 16],
    highest_ack=40,
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
        s.conn.receive_data(sealed_by(c.conn, _core.encode_frames(frames)), now)
        s.drain()
        s.conn.data_to_send(now)
        now += 0.01
        s.conn.handle_timer(now)
        if s.conn.closed:
            break
    term = s.conn.termination
    if term is not None and not term.by_peer:
        assert term.error_code in _PROTOCOL_CODES, term
