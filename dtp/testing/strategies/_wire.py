"""Strategies for what crosses the wire (docs/protocol.md §2-3): frames and records,
well-formed and hostile.

- :func:`frames`, :func:`frame_bodies` -- frames every encoder accepts (values in their
  ranges, data within its caps, ACK ranges largest first and never adjacent), and the
  plaintext of a DATA record made of them.
- :func:`any_frame` -- frames a peer holding the session keys may seal to attack a
  connection: each well encoded, its values drawn from the sets given (credits beyond any
  window, streams never opened, offsets far ahead...).
- :func:`hostile_frame_bodies` -- record plaintexts no decoder accepts (an unknown type,
  a frame cut short, a length past its cap, an ACK with no range or a range below 0),
  each with the :class:`~dtp.errors.ErrorCode` the decoder must answer.
- :func:`records`, :func:`hostile_records` -- records by their headers (kind, flags,
  length, counter): ones a receiver frames, and ones it must refuse as soon as their 12
  header bytes are in (``RECORD_KIND``, ``RECORD_FLAGS``, ``RECORD_SIZE``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dtp.errors import ErrorCode
from dtp.native.core import encode_frames
from dtp.native.reference._frames import KNOWN_TYPES, LAYOUTS, Layout
from dtp.native.reference._limits import (
    AEAD_TAG_LEN,
    MAX_FRAME_DATA,
    MAX_HANDSHAKE_RECORD,
    VARINT_MAX,
)
from dtp.native.reference._records import RECORD_HEADER
from dtp.native.reference._varint import varint_encode
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
    REC_DATA,
    REC_HS_FINAL,
    REC_HS_INIT,
    REC_HS_RESP,
    RawFrame,
)
from dtp.testing.strategies._hypothesis import st

__all__ = [
    "RECORD_HEADER",
    "HostileBody",
    "HostileRecord",
    "any_frame",
    "frame_bodies",
    "frames",
    "hostile_frame_bodies",
    "hostile_records",
    "records",
]

_DATA_BODY_MIN, _DATA_BODY_MAX = AEAD_TAG_LEN, MAX_FRAME_DATA + AEAD_TAG_LEN
#: The record kinds docs/protocol.md §2 names (any other is ``RECORD_KIND``).
_RECORD_KINDS = (REC_HS_INIT, REC_HS_RESP, REC_HS_FINAL, REC_DATA)


def _varints(big: bool) -> st.SearchStrategy[int]:
    edges = [0, 1, 63, 64, 16383, 16384, 2**30 - 1, 2**30, VARINT_MAX]
    return st.one_of(st.sampled_from(edges), st.integers(0, VARINT_MAX if big else 2**20))


def _ack_ranges(highest: int) -> st.SearchStrategy[tuple[tuple[int, int], ...]]:
    @st.composite
    def build(draw: st.DrawFn) -> tuple[tuple[int, int], ...]:
        hi = draw(st.integers(0, highest))
        ranges = []
        for _ in range(draw(st.integers(1, 6))):
            lo = hi - draw(st.integers(0, min(hi, 8)))
            ranges.append((lo, hi))
            if lo < 2:
                break
            hi = lo - 2 - draw(st.integers(0, min(lo - 2, 8)))
        return tuple(ranges)

    return build()


# the types whose first field (``a``) is a stream ID (the reference's LAYOUTS give each
# type's fields and data cap; what a field means is docs/protocol.md §3.3)
_STREAM_FIRST = frozenset((FRAME_MAX_STREAM_DATA, FRAME_RESET_STREAM, FRAME_STOP_SENDING))


def frames(
    *,
    types: Sequence[int] | None = None,
    max_data: int = 256,
    highest_ack: int = 2**20,
    padding: bool = True,
) -> st.SearchStrategy[RawFrame]:
    """Frames any encoder accepts (docs/protocol.md §3.3), of ``types`` (every type by
    default; PADDING only with ``padding``). Data is at most ``max_data`` bytes (and the
    type's cap); ACK ranges end at most at ``highest_ack``."""
    big = _varints(True)
    data = st.binary(max_size=min(max_data, MAX_FRAME_DATA))
    stream = _varints(False)

    def streamed(kind: int) -> st.SearchStrategy[RawFrame]:
        @st.composite
        def build(draw: st.DrawFn) -> RawFrame:
            payload = draw(data)
            offset = draw(st.integers(0, VARINT_MAX - len(payload)))
            return RawFrame(kind, draw(stream), offset, 0, payload)

        return build()

    def laid_out(kind: int, layout: Layout) -> st.SearchStrategy[RawFrame]:
        """A frame of ``kind`` as its layout has it: its varint fields, then its data
        (within the type's cap) when it carries any."""
        fields = [stream if n == 0 and kind in _STREAM_FIRST else big for n in range(layout.fields)]
        payload = (
            st.just(b"")
            if layout.data_cap is None
            else st.binary(max_size=min(max_data, layout.data_cap))
        )

        def make(values: tuple[int, ...], body: bytes) -> RawFrame:
            a, b, c = (*values, 0, 0, 0)[:3]
            return RawFrame(kind, a, b, c, body)

        return st.builds(make, st.tuples(*fields), payload)

    makers = {
        FRAME_PADDING: st.builds(lambda n: RawFrame(FRAME_PADDING, n), st.integers(1, 300)),
        FRAME_ACK: st.builds(
            lambda ranges, delay: RawFrame(FRAME_ACK, c=delay, ranges=ranges),
            _ack_ranges(highest_ack),
            big,
        ),
        **{
            kind: streamed(kind)
            if kind in (FRAME_STREAM, FRAME_STREAM_FIN)
            else laid_out(kind, layout)
            for kind, layout in LAYOUTS.items()
        },
    }
    chosen = list(makers) if types is None else list(types)
    if not padding and types is None:
        chosen.remove(FRAME_PADDING)
    unknown = [t for t in chosen if t not in makers]
    if unknown:
        raise ValueError(f"no frame type {unknown[0]!r} (types are {sorted(KNOWN_TYPES)})")
    return st.one_of(*(makers[t] for t in chosen))


def frame_bodies(
    *, max_frames: int = 8, types: Sequence[int] | None = None
) -> st.SearchStrategy[bytes]:
    """The plaintext of a DATA record: up to ``max_frames`` well-formed :func:`frames`,
    encoded back to back, at most 16384 bytes."""
    return (
        st.lists(frames(types=types, padding=False), min_size=1, max_size=max_frames)
        .map(encode_frames)
        .filter(lambda body: len(body) <= MAX_FRAME_DATA)
    )


def any_frame(
    *,
    big: Sequence[int],
    stream_ids: Sequence[int],
    offsets: Sequence[int],
    data: Sequence[bytes],
    control_kinds: Sequence[int],
    highest_ack: int,
    padding: bool = False,
) -> st.SearchStrategy[RawFrame]:
    """One frame of any type a peer holding the session keys could seal, its fields
    drawn from the values given (``big``: credits, error codes and ACK delays;
    ``highest_ack``: the largest record number an ACK names; ``padding``: PADDING
    frames too). Every one encodes; what it asks of the connection is the attack."""
    big_ = st.sampled_from(list(big))
    sid = st.sampled_from(list(stream_ids))
    offset = st.sampled_from(list(offsets))
    payload = st.sampled_from(list(data))
    kinds = [
        st.builds(lambda s, o, d: RawFrame(FRAME_STREAM, s, o, 0, d), sid, offset, payload),
        st.builds(lambda s, o, d: RawFrame(FRAME_STREAM_FIN, s, o, 0, d), sid, offset, payload),
        st.builds(lambda s, e, f: RawFrame(FRAME_RESET_STREAM, s, e, f), sid, big_, offset),
        st.builds(lambda s, e: RawFrame(FRAME_STOP_SENDING, s, e), sid, big_),
        st.builds(lambda s, m: RawFrame(FRAME_MAX_STREAM_DATA, s, m), sid, big_),
        st.builds(lambda m: RawFrame(FRAME_MAX_DATA, m), big_),
        st.builds(lambda m: RawFrame(FRAME_MAX_STREAMS, m), big_),
        st.builds(
            lambda hi, width, delay: RawFrame(
                FRAME_ACK, c=delay, ranges=((max(0, hi - width), hi),)
            ),
            st.integers(0, highest_ack),
            st.integers(0, 5),
            big_,
        ),
        st.builds(
            lambda k, d: RawFrame(FRAME_CONTROL, k, 0, 0, d),
            st.sampled_from(list(control_kinds)),
            payload,
        ),
        st.builds(lambda d: RawFrame(FRAME_DATAGRAM, 0, 0, 0, d), payload),
        st.builds(lambda d: RawFrame(FRAME_RECEIPT, 0, 0, 0, d), payload),
        st.builds(lambda c, d: RawFrame(FRAME_CLOSE, c, 0, 0, d), big_, payload),
        st.just(RawFrame(FRAME_PING)),
    ]
    if padding:
        kinds.append(st.builds(lambda n: RawFrame(FRAME_PADDING, n), st.integers(1, 300)))
    return st.one_of(*kinds)


@dataclass(frozen=True)
class HostileBody:
    """A record plaintext the frame decoder refuses, and the code it must refuse it with
    (decoding it as a complete body)."""

    body: bytes
    error: ErrorCode


def _varint(value: int) -> bytes:
    """``value`` as a minimal varint (docs/protocol.md §1)."""
    encoded = varint_encode(value)
    if encoded is None:
        raise ValueError(f"{value} is beyond a varint")
    return encoded


def hostile_frame_bodies() -> st.SearchStrategy[HostileBody]:
    """Record plaintexts no decoder accepts: well-formed frames, then one that is not --
    an unknown type (``FRAME_TYPE``), a frame cut short (``FRAME_TRUNCATED``), a length
    beyond its type's cap (``FRAME_SIZE``), an ACK with no range or whose first range
    goes below 0 (``FRAME_VALUE``), stream data past 2**62 - 1 (``FRAME_VALUE``)."""
    prefix = st.lists(frames(padding=False, max_data=32), max_size=3).map(encode_frames)

    @st.composite
    def bad(draw: st.DrawFn) -> tuple[bytes, ErrorCode]:
        kind = draw(st.sampled_from(["type", "cut", "size", "ack_count", "ack_range", "offset"]))
        if kind == "type":
            unknown = st.integers(0, 255).filter(lambda t: t not in KNOWN_TYPES)
            return bytes([draw(unknown)]), ErrorCode.FRAME_TYPE
        if kind == "cut":
            whole = encode_frames([draw(frames(padding=False, max_data=64))])
            if len(whole) < 2:
                whole = encode_frames([RawFrame(FRAME_MAX_DATA, 2**40)])
            return whole[: draw(st.integers(1, len(whole) - 1))], ErrorCode.FRAME_TRUNCATED
        if kind == "size":
            # (a type that carries data, its fields 0, a length past its cap: the length
            # is checked before anything it would cover)
            cap_type, layout = draw(
                st.sampled_from(
                    [(t, lay) for t, lay in LAYOUTS.items() if lay.data_cap is not None]
                )
            )
            assert layout.data_cap is not None
            length = draw(st.integers(layout.data_cap + 1, VARINT_MAX))
            fields = b"\x00" * layout.fields
            return bytes([cap_type]) + fields + _varint(length), ErrorCode.FRAME_SIZE
        if kind == "ack_count":
            return bytes([FRAME_ACK]) + _varint(5) + _varint(0) + _varint(0), ErrorCode.FRAME_VALUE
        if kind == "ack_range":
            largest = draw(st.integers(0, 1000))
            first = draw(st.integers(largest + 1, largest + 1000))
            return (
                bytes([FRAME_ACK]) + _varint(largest) + _varint(0) + _varint(1) + _varint(first),
                ErrorCode.FRAME_VALUE,
            )
        offset = draw(st.integers(VARINT_MAX - 10, VARINT_MAX))
        return (
            bytes([FRAME_STREAM]) + _varint(0) + _varint(offset) + _varint(16) + b"x" * 16,
            ErrorCode.FRAME_VALUE,
        )

    return st.builds(lambda p, b: HostileBody(p + b[0], b[1]), prefix, bad())


def records(*, max_body: int = 512) -> st.SearchStrategy[bytes]:
    """Whole records a receiver frames (docs/protocol.md §2): a valid header -- a
    handshake kind with counter 0 and a body of 1..4096 bytes, or DATA with a body of
    16..16400 -- and a body of that length (random bytes: framed, not authenticated)."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        kind = draw(st.sampled_from(_RECORD_KINDS))
        if kind == REC_DATA:
            size = draw(
                st.integers(_DATA_BODY_MIN, min(_DATA_BODY_MAX, max(max_body, _DATA_BODY_MIN)))
            )
            counter = draw(st.integers(0, 2**64 - 1))
        else:
            size = draw(st.integers(1, min(MAX_HANDSHAKE_RECORD, max_body)))
            counter = 0
        return RECORD_HEADER.pack(kind, 0, size, counter) + draw(
            st.binary(min_size=size, max_size=size)
        )

    return build()


@dataclass(frozen=True)
class HostileRecord:
    """A record header a receiver refuses as soon as its 12 bytes are in (and the error
    code it ends the connection with), followed by a body of the length it states."""

    data: bytes
    error: ErrorCode


def hostile_records() -> st.SearchStrategy[HostileRecord]:
    """Records whose headers break §2's rules, checked in its order: an unknown kind
    (``RECORD_KIND``), flags other than 0 (``RECORD_FLAGS``), a body length out of its
    kind's range (``RECORD_SIZE``: DATA below 16 or above 16400, a handshake message of
    0 or above 4096)."""

    @st.composite
    def build(draw: st.DrawFn) -> HostileRecord:
        flaw = draw(st.sampled_from(["kind", "flags", "size"]))
        kind = draw(st.sampled_from(_RECORD_KINDS))
        flags, size, error = 0, 16 if kind == REC_DATA else 1, ErrorCode.RECORD_SIZE
        if flaw == "kind":
            kind = draw(st.integers(0, 255).filter(lambda k: k not in _RECORD_KINDS))
            error = ErrorCode.RECORD_KIND
        elif flaw == "flags":
            flags, error = draw(st.integers(1, 255)), ErrorCode.RECORD_FLAGS
        elif kind == REC_DATA:
            size = draw(
                st.one_of(
                    st.integers(0, _DATA_BODY_MIN - 1), st.integers(_DATA_BODY_MAX + 1, 65535)
                )
            )
        else:
            size = draw(st.one_of(st.just(0), st.integers(MAX_HANDSHAKE_RECORD + 1, 65535)))
        counter = 0 if kind != REC_DATA else draw(st.integers(0, 2**64 - 1))
        body = bytes(min(size, 64))
        return HostileRecord(RECORD_HEADER.pack(kind, flags, size, counter) + body, error)

    return build()
