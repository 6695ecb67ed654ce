"""Records for the established-stream fast path (``Lane.take``), shared by its tests."""

from __future__ import annotations

from typing import Any

from dtp.native.types import TakeResult

SID = 4
BIG = 1 << 40


def take(lane: Any, buf: bytes, dst: bytearray, offset: int = 0, **limits: int) -> TakeResult:
    """``lane.take`` of stream ``SID`` into ``dst``, unlimited but for the ``limits`` given."""
    return lane.take(
        buf,
        SID,
        offset,
        limits.get("stream_limit", BIG),
        limits.get("conn_received", 0),
        limits.get("conn_limit", BIG),
        dst,
    )
