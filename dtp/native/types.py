"""Value types shared by the C-backed core (``dtp.native.core``) and its pure-Python twin
(``dtp.native.reference``): both backends return exactly these, so results compare equal."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import NamedTuple, Protocol, overload

from dtp.errors import DTPError

# Status values returned next to results (mirrors DTP_OK ... DTP_STOP in dtp_core.h).
OK = 0
NEED_MORE = 1
FULL = 2
STOP = 3
DUE = 4
# ... and of the carrier I/O of a lent stream (DTP_WAIT ... DTP_EOF)
WAIT = 5
READY = 6
WAKE = 7
EOF = 8

# Record kinds.
REC_HS_INIT = 1
REC_HS_RESP = 2
REC_HS_FINAL = 3
REC_DATA = 16

# Frame types.
FRAME_PADDING = 0
FRAME_PING = 1
FRAME_ACK = 2
FRAME_MAX_DATA = 3
FRAME_MAX_STREAM_DATA = 4
FRAME_RESET_STREAM = 5
FRAME_STOP_SENDING = 6
FRAME_MAX_STREAMS = 7
FRAME_STREAM = 8
FRAME_STREAM_FIN = 9
FRAME_CLOSE = 10
FRAME_RECEIPT = 11
FRAME_CONTROL = 12
FRAME_DATAGRAM = 13

# HAM merge outcomes.
HAM_APPLIED = 0
HAM_HISTORICAL = 1
HAM_DEFERRED = 2
HAM_SAME = 3
HAM_REJECTED = 4


class RawFrame(NamedTuple):
    """One frame as the core sees it. Field use per type (protocol.md, "Frames"):

    PADDING a=run length; MAX_DATA a=max; MAX_STREAM_DATA a=stream b=max;
    RESET_STREAM a=stream b=code c=final size; STOP_SENDING a=stream b=code;
    MAX_STREAMS a=max; STREAM/STREAM_FIN a=stream b=offset data;
    CLOSE a=code data=reason; RECEIPT data; CONTROL a=kind data; DATAGRAM data;
    ACK c=ack delay (microseconds), ranges=((lo, hi), ...) inclusive, largest first.
    """

    type: int
    a: int = 0
    b: int = 0
    c: int = 0
    data: bytes = b""
    ranges: tuple[tuple[int, int], ...] = ()


class FrameBatch(Sequence[RawFrame]):
    """Frames decoded by one call, plus how far decoding got.

    ``status`` is OK (all input used), NEED_MORE (input ends mid-frame) or FULL (the
    frame limit was reached); ``consumed`` counts the bytes the frames cover.
    """

    status: int
    consumed: int

    def __init__(self, frames: list[RawFrame], status: int, consumed: int) -> None:
        self._frames = frames
        self.status = status
        self.consumed = consumed

    def __len__(self) -> int:
        return len(self._frames)

    @overload
    def __getitem__(self, index: int) -> RawFrame: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[RawFrame]: ...
    def __getitem__(self, index: int | slice) -> RawFrame | Sequence[RawFrame]:
        return self._frames[index]

    def __iter__(self) -> Iterator[RawFrame]:
        return iter(self._frames)

    def __repr__(self) -> str:
        return f"<FrameBatch {len(self)} frames status={self.status} consumed={self.consumed}>"


class RecordHeader(NamedTuple):
    """A parsed record header; ``offset`` is where the header starts in the input."""

    kind: int
    flags: int
    body_len: int
    counter: int
    offset: int


class RecordBatch(NamedTuple):
    records: list[RecordHeader]
    consumed: int
    status: int


class OpenedRecord(NamedTuple):
    """A DATA record that authenticated (or was recognised as a replay, with no data)."""

    counter: int
    plaintext: bytes
    replayed: bool = False


class OpenResult(NamedTuple):
    """What one ``Aead.open`` call produced.

    Records before a stop are always reported, so an error never loses data that did
    authenticate. ``error`` is set when the call stopped on a bad record (a
    :class:`~dtp.errors.DecryptionError`, or a header error); ``consumed`` then points
    at that record.
    """

    records: list[OpenedRecord]
    consumed: int
    status: int
    error: DTPError | None = None


class OpenedFrames(NamedTuple):
    """One record opened by ``Aead.open_frames``: its counter, whether it was a replay
    (then it has no frames), and its decoded frames. A frame's ``data`` may be a
    memoryview that stays valid only until the next call on the same ``Aead``.

    With ``open_frames(..., datagram_runs=True)``, a record whose frames are all
    DATAGRAM frames has no ``frames``: ``datagrams`` holds their payloads instead, in
    order, as ``bytes`` (a burst of datagrams costs no RawFrame each). Otherwise
    ``datagrams`` is None."""

    counter: int
    replayed: bool
    frames: list[RawFrame]
    datagrams: list[bytes] | None = None


class OpenFramesResult(NamedTuple):
    """What one ``Aead.open_frames`` call produced; as :class:`OpenResult`, with the
    records' frames decoded. ``error`` is set when the call stopped on a bad record (a
    header, authentication or frame decoding error); ``consumed`` then points at it."""

    records: list[OpenedFrames]
    consumed: int
    status: int
    error: DTPError | None = None


class TakeResult(NamedTuple):
    """What one ``Lane.take`` call produced: its status (OK, NEED_MORE, FULL or STOP),
    the input bytes and records it took, the bytes it wrote to the caller's buffer, and
    the data of the last record that did not fit there (a view valid until the next
    call). The stream's offset advanced by ``taken + len(spill)``."""

    status: int
    consumed: int
    records: int
    taken: int
    spill: bytes | memoryview


class HamUpdate(NamedTuple):
    """One field write: ``value`` is the field's stored value bytes (graph: its Gun text)."""

    soul: bytes
    field: bytes
    state: float
    value: bytes


class MergeResult(NamedTuple):
    """Outcome of one HAM merge: a status byte per update, and the applied updates
    as a batch in the HAM wire form."""

    statuses: bytes
    changed: bytes


class _IoLane(Protocol):
    """A lane whose carrier-read buffers ``_ready_io`` makes (NativeLane, Lane)."""

    def _ready_io(self) -> None: ...


class MadeOnUse:
    """A lane's carrier-read buffer (``rview``, ``own``), made by its ``_ready_io`` on
    first use: only the blocking adapter reads its carrier through the lane, and a
    server keeps thousands of idle connections. A descriptor with no ``__set__``:
    ``_ready_io`` sets the instance's own attribute, which wins from then on. (A
    ``__getattr__`` on the class instead made every attribute read of the lane -- a
    seal or take reads seven -- take CPython's slow path: three times the cost, and a
    method-wrapper object each.)"""

    def __set_name__(self, owner: type, name: str) -> None:
        self._name = name

    @overload
    def __get__(self, lane: None, owner: type) -> MadeOnUse: ...

    @overload
    def __get__(self, lane: _IoLane, owner: type) -> memoryview: ...

    def __get__(self, lane: _IoLane | None, owner: type) -> MadeOnUse | memoryview:
        if lane is None:
            return self
        lane._ready_io()
        view: memoryview = lane.__dict__[self._name]
        return view
