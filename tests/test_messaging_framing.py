"""Frame decoding: FrameDecoder.frames (whole frames sliced straight out of a read) gives
exactly what feed + next give, for any split of the input, any buffer type and any cap
(oversized frames skipped and reported with their head)."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from dtp.messaging.framing import HEAD_KEEP, FrameDecoder, Oversized

_AS = {"bytes": bytes, "bytearray": bytearray, "memoryview": memoryview}


def _split(wire: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(wire) + 1) for c in cuts})
    pieces, last = [], 0
    for point in [*points, len(wire)]:
        pieces.append(wire[last:point])
        last = point
    return pieces


@given(
    bodies=st.lists(st.binary(max_size=80), max_size=12),
    tail=st.binary(max_size=3),
    cap=st.integers(1, 64),
    cuts=st.lists(st.integers(0, 4096), max_size=8),
    kinds=st.lists(st.sampled_from(sorted(_AS)), min_size=1, max_size=4),
)
def test_frames_match_feed_and_next(
    bodies: list[bytes], tail: bytes, cap: int, cuts: list[int], kinds: list[str]
) -> None:
    wire = b"".join(struct.pack(">I", len(b)) + b for b in bodies) + tail
    pieces = _split(wire, cuts)
    reference, fast = FrameDecoder(cap), FrameDecoder(cap)
    by_next: list[bytes | Oversized] = []
    by_frames: list[bytes | Oversized] = []
    for i, piece in enumerate(pieces):
        reference.feed(piece)
        while (item := reference.next()) is not None:
            by_next.append(item)
        by_frames += fast.frames(_AS[kinds[i % len(kinds)]](piece))
    expected = [b if len(b) <= cap else Oversized(len(b), b[:HEAD_KEEP]) for b in bodies]
    assert by_frames == by_next == expected
    assert all(type(item) is bytes for item in by_frames if not isinstance(item, Oversized))
    assert fast.buffered == reference.buffered == len(tail)


def test_frames_keep_a_partial_frame_for_the_next_read() -> None:
    decoder = FrameDecoder(100)
    first, second = b"\x00\x00\x00\x02ab\x00\x00\x00\x03c", b"de\x00\x00\x00\x01f"
    assert decoder.frames(first) == [b"ab"]
    assert decoder.buffered == 5
    assert decoder.frames(second) == [b"cde", b"f"]
    assert decoder.buffered == 0
