"""Frames: the twin of dtp_frames_decode / dtp_frames_encode (dtp_core/frame.c).

A record body is a sequence of frames (protocol.md, section 3). Each frame is one type
byte and then fields that are QUIC varints (RFC 9000, section 16), except PADDING, which
is a run of zero bytes. Every type but PADDING and ACK has the same shape: a fixed
number of varint fields (stored in ``a``, ``b``, ``c`` in that order) and, for the types
that carry data, a varint length and that many bytes.

This module is the readable spec: it checks the same things in the same order as the C
code, so both backends return the same frames and raise the same error codes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise

from dtp.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from dtp.native.reference._limits import (
    MAX_ACK_RANGES,
    MAX_CLOSE_REASON,
    MAX_FRAME_DATA,
    MAX_RECEIPT,
    VARINT_MAX,
)
from dtp.native.reference._records import parse_records, write_record_header
from dtp.native.reference._varint import varint_decode, varint_encode
from dtp.native.types import (
    FRAME_ACK,
    FRAME_CLOSE,
    FRAME_CONTROL,
    FRAME_DATAGRAM,
    FRAME_MAX_DATA,
    FRAME_MAX_STREAM_DATA,
    FRAME_MAX_STREAMS,
    FRAME_PADDING,
    FRAME_PING,
    FRAME_RECEIPT,
    FRAME_RESET_STREAM,
    FRAME_STOP_SENDING,
    FRAME_STREAM,
    FRAME_STREAM_FIN,
    FULL,
    NEED_MORE,
    OK,
    FrameBatch,
    RawFrame,
)


@dataclass(frozen=True)
class Layout:
    """Wire shape of a frame type other than PADDING and ACK."""

    fields: int
    """How many varint fields follow the type byte (stored in a, b, c in that order)."""
    data_cap: int | None = None
    """Largest data length, or None when the type carries no data."""


LAYOUTS: dict[int, Layout] = {
    FRAME_PING: Layout(0),
    FRAME_MAX_DATA: Layout(1),
    FRAME_MAX_STREAM_DATA: Layout(2),
    FRAME_RESET_STREAM: Layout(3),
    FRAME_STOP_SENDING: Layout(2),
    FRAME_MAX_STREAMS: Layout(1),
    FRAME_STREAM: Layout(2, MAX_FRAME_DATA),
    FRAME_STREAM_FIN: Layout(2, MAX_FRAME_DATA),
    FRAME_CLOSE: Layout(1, MAX_CLOSE_REASON),
    FRAME_RECEIPT: Layout(0, MAX_RECEIPT),
    FRAME_CONTROL: Layout(1, MAX_FRAME_DATA),
    FRAME_DATAGRAM: Layout(0, MAX_FRAME_DATA),
}
KNOWN_TYPES = frozenset((FRAME_PADDING, FRAME_ACK, *LAYOUTS))
_STREAM_TYPES = (FRAME_STREAM, FRAME_STREAM_FIN)


# --------------------------------------------------------------------------------------
# decoding


class _Short(Exception):
    """The input ends inside the current frame (TRUNCATED or NEED_MORE, per caller)."""


class _Full(Exception):
    """The current ACK frame's ranges do not fit in what is left of ``max_ranges``."""


class _Reader:
    """A cursor over the input; running past the end raises :class:`_Short`."""

    def __init__(self, view: memoryview, pos: int) -> None:
        self.view = view
        self.pos = pos

    def varint(self) -> int:
        decoded = varint_decode(self.view, self.pos)
        if decoded is None:
            raise _Short
        value, self.pos = decoded
        return value

    def take(self, size: int) -> bytes:
        if len(self.view) - self.pos < size:
            raise _Short
        data = bytes(self.view[self.pos : self.pos + size])
        self.pos += size
        return data


def _remote(code: ErrorCode) -> RemoteProtocolError:
    return RemoteProtocolError(code=code)


def _decode_ack(reader: _Reader, room: int) -> RawFrame:
    """ACK body: largest, delay, range count, first range, then (gap, length) pairs.

    Each check runs as soon as the value it needs has been read.
    """
    largest = reader.varint()
    delay = reader.varint()
    count = reader.varint()
    if count == 0:
        raise _remote(ErrorCode.FRAME_VALUE)
    if count > MAX_ACK_RANGES:
        raise _remote(ErrorCode.FRAME_SIZE)
    first = reader.varint()
    if first > largest:
        raise _remote(ErrorCode.FRAME_VALUE)
    hi, lo = largest, largest - first
    ranges = [(lo, hi)]
    for _ in range(count - 1):
        gap = reader.varint()
        if lo < gap + 2:  # next hi = lo - gap - 2 would be negative
            raise _remote(ErrorCode.FRAME_VALUE)
        hi = lo - gap - 2
        length = reader.varint()
        if length > hi:
            raise _remote(ErrorCode.FRAME_VALUE)
        lo = hi - length
        ranges.append((lo, hi))
    if count > room:
        raise _Full
    return RawFrame(FRAME_ACK, 0, 0, delay, b"", tuple(ranges))


