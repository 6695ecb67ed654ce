"""Speaking the graph sync protocol by hand in tests: hostile and silent peers."""

from __future__ import annotations

import struct

import msgpack


def frame(message: list[object]) -> bytes:
    """One sync message as it goes on the stream: a u32 length, then msgpack."""
    body: bytes = msgpack.packb(message, use_bin_type=True)
    return struct.pack(">I", len(body)) + body
