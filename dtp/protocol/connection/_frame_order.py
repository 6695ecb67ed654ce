"""Which frames a record may hold at each point of a connection's life, as
:class:`~dtp.protocol.connection._core.Connection` checks a record's frames before it
takes any (docs/protocol.md 8.4, 8.5 and 9): before the client's AUTH, before a lossy
server's ACCEPT, and ahead of a frame a record is dropped at."""

from __future__ import annotations

from dtp.native import types as t
from dtp.native.types import FRAME_CONTROL, RawFrame
from dtp.protocol._state import ControlKind

__all__ = ["allowed_before_auth", "repeat_safe_before", "stream_frame_before_accept"]

_STREAM_FRAMES = frozenset(
    {
        t.FRAME_STREAM,
        t.FRAME_STREAM_FIN,
        t.FRAME_RESET_STREAM,
        t.FRAME_STOP_SENDING,
        t.FRAME_MAX_STREAM_DATA,
    }
)


def stream_frame_before_accept(frames: list[RawFrame]) -> bool:
    """Whether a frame about a stream comes before any ACCEPT in ``frames``."""
    for frame in frames:
        if frame.type == FRAME_CONTROL and frame.a == ControlKind.ACCEPT:
            return False
        if frame.type in _STREAM_FRAMES:
            return True
    return False


#: The frames an XX server takes before the client's AUTH (section 8 of the spec).
_BEFORE_AUTH = frozenset({t.FRAME_ACK, t.FRAME_PADDING, t.FRAME_PING, t.FRAME_CLOSE})


def allowed_before_auth(frames: list[RawFrame]) -> bool:
    """Whether every frame before the first AUTH in ``frames`` (all of them if there is
    none) is one a server takes from a client not yet authenticated."""
    for frame in frames:
        if frame.type == FRAME_CONTROL and frame.a == ControlKind.AUTH:
            return True
        if frame.type not in _BEFORE_AUTH:
            return False
    return True


#: Frames whose effect is the same when a copy comes again: what a record holds before
#: a STREAM frame it is dropped at may be taken twice (the record is sent again).
#: (RESET_STREAM and STOP_SENDING are no-ops once taken; a DATAGRAM is never resent.)
_REPEAT_SAFE = frozenset(
    {
        t.FRAME_PADDING,
        t.FRAME_PING,
        t.FRAME_ACK,
        t.FRAME_STREAM,
        t.FRAME_STREAM_FIN,
        t.FRAME_MAX_DATA,
        t.FRAME_MAX_STREAM_DATA,
        t.FRAME_MAX_STREAMS,
        t.FRAME_RESET_STREAM,
        t.FRAME_STOP_SENDING,
        t.FRAME_DATAGRAM,
    }
)


def repeat_safe_before(frames: list[RawFrame], failed: RawFrame) -> bool:
    """Whether every frame of ``frames`` before ``failed`` is in :data:`_REPEAT_SAFE`."""
    for frame in frames:
        if frame is failed:
            return True
        if frame.type not in _REPEAT_SAFE:
            return False
    return False