def _decode_fields(reader: _Reader, ftype: int) -> RawFrame:
    """Any type with a :class:`Layout`: its varint fields, then its data if any."""
    layout = LAYOUTS[ftype]
    values = [reader.varint() for _ in range(layout.fields)] + [0] * (3 - layout.fields)
    a, b, c = values
    if layout.data_cap is None:
        return RawFrame(ftype, a, b, c)
    length = reader.varint()
    if length > layout.data_cap:
        raise _remote(ErrorCode.FRAME_SIZE)
    if ftype in _STREAM_TYPES and b + length > VARINT_MAX:
        raise _remote(ErrorCode.FRAME_VALUE)
    return RawFrame(ftype, a, b, c, reader.take(length))


def _padding_end(view: memoryview, pos: int) -> int:
    """End of the run of zero bytes that starts at ``pos``."""
    end = pos
    while end < len(view) and view[end] == 0:
        end += 1
    return end


def decode_frames(
    buf: bytes | bytearray | memoryview,
    complete: bool = True,
    max_frames: int = 4096,
    max_ranges: int = 4096,
) -> FrameBatch:
    """Decode the frames in ``buf`` (see ``dtp_frames_decode``).

    ``complete`` says ``buf`` is a whole record body: a frame running past its end is
    then FRAME_TRUNCATED; otherwise decoding stops before it with status NEED_MORE (so
    does a run of PADDING that reaches the end, since it may continue). Decoding stops
    with FULL when ``max_frames`` frames are decoded and input remains, or before an
    ACK whose ranges would take the total past ``max_ranges``. Malformed input raises
    :class:`~dtp.errors.RemoteProtocolError` with the code of the first failed check.
    """
    if max_frames < 0 or max_ranges < 0:
        raise LocalProtocolError("max_frames and max_ranges must be >= 0", ErrorCode.ARG)
    # views are released on every path, errors included (callers resize their buffers)
    with memoryview(buf) as base:
        flat = base if base.c_contiguous else memoryview(base.tobytes())
        with flat.cast("B") as view:
            return _decode(view, complete, max_frames, max_ranges)


def _decode(view: memoryview, complete: bool, max_frames: int, max_ranges: int) -> FrameBatch:
    frames: list[RawFrame] = []
    n_ranges = 0
    pos = 0
    status = OK
    while pos < len(view):
        if len(frames) == max_frames:
            status = FULL
            break
        ftype = view[pos]
        if ftype == FRAME_PADDING:
            end = _padding_end(view, pos)
            if end == len(view) and not complete:
                status = NEED_MORE
                break
            frames.append(RawFrame(FRAME_PADDING, end - pos))
            pos = end
            continue
        if ftype not in KNOWN_TYPES:
            raise _remote(ErrorCode.FRAME_TYPE)
        reader = _Reader(view, pos + 1)
        try:
            if ftype == FRAME_ACK:
                frame = _decode_ack(reader, max_ranges - n_ranges)
            else:
                frame = _decode_fields(reader, ftype)
        except _Short:
            if complete:
                raise _remote(ErrorCode.FRAME_TRUNCATED) from None
            status = NEED_MORE
            break
        except _Full:
            status = FULL
            break
        frames.append(frame)
        n_ranges += len(frame.ranges)
        pos = reader.pos
    return FrameBatch(frames, status, pos)


# --------------------------------------------------------------------------------------
# encoding


def _local(code: ErrorCode) -> LocalProtocolError:
    return LocalProtocolError(code=code)


def _uvarint(value: int) -> bytes:
    encoded = varint_encode(value)
    assert encoded is not None  # the caller has range-checked value
    return encoded


