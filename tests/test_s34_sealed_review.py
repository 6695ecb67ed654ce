"""Review of the messaging byte layer (framing) and sealed messages: caps that are not
ints, a stream that ends inside a frame, a sealed message to an unusable key, and a
size checked before the bytes are copied."""

from __future__ import annotations

import struct
import threading
import tracemalloc

import pytest

from dtp.errors import RemoteProtocolError
from dtp.keys import HostIdentity
from dtp.messaging import errors as E
from dtp.messaging.framing import FrameDecoder, encode_frame, read_frames
from dtp.messaging.sealed import MAX_SEALED, open_sealed, seal


class _Reads:
    """A blocking stream's ``recv`` over fixed chunks; b"" (the end) after them."""

    def __init__(self, chunks: list[bytes], stop: threading.Event | None = None) -> None:
        self._chunks = list(chunks)
        self._stop = stop

    def recv(self, size: int) -> bytes:
        if not self._chunks:
            if self._stop is not None:
                self._stop.set()  # a local stop, as _PatientReads ends the reads
            return b""
        return self._chunks.pop(0)


@pytest.mark.parametrize("cap", [float("nan"), True, 1.5, 2.0, "10", None])
def test_frame_decoder_cap_must_be_an_int(cap: object) -> None:
    # a NaN cap compared False with every length: no frame was ever over it, and a peer
    # announcing 4 GiB made the decoder buffer everything it sent
    with pytest.raises(TypeError, match="max_size"):
        FrameDecoder(cap)  # type: ignore[arg-type]


@pytest.mark.parametrize("cap", [float("nan"), True, 1.5, "10", None])
def test_encode_frame_cap_must_be_an_int(cap: object) -> None:
    # (NaN let any message through, True capped it at one byte)
    with pytest.raises(TypeError, match="max_size"):
        encode_frame(b"x", cap)  # type: ignore[arg-type]


@pytest.mark.parametrize("cap", [0, -1])
def test_encode_frame_cap_out_of_range_is_a_value_error(cap: int) -> None:
    # not PayloadTooLarge: the message is not too large, the cap is not a cap
    with pytest.raises(ValueError, match="max_size") as info:
        encode_frame(b"x", cap)
    assert not isinstance(info.value, E.PayloadTooLarge)


@pytest.mark.parametrize(
    "tail",
    [
        encode_frame([1, 2, 3])[:-1],  # a body cut short
        b"\x00\x00",  # a header cut short
        struct.pack(">I", 1000) + b"x" * 10,  # an oversized frame being skipped
    ],
    ids=["body", "header", "skipping"],
)
def test_read_frames_end_inside_a_frame_is_an_error(tail: bytes) -> None:
    first = encode_frame("whole")
    frames = read_frames(_Reads([first + tail]), 100, threading.Event())
    assert next(frames) == first[4:]
    # the peer went away mid-frame: a truncated stream, not a clean end
    with pytest.raises(E.MalformedMessage, match="inside a frame") as info:
        next(frames)
    assert isinstance(info.value, RemoteProtocolError)
    # a stream that ends between frames still ends quietly, as does a local stop
    assert list(read_frames(_Reads([first]), 100, threading.Event())) == [first[4:]]
    stop = threading.Event()
    assert list(read_frames(_Reads([first + tail], stop), 100, stop)) == [first[4:]]


@pytest.mark.parametrize(
    ("chunk", "error"), [(0, ValueError), (-1, ValueError), (True, TypeError), (1.5, TypeError)]
)
def test_read_frames_chunk_is_checked(chunk: object, error: type[Exception]) -> None:
    # recv(0) returns b"": the stream looked ended, and its frames were never read
    with pytest.raises(error, match="chunk"):
        next(read_frames(_Reads([encode_frame(1)]), 100, threading.Event(), chunk))  # type: ignore[arg-type]


def test_seal_to_a_low_order_key_names_the_key() -> None:
    # the all-zero point makes every shared secret zero: cryptography's "Error computing
    # shared key." said nothing of which argument was wrong
    for sender in (None, HostIdentity.generate()):
        with pytest.raises(ValueError, match="recipient"):
            seal(b"\x00" * 32, b"hi", sender=sender)


def test_open_sealed_checks_the_size_before_copying() -> None:
    identity = HostIdentity.generate()
    big = memoryview(bytearray(32 * MAX_SEALED))
    tracemalloc.start()
    try:
        with pytest.raises(E.MalformedSealed):
            open_sealed(identity, big)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MAX_SEALED