def _check_ack(frame: RawFrame) -> None:
    """Steps 2-5 for ACK (see :func:`encode_frames`)."""
    if frame.a != 0 or frame.b != 0 or frame.data:
        raise _local(ErrorCode.FRAME_VALUE)
    if not 0 <= frame.c <= VARINT_MAX:
        raise _local(ErrorCode.VARINT)
    if not frame.ranges:
        raise _local(ErrorCode.FRAME_VALUE)
    if len(frame.ranges) > MAX_ACK_RANGES:
        raise _local(ErrorCode.FRAME_SIZE)
    prev_lo: int | None = None
    for lo, hi in frame.ranges:
        if not 0 <= lo <= hi <= VARINT_MAX:
            raise _local(ErrorCode.FRAME_VALUE)
        if prev_lo is not None and hi + 2 > prev_lo:
            raise _local(ErrorCode.FRAME_VALUE)
        prev_lo = lo


def _encode_ack(frame: RawFrame) -> bytes:
    ranges = frame.ranges
    largest_lo, largest = ranges[0]
    out = [bytes((FRAME_ACK,))]
    out += map(_uvarint, (largest, frame.c, len(ranges), largest - largest_lo))
    for (prev_lo, _), (lo, hi) in pairwise(ranges):
        out += map(_uvarint, (prev_lo - hi - 2, hi - lo))
    return b"".join(out)


def _check_fields(frame: RawFrame, layout: Layout) -> None:
    """Steps 2-5 for types with a :class:`Layout` (see :func:`encode_frames`)."""
    values = (frame.a, frame.b, frame.c)
    if any(v != 0 for v in values[layout.fields :]) or frame.ranges:
        raise _local(ErrorCode.FRAME_VALUE)
    if layout.data_cap is None and frame.data:
        raise _local(ErrorCode.FRAME_VALUE)
    for value in values[: layout.fields]:
        if not 0 <= value <= VARINT_MAX:
            raise _local(ErrorCode.VARINT)
    if layout.data_cap is None:
        return
    if len(frame.data) > layout.data_cap:
        raise _local(ErrorCode.FRAME_SIZE)
    if frame.type in _STREAM_TYPES and frame.b + len(frame.data) > VARINT_MAX:
        raise _local(ErrorCode.FRAME_VALUE)


def _encode_fields(frame: RawFrame, layout: Layout) -> bytes:
    values = (frame.a, frame.b, frame.c)[: layout.fields]
    out = [bytes((frame.type,)), *map(_uvarint, values)]
    if layout.data_cap is not None:
        out += [_uvarint(len(frame.data)), bytes(frame.data)]
    return b"".join(out)


def encode_frame(frame: RawFrame) -> bytes:
    """Validate and encode one frame; raises LocalProtocolError on the first failed check."""
    if type(frame.data) is not bytes:
        # its bytes: len() of a buffer of wider items counts items
        frame = frame._replace(data=bytes(frame.data))
    if frame.type == FRAME_PADDING:
        if frame.b != 0 or frame.c != 0 or frame.data or frame.ranges:
            raise _local(ErrorCode.FRAME_VALUE)
        if not 1 <= frame.a <= MAX_FRAME_DATA:
            raise _local(ErrorCode.FRAME_VALUE)
        return bytes(frame.a)
    if frame.type == FRAME_ACK:
        _check_ack(frame)
        return _encode_ack(frame)
    layout = LAYOUTS.get(frame.type)
    if layout is None:
        raise _local(ErrorCode.FRAME_TYPE)
    _check_fields(frame, layout)
    return _encode_fields(frame, layout)


def encode_frames(frames: Sequence[RawFrame]) -> bytes:
    """Encode frames canonically (minimal varints); see ``dtp_frames_encode``.

    Frames are checked one after the other, each in this order (protocol.md, 3.3):

    1. the type is known, else FRAME_TYPE;
    2. fields the type does not use are 0, its data is empty if it carries none, and
       only an ACK has ranges, else FRAME_VALUE;
    3. PADDING: 1 <= a <= MAX_FRAME_DATA, else FRAME_VALUE; other types: each varint
       field the type uses (a, b, c in that order; ACK: the delay c) is in
       0 ..= 2**62 - 1, else VARINT;
    4. data length at most the type's cap, else FRAME_SIZE; ACK: no ranges is
       FRAME_VALUE, more than MAX_ACK_RANGES is FRAME_SIZE;
    5. STREAM / STREAM_FIN: offset + length <= 2**62 - 1, else FRAME_VALUE; ACK: each
       range, largest first, has 0 <= lo <= hi <= 2**62 - 1 and hi <= previous lo - 2,
       else FRAME_VALUE.

    The first failing check raises :class:`~dtp.errors.LocalProtocolError` with its code.
    """
    return b"".join([encode_frame(frame) for frame in frames])


__all__ = [
    "KNOWN_TYPES",
    "LAYOUTS",
    "Layout",
    "decode_frames",
    "encode_frame",
    "encode_frames",
    "parse_records",
    "write_record_header",
]
