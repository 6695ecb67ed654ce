"""Typed wrappers over the C core, the only module that touches cffi's ``lib``/``ffi``.
Every public name has a pure-Python twin in :mod:`dtp.native.reference` (same signature
and results); ``DTP_PUREPYTHON=1`` makes the public names *be* the twins (no extension
needed), while the ``Native*``/``native_*`` names always refer to the C code, so tests
compare both backends in one process. ``DTP_CORE_LIB=/path/to/_dtp_core.so`` loads a
specific build of the extension (the sanitizer build CI uses) instead of the installed one."""

from __future__ import annotations

import array
import os
import struct
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, overload

from dtp.errors import ErrorCode, LocalProtocolError, error_for
from dtp.native import types as t
from dtp.native._binding import HAVE_NATIVE, PUREPYTHON, _check, _from, ffi, lib
from dtp.native.reference._limits import (
    AEAD_TAG_LEN,
    LANE_OWN_CAP,
    MAX_ACK_RANGES,
    MAX_FRAME_DATA,
    MAX_RECORD,
    MAX_RECORD_PLAINTEXT,
    MAX_STREAM_CHUNK,
    OPEN_FRAMES_MAX,
    RECORD_HEADER_LEN,
    RECORD_OVERHEAD,
    lane_max_seal,
)
from dtp.native.types import (
    FrameBatch,
    HamUpdate,
    OpenedFrames,
    OpenedRecord,
    OpenFramesResult,
    OpenResult,
    RawFrame,
    RecordBatch,
    RecordHeader,
    TakeResult,
)

# --------------------------------------------------------------------------------------
# records and frames


def native_write_record_header(kind: int, flags: int, body_len: int, counter: int) -> bytes:
    """The 12-byte header of a record."""
    if not (0 <= kind <= 0xFF and 0 <= flags <= 0xFF and 0 <= counter < 2**64):
        raise LocalProtocolError("record header field out of range", ErrorCode.ARG)
    if not 0 <= body_len <= 0xFFFF:
        raise LocalProtocolError(code=ErrorCode.RECORD_SIZE)
    out = bytearray(RECORD_HEADER_LEN)
    rc = lib.dtp_record_header_write(kind, flags, body_len, counter, _from(out), len(out))
    if rc < 0:  # (the check in place: a call less a record on the handshake's path)
        _check(rc, remote=False)
    return bytes(out)


def native_parse_records(
    buf: bytes | bytearray | memoryview, max_records: int = 1024
) -> RecordBatch:
    """Split a byte stream into record headers; raises on a malformed header."""
    data = _from(buf)
    size = len(data)  # in bytes, whatever the buffer's item size
    cap = max(1, min(max_records, size // RECORD_HEADER_LEN + 1))
    out = ffi.new("dtp_record[]", cap)
    n = ffi.new("size_t *")
    consumed = ffi.new("size_t *")
    rc = lib.dtp_records_parse(data, size, out, cap, n, consumed)
    del data  # (see _from)
    if rc < 0:
        _check(rc, remote=True)
    # (the array's first n[0] entries, as a slice: no generator of indexes)
    records = [
        RecordHeader(r.kind, r.flags, r.body_len, r.counter, r.offset) for r in out[0 : n[0]]
    ]
    return RecordBatch(records, consumed[0], rc)


# dtp_frame and dtp_ack_range as C lays them out (native byte order, no padding):
# type u8, reserved0 u8, reserved1 u16, data_len u32, data_off, a, b, c u64 / lo, hi u64.
# Unpacking them with struct is far cheaper than reading cdata fields one by one.
_CFRAME = struct.Struct("=BxxxIQQQQ")
_CFRAME_OUT = struct.Struct("=BBHIQQQQ")  # the same with the reserved fields (encode input)
_CRANGE = struct.Struct("=QQ")
_LONE = struct.Struct("=QBxxxIQQQQ")  # dtp_lone_frame: the counter, then a dtp_frame
if ffi is not None and (
    ffi.sizeof("dtp_frame") != _CFRAME.size
    or ffi.offsetof("dtp_frame", "data_len") != 4
    or ffi.sizeof("dtp_ack_range") != _CRANGE.size
    or ffi.sizeof("dtp_lone_frame") != _LONE.size
):  # pragma: no cover - only on an ABI this code was not written for
    raise ImportError("unexpected dtp_frame / dtp_ack_range / dtp_lone_frame layout")


#: NativeAead._sizes' length: four counts, or one dtp_lone_frame, whichever is larger
_SIZES_LEN = max(4, -(-_LONE.size // ffi.sizeof("size_t"))) if ffi is not None else 4


class NativeFrameBatch(FrameBatch):
    """Frames decoded by the C core; each :class:`RawFrame` is built on first access
    (iterating builds them all at once)."""

    def __init__(
        self, buf: bytes, frames: Any, ranges: Any, n: int, status: int, consumed: int
    ) -> None:
        self._buf = buf
        self._cframes = frames
        self._cranges = ranges
        self._n = n
        self._cache: list[RawFrame | None] = [None] * n
        self._built = n == 0
        self.status = status
        self.consumed = consumed

    def __len__(self) -> int:
        return self._n

    def _make(self, fields: tuple[int, ...]) -> RawFrame:
        ftype, data_len, data_off, a, b, c = fields
        # RawFrame._make skips __new__'s argument handling: twice as fast per frame
        if ftype == t.FRAME_ACK:
            raw = ffi.buffer(self._cranges + a, b * _CRANGE.size)
            return RawFrame._make((ftype, 0, 0, c, b"", tuple(_CRANGE.iter_unpack(raw))))
        data = self._buf[data_off : data_off + data_len] if data_len else b""
        return RawFrame._make((ftype, a, b, c, data, ()))

    def _all(self) -> list[RawFrame]:
        if not self._built:
            raw = ffi.buffer(self._cframes, self._n * _CFRAME.size)
            self._cache = [
                have if have is not None else self._make(fields)
                for have, fields in zip(self._cache, _CFRAME.iter_unpack(raw), strict=True)
            ]
            self._built = True
        return self._cache  # type: ignore[return-value]

    @overload
    def __getitem__(self, index: int) -> RawFrame: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[RawFrame]: ...
    def __getitem__(self, index: int | slice) -> RawFrame | Sequence[RawFrame]:
        if isinstance(index, slice):
            return self._all()[index]
        if index < 0:
            index += self._n
        if not 0 <= index < self._n:
            raise IndexError("frame index out of range")
        frame = self._cache[index]
        if frame is None:
            fields = _CFRAME.unpack(ffi.buffer(self._cframes + index, _CFRAME.size))
            frame = self._cache[index] = self._make(fields)
        return frame

    def __iter__(self) -> Iterator[RawFrame]:
        return iter(self._all())


_U64_MAX = 2**64 - 1
# Decode outputs are written by C before they are read; skipping the zero-fill keeps
# the per-call cost independent of max_frames / max_ranges.
_new_uninit: Any = ffi.new_allocator(should_clear_after_alloc=False) if ffi is not None else None


def native_decode_frames(
    buf: bytes | bytearray | memoryview,
    complete: bool = True,
    max_frames: int = 4096,
    max_ranges: int = 4096,
) -> FrameBatch:
    """Decode the frames in ``buf`` (a whole record body when ``complete``)."""
    if max_frames < 0 or max_ranges < 0:
        raise LocalProtocolError("max_frames and max_ranges must be >= 0", ErrorCode.ARG)
    data = bytes(buf)
    size = len(data)
    # Capping the arrays at len(data) never changes the result: every frame takes at
    # least one byte, and an ACK with k ranges takes more than k bytes.
    fcap = min(max_frames, size)
    rcap = min(max_ranges, size)
    frames = _new_uninit("dtp_frame[]", max(1, fcap))
    ranges = _new_uninit("dtp_ack_range[]", max(1, rcap))
    counts = ffi.new("size_t[3]")
    rc = lib.dtp_frames_decode(
        data, size, int(complete), frames, fcap, ranges, rcap, counts, counts + 1, counts + 2
    )
    if rc < 0:
        raise error_for(rc, remote=True)
    return NativeFrameBatch(data, frames, ranges, counts[0], rc, counts[2])


def _u64(value: int) -> int:
    """``value`` if it fits a uint64_t, else UINT64_MAX: out of range for every field,
    so C reports the same code the twin does for a negative or huge value."""
    return value if 0 <= value <= _U64_MAX else _U64_MAX


def native_encode_frames(frames: Sequence[RawFrame]) -> bytes:
    """Encode frames canonically; raises LocalProtocolError on an invalid frame."""
    # The frames and ranges are packed into C's layout with struct and handed over as
    # arrays (ffi.from_buffer): setting cdata fields one by one cost about 1.7 us a
    # frame, more than the encoding itself.
    n = len(frames)
    size = _CFRAME_OUT.size
    fbuf = bytearray(size * max(1, n))
    pack = _CFRAME_OUT.pack_into
    payloads: list[bytes | bytearray | memoryview] = []
    all_ranges: list[tuple[int, int]] = []
    data_len = 0
    budget = 0
    off = 0
    for ftype, a, b, c, data, ranges in frames:
        dlen = len(data)
        if ftype == t.FRAME_ACK:
            # C keeps the ranges' place in a and b: the Python-level a, b must be 0,
            # which the reserved byte carries to C's "unused field" check.
            reserved0 = 1 if (a or b) else 0
            a, b = len(all_ranges), len(ranges)
            all_ranges.extend(ranges)
            # type, largest, delay, count, then two varints per range, 8 bytes each max
            budget += 27 + 16 * min(b, MAX_ACK_RANGES)
        else:
            reserved0 = 1 if ranges else 0
            if ftype == t.FRAME_PADDING:
                budget += min(_u64(a), MAX_FRAME_DATA)
            # type, three varints, a data length
            budget += 33 + min(dlen, MAX_FRAME_DATA)
        doff = 0
        if dlen:
            doff = data_len
            payloads.append(data)
            data_len += dlen
        try:
            pack(fbuf, off, ftype, reserved0, 0, dlen, doff, a, b, c)
        except struct.error:
            # a value out of its field's range: clamped as _u64 does, so that C reports
            # the code the twin does
            pack(
                fbuf,
                off,
                ftype if 0 <= ftype <= 0xFF else 0xFF,
                reserved0,
                0,
                min(dlen, 0xFFFFFFFF),
                doff,
                _u64(a),
                _u64(b),
                _u64(c),
            )
        off += size
    joined = b"".join(payloads)
    if len(joined) != data_len:
        # some frame's data has items wider than a byte (len() counted items): encode
        # the bytes it holds, as the twin does
        return native_encode_frames(
            [RawFrame(ft, a, b, c, bytes(d), r) for ft, a, b, c, d, r in frames]
        )
    rbuf = bytearray(_CRANGE.size * max(1, len(all_ranges)))
    rpack = _CRANGE.pack_into
    for j, (lo, hi) in enumerate(all_ranges):
        try:
            rpack(rbuf, j * _CRANGE.size, lo, hi)
        except struct.error:
            rpack(rbuf, j * _CRANGE.size, _u64(lo), _u64(hi))
    out = bytearray(budget)
    written = ffi.new("size_t *")
    rc = lib.dtp_frames_encode(
        ffi.from_buffer("dtp_frame[]", fbuf),
        n,
        joined,
        len(joined),
        ffi.from_buffer("dtp_ack_range[]", rbuf),
        len(all_ranges),
        _from(out),
        len(out),
        written,
    )
    _check(rc, remote=False)
    return memoryview(out)[: written[0]].tobytes()


# --------------------------------------------------------------------------------------
# AEAD


_OPENED = struct.Struct("=QQIi")  # dtp_opened: counter, plain_off, plain_len, status
# dtp_opened_rec: counter, plain_off, plain_len, status, first_frame, n_frames
_OPENED_REC = struct.Struct("=QQIiII")
_SCRATCH_KEEP = 4 << 20  # largest scratch buffer an Aead keeps between calls
_tuple_new = tuple.__new__
_DATAGRAM = t.FRAME_DATAGRAM
_ACK = t.FRAME_ACK


class _FrameSlots:
    """The result arrays of ``dtp_aead_open_frames`` (records, frames, ACK ranges),
    grown on demand and read back before the call returns: one set serves every AEAD in
    turn (:data:`_spare_slots`), not one per connection (KiB per idle connection)."""

    __slots__ = (
        "frames",
        "frames_len",
        "frames_view",
        "ranges",
        "ranges_len",
        "ranges_view",
        "recs",
        "recs_len",
        "recs_view",
    )

    def __init__(self) -> None:
        self.recs: Any = None
        self.recs_len = 0
        self.recs_view = memoryview(b"")
        self.frames: Any = None
        self.frames_len = 0
        self.frames_view = memoryview(b"")
        self.ranges: Any = None
        self.ranges_len = 0
        self.ranges_view = memoryview(b"")


_SLOTS_KEPT = 4  # most spare slot sets (one per thread opening records at once)
_SLOTS_KEEP = 4096  # largest frame or range array a spare set keeps
# A call takes a set and gives it back (list.pop and append are atomic: the C call
# releases the GIL, so threads opening records at once each take a set of their own).
_spare_slots: list[_FrameSlots] = []


class NativeAead:
    """One direction's ChaCha20-Poly1305 key and receive replay window (C core).

    Output goes through scratch buffers owned by the instance (grown on demand, kept
    up to 4 MiB) so that a batch costs one copy into the returned ``bytes`` and no
    fresh page-faulting allocation. Not thread-safe: give each thread its own, or lock
    around it.
    """

    # (slots, no instance dict: a connection holds two; idle_memory_10k counts them)
    __slots__ = (
        "_ctx",
        "_one_len",
        "_opened",
        "_opened_len",
        "_scratch",
        "_scratch_len",
        "_sizes",
    )

    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise LocalProtocolError("AEAD key must be 32 bytes", ErrorCode.ARG)
        # (bytes, as the handshake's keys are, go to C as they are: no export to make)
        ctx = lib.dtp_aead_new(key if type(key) is bytes else _from(key), 32)
        if ctx == ffi.NULL:
            raise MemoryError("could not allocate an AEAD context")
        self._ctx = ffi.gc(ctx, lib.dtp_aead_free)
        self._scratch = ffi.new("uint8_t[]", 1)
        self._scratch_len = 1
        self._opened = ffi.new("dtp_opened[]", 1)
        self._opened_len = 1
        # (written sizes and counts; open_lone_frame's result is read through it too, so
        # an AEAD carries no allocation of its own for it: idle_memory_10k)
        self._sizes = ffi.new("size_t[]", _SIZES_LEN)
        self._one_len = ffi.new("uint32_t[1]")  # (seal_one's one length)

    def _buffer(self, size: int) -> Any:
        """A scratch byte buffer of at least ``size`` bytes (contents undefined)."""
        if size <= self._scratch_len:
            return self._scratch
        buf = ffi.new("uint8_t[]", size)
        if size <= _SCRATCH_KEEP:
            self._scratch, self._scratch_len = buf, size
        return buf

    def seal(self, first_counter: int, plaintexts: Sequence[bytes | memoryview]) -> bytes:
        """Seal each plaintext as one DATA record, counters from ``first_counter``."""
        if not plaintexts:
            lens = array.array("I", [0])
            return self._seal(first_counter, _from(b""), ffi.from_buffer("uint32_t[]", lens), 0)
        plain = b"".join(plaintexts)
        lens = array.array("I", map(len, plaintexts))
        if sum(lens) != len(plain):
            # some plaintext's items are wider than a byte: count its bytes
            lens = array.array("I", (memoryview(p).nbytes for p in plaintexts))
        if max(lens) > MAX_RECORD_PLAINTEXT:
            raise LocalProtocolError("record plaintext too large", ErrorCode.RECORD_SIZE)
        return self._seal(
            first_counter, _from(plain), ffi.from_buffer("uint32_t[]", lens), len(plaintexts)
        )

    def seal_one(self, counter: int, plaintext: bytes | memoryview) -> bytes:
        """``seal(counter, [plaintext])``: one DATA record, without the batch's list
        and lengths array (a short answer's record)."""
        # (its bytes, whatever its items; _seal takes its length. bytes go to C as they
        # are: no cdata made and no keywords parsed, as ffi.from_buffer makes and parses.
        # No local holds the buffer: _seal's del is its only reference, see _from)
        if type(plaintext) is bytes:
            return self._seal(counter, plaintext, None, 1)
        return self._seal(counter, ffi.from_buffer("uint8_t[]", plaintext), None, 1)

    def seal_chunks(
        self,
        first_counter: int,
        data: bytes | bytearray | memoryview,
        chunk: int = MAX_RECORD_PLAINTEXT,
    ) -> tuple[bytes, int]:
        """Split ``data`` into records of ``chunk`` bytes (the last may be shorter; empty
        data gives one empty record) and seal them all in one call. Returns (sealed
        bytes, number of records)."""
        if not 0 < chunk <= MAX_RECORD_PLAINTEXT:
            raise LocalProtocolError("chunk size out of range", ErrorCode.ARG)
        total = len(_from(data))  # bytes (the temporary's export ends at once)
        n = max(1, -(-total // chunk))
        lens = array.array("I", [chunk]) * n
        lens[n - 1] = total - chunk * (n - 1)
        return self._seal(first_counter, _from(data), ffi.from_buffer("uint32_t[]", lens), n), n

    def _seal(self, first_counter: int, plain: Any, lens: Any, n: int) -> bytes:
        """Seal the bytes of ``plain`` (a ``_from`` buffer, the caller's only reference:
        dropped here before raising) cut as ``lens`` (a ``uint32_t[]`` of ``n``
        lengths) says; ``lens`` None: one record of all of ``plain`` (seal_one's: its
        length goes in the instance's one-length array, not one made each call)."""
        size = len(plain)
        if lens is None:
            if size > MAX_RECORD_PLAINTEXT:  # (seal's check, in its order)
                del plain  # (see _from)
                raise LocalProtocolError("record plaintext too large", ErrorCode.RECORD_SIZE)
            lens = self._one_len
            lens[0] = size
        # (_buffer's common case and _check inline: a seal is on every answer)
        cap = size + n * RECORD_OVERHEAD
        out = self._scratch if cap <= self._scratch_len else self._buffer(cap)
        written = self._sizes
        try:
            rc = lib.dtp_aead_seal_batch(
                self._ctx, first_counter, plain, size, lens, n, out, cap, written
            )
        except OverflowError:
            # a counter outside uint64_t (caught, not checked first: off the per-call path)
            raise LocalProtocolError("record counter out of range", ErrorCode.COUNTER) from None
        finally:
            del plain  # (see _from)
        if rc < 0:
            raise error_for(rc, remote=False)
        sealed: bytes = ffi.buffer(out, written[0])[:]
        return sealed

    def open(self, buf: bytes | bytearray | memoryview, max_records: int = 1024) -> OpenResult:
        """Open the DATA records at the start of ``buf`` (which may end mid-record).

        Stops at the end (OK), an incomplete record (NEED_MORE), ``max_records``
        reported (FULL), a record of another kind (STOP), a malformed header (its code,
        with ``error`` set) or a record that fails authentication (DECRYPT). Replayed
        records are reported with ``replayed=True`` and no plaintext.
        """
        data = _from(buf)
        size = len(data)
        cap = max(1, min(max_records, size // RECORD_OVERHEAD + 1))
        if cap > self._opened_len:
            self._opened = ffi.new("dtp_opened[]", cap)
            self._opened_len = cap
        out = self._opened
        plain = self._buffer(size)
        counts = self._sizes
        rc = lib.dtp_aead_open_batch(
            self._ctx, data, size, out, cap, plain, size, counts, counts + 1
        )
        del data  # (see _from)
        n, consumed = counts[0], counts[1]
        records: list[OpenedRecord] = []
        if n:
            view = ffi.buffer(plain, size)
            append = records.append
            for counter, off, plen, status in _OPENED.iter_unpack(
                ffi.buffer(out, n * _OPENED.size)
            ):
                append(_tuple_new(OpenedRecord, (counter, view[off : off + plen], status != 0)))
        if rc < 0:
            return OpenResult(records, consumed, rc, error_for(rc, remote=True))  # type: ignore[arg-type]
        return OpenResult(records, consumed, rc)

    def seal_stream(
        self,
        first_counter: int,
        stream_id: int,
        offset: int,
        data: bytes | bytearray | memoryview,
        fin: bool = False,
        max_chunk: int = MAX_FRAME_DATA,
        head: bytes | bytearray | memoryview = b"",
    ) -> tuple[bytes, int]:
        """Seal stream bytes as records of one STREAM frame each, straight from ``data``
        (``dtp_stream_seal``): chunks of ``max_chunk`` or what fills a record (one empty
        record for empty data), the last frame STREAM_FIN when ``fin``; (bytes, records).
        ``head`` (at most ``MAX_SEAL_HEAD`` bytes): stream bytes before ``data``, sealed
        as if joined to it (``dtp_stream_seal_head``)."""
        if not 0 <= first_counter < 2**64:
            raise LocalProtocolError("record counter out of range", ErrorCode.COUNTER)
        if max_chunk <= 0:
            raise LocalProtocolError("chunk size out of range", ErrorCode.ARG)
        sid, off, chunk = _u64(stream_id), _u64(offset), _u64(max_chunk)
        src = _from(data)
        first = _from(head)
        size = len(first) + len(src)
        # an upper bound on dtp_stream_seal_size: 28 bytes of record overhead and at
        # most 25 of frame header per record, each but the last full or of max_chunk
        cap = size + (size // min(chunk, MAX_STREAM_CHUNK) + 1) * 53
        out = self._buffer(cap)
        counts = self._sizes
        rc = lib.dtp_stream_seal_head(
            self._ctx,
            first_counter,
            sid,
            off,
            first,
            len(first),
            src,
            len(src),
            int(fin),
            chunk,
            out,
            cap,
            counts,
            counts + 1,
        )
        del src, first  # (see _from)
        _check(rc, remote=False)
        sealed: bytes = ffi.buffer(out, counts[0])[:]
        return sealed, counts[1]

    def seal_last(
        self,
        counter: int,
        stream_id: int,
        offset: int,
        data: bytes | bytearray | memoryview,
        max_streams: int = 0,
    ) -> bytes:
        """A served stream's last record (``dtp_stream_seal_last``): one DATA record whose
        plaintext is the STREAM_FIN frame of ``data`` at ``offset`` and, unless
        ``max_streams`` is 0, a MAX_STREAMS frame of it after (an answer and the stream
        credit its end returns, frames and seal in one call). See the twin in
        :mod:`dtp.native.reference._aead`."""
        src = ffi.from_buffer("uint8_t[]", data)  # (_from inline)
        size = len(src)
        # the record: its plaintext and 28 bytes of overhead, the frames' heads at most
        # 25 (STREAM_FIN) and 9 (MAX_STREAMS) bytes; data that cannot fit a record is
        # refused (RECORD_SIZE) before the room is looked at, so no room is made for it
        cap = (size if size < MAX_RECORD_PLAINTEXT else MAX_RECORD_PLAINTEXT) + 62
        out = self._scratch if cap <= self._scratch_len else self._buffer(cap)
        written = self._sizes
        try:
            rc = lib.dtp_stream_seal_last(
                self._ctx, counter, stream_id, offset, src, size, max_streams, out, cap, written
            )
        except OverflowError:
            # a value outside uint64_t (caught, not checked first: off the per-call
            # path): out of range for its field as UINT64_MAX, so C's check and code
            rc = lib.dtp_stream_seal_last(
                self._ctx, _u64(counter), _u64(stream_id), _u64(offset), src, size,
                _u64(max_streams), out, cap, written,
            )  # fmt: skip
        finally:
            del src  # (see _from)
        if rc < 0:
            raise error_for(rc, remote=False)
        sealed: bytes = ffi.buffer(out, written[0])[:]
        return sealed

    def open_frames(
        self,
        buf: bytes | bytearray | memoryview,
        max_records: int = 1024,
        max_frames: int = OPEN_FRAMES_MAX,
        max_ranges: int = OPEN_FRAMES_MAX,
        datagram_runs: bool = False,
    ) -> OpenFramesResult:
        """Open the DATA records at the start of ``buf`` and decode their frames in one
        call (``dtp_aead_open_frames``); see the twin in :mod:`dtp.native.reference._aead`.
        Frame data are memoryviews into a scratch buffer, valid until the next call.
        ``datagram_runs``: see :class:`~dtp.native.types.OpenedFrames`."""
        if max_records < 0 or max_frames < 0 or max_ranges < 0:
            raise LocalProtocolError("limits must be >= 0", ErrorCode.ARG)
        data = ffi.from_buffer("uint8_t[]", buf)  # (_from inline: every read opens here)
        size = len(data)
        cap = max(1, min(max_records, size // RECORD_OVERHEAD + 1))
        runs = bool(datagram_runs)
        # (one set of result arrays for the call and its retry, taken here: every read
        # goes through this)
        try:
            slots = _spare_slots.pop()
        except IndexError:
            slots = _FrameSlots()
        try:
            result = self._open_frames_into(slots, data, size, cap, max_frames, max_ranges, runs)
            if result.status == t.FULL and not result.records:
                result = self._open_frames_into(
                    slots, data, size, 1, MAX_RECORD_PLAINTEXT, MAX_RECORD_PLAINTEXT, runs
                )
            return result
        finally:
            if (
                slots.frames_len <= _SLOTS_KEEP
                and slots.ranges_len <= _SLOTS_KEEP
                and len(_spare_slots) < _SLOTS_KEPT
            ):
                _spare_slots.append(slots)

    def open_lone_frame(self, buf: bytes | bytearray | memoryview) -> OpenedFrames | None:
        """``buf`` opened when it is exactly one DATA record whose plaintext is exactly
        one frame, not an ACK (``dtp_aead_open_lone_frame``: a short call's request or
        answer, a quiet flow's datagram, without :meth:`open_frames`' arrays): the
        record as ``open_frames(..., datagram_runs=True)`` reports it, the replay window
        advanced for it; None, with nothing changed, for anything else
        (:meth:`open_frames` opens it and judges). See the twin in
        :mod:`dtp.native.reference._aead`."""
        data = ffi.from_buffer("uint8_t[]", buf)  # (_from inline)
        size = len(data)
        if size > MAX_RECORD_PLAINTEXT + RECORD_OVERHEAD:
            return None  # (more than one record: no scratch grown for a read it refuses)
        plain = self._scratch if size <= self._scratch_len else self._buffer(size)
        sizes = self._sizes
        rc = lib.dtp_aead_open_lone_frame(
            self._ctx, data, size, plain, size, ffi.cast("dtp_lone_frame *", sizes)
        )
        del data  # (see _from)
        if rc:
            return None
        counter, ftype, data_len, data_off, a, b, c = _LONE.unpack_from(ffi.buffer(sizes))
        data = ffi.buffer(plain, size)[data_off : data_off + data_len] if data_len else b""
        if ftype == _DATAGRAM:  # (a datagram run of one, as open_frames' runs report it)
            return _tuple_new(OpenedFrames, (counter, False, [], [data]))
        frame = _tuple_new(RawFrame, (ftype, a, b, c, data, ()))
        return _tuple_new(OpenedFrames, (counter, False, [frame], None))

    def _open_frames_into(
        self,
        slots: _FrameSlots,
        data: Any,
        size: int,
        cap: int,
        max_frames: int,
        max_ranges: int,
        runs: bool,
    ) -> OpenFramesResult:
        """One ``dtp_aead_open_frames`` call on ``data`` (a ``_from`` buffer) with the
        result arrays of ``slots``."""
        # every frame and range takes at least one byte of plaintext: more slots than
        # input bytes never change the result
        fcap = min(max_frames, size)
        rcap = min(max_ranges, size)
        if cap > slots.recs_len:
            slots.recs = _new_uninit("dtp_opened_rec[]", cap)
            slots.recs_len = cap
            slots.recs_view = memoryview(ffi.buffer(slots.recs))
        # each array is stored before its length: a length is never larger than the
        # array it describes, even to a caller that breaks the one-thread rule
        if fcap > slots.frames_len or slots.frames is None:
            frames_len = max(1, fcap, min(max_frames, 64))
            slots.frames = _new_uninit("dtp_frame[]", frames_len)
            slots.frames_view = memoryview(ffi.buffer(slots.frames))
            slots.frames_len = frames_len
        if rcap > slots.ranges_len or slots.ranges is None:
            ranges_len = max(1, rcap, min(max_ranges, 64))
            slots.ranges = _new_uninit("dtp_ack_range[]", ranges_len)
            slots.ranges_view = memoryview(ffi.buffer(slots.ranges))
            slots.ranges_len = ranges_len
        # (_buffer's usual case inline: every read)
        plain = self._scratch if size <= self._scratch_len else self._buffer(max(1, size))
        counts = self._sizes
        rc = lib.dtp_aead_open_frames(
            self._ctx,
            data,
            size,
            slots.recs,
            cap,
            plain,
            size,
            slots.frames,
            fcap,
            slots.ranges,
            rcap,
            counts,
            counts + 1,
            counts + 2,
            counts + 3,
        )
        n, nf, consumed = counts[0], counts[1], counts[3]
        records: list[OpenedFrames] = []
        if n:
            view = ffi.buffer(plain, size)
            if nf == 1:
                cframe = _CFRAME.unpack_from(slots.frames_view)
                if n == 1 and rc >= 0 and cframe[0] != _ACK and cframe[0] != _DATAGRAM:
                    # one record of one frame, neither an ACK nor a DATAGRAM (a short
                    # call's request or its answer): its RawFrame made without the loops
                    # below
                    counter, _off, _plen, status, _first, _count = _OPENED_REC.unpack_from(
                        slots.recs_view
                    )
                    ftype, data_len, data_off, a, b, c = cframe
                    data = view[data_off : data_off + data_len] if data_len else b""
                    frame = _tuple_new(RawFrame, (ftype, a, b, c, data, ()))
                    opened = _tuple_new(OpenedFrames, (counter, status != 0, [frame], None))
                    return _tuple_new(OpenFramesResult, ([opened], consumed, rc, None))
                cframes = [cframe]
            else:
                cframes = list(_CFRAME.iter_unpack(slots.frames_view[: nf * _CFRAME.size]))
            append = records.append
            recs = slots.recs_view[: n * _OPENED_REC.size]
            for counter, _off, _plen, status, first, count in _OPENED_REC.iter_unpack(recs):
                out: list[RawFrame] = []
                if runs and count == 1:
                    # (a record of one DATAGRAM frame, a quiet flow's: as below, without
                    # the comprehension's call)
                    ftype, dlen, doff, _a, _b, _c = cframes[first]
                    if ftype == _DATAGRAM:
                        payload = [view[doff : doff + dlen]]
                        append(_tuple_new(OpenedFrames, (counter, False, out, payload)))
                        continue
                elif runs and count and cframes[first][0] == _DATAGRAM:
                    # a burst's records hold DATAGRAM frames alone: their payloads in
                    # one list, no RawFrame each (a cffi buffer's slice is a bytes copy;
                    # a record whose first frame is another kind is not one: no list)
                    payloads = [
                        view[off : off + n]
                        for ftype, n, off, _a, _b, _c in cframes[first : first + count]
                        if ftype == _DATAGRAM
                    ]
                    if len(payloads) == count:
                        append(_tuple_new(OpenedFrames, (counter, False, out, payloads)))
                        continue
                for ftype, data_len, data_off, a, b, c in cframes[first : first + count]:
                    if ftype == t.FRAME_ACK:
                        raw = slots.ranges_view[a * _CRANGE.size : (a + b) * _CRANGE.size]
                        ack = tuple(_CRANGE.iter_unpack(raw))
                        out.append(_tuple_new(RawFrame, (ftype, 0, 0, c, b"", ack)))
                    else:
                        data = view[data_off : data_off + data_len] if data_len else b""
                        out.append(_tuple_new(RawFrame, (ftype, a, b, c, data, ())))
                append(_tuple_new(OpenedFrames, (counter, status != 0, out, None)))
        if rc < 0:
            return OpenFramesResult(records, consumed, rc, error_for(rc, remote=True))  # type: ignore[arg-type]
        return _tuple_new(OpenFramesResult, (records, consumed, rc, None))

    def encrypt(self, counter: int, ad: bytes, plaintext: bytes) -> bytes:
        """Seal one message (ciphertext || tag), as Noise's ChaChaPoly ``encrypt``."""
        return self._one(lib.dtp_aead_seal_one, counter, ad, plaintext, AEAD_TAG_LEN, False)

    def decrypt(self, counter: int, ad: bytes, ciphertext: bytes) -> bytes:
        """Open one message; any failure raises :class:`~dtp.errors.DecryptionError`."""
        return self._one(lib.dtp_aead_open_one, counter, ad, ciphertext, 0, True)

    def _one(
        self, call: Any, counter: int, ad: bytes, data: bytes, grow: int, remote: bool
    ) -> bytes:
        """One message through ``call`` (``dtp_aead_seal_one`` or ``_open_one``), its
        output ``grow`` bytes longer than ``data`` at most; ``remote``: a failure is the
        peer's (an open)."""
        if not 0 <= counter < 2**64 - 1:
            raise LocalProtocolError("counter out of range", ErrorCode.COUNTER)
        ad_buf, src = _from(ad), _from(data)
        size = max(1, len(src) + grow)
        out = self._buffer(size)
        written = self._sizes
        rc = call(self._ctx, counter, ad_buf, len(ad_buf), src, len(src), out, size, written)
        del ad_buf, src  # (see _from)
        _check(rc, remote=remote)
        done: bytes = ffi.buffer(out, written[0])[:]
        return done

    @property
    def replay_top(self) -> int | None:
        """Highest counter accepted so far (None before the first)."""
        top = ffi.new("uint64_t *")
        return top[0] if lib.dtp_aead_replay_top(self._ctx, top) else None

    def set_in_order(self) -> None:
        """From now on accept records in counter order only (any other counter is
        refused as a replay): for carriers that deliver records as they were sent, where
        one removed or moved on the way must not go unnoticed. Only before the first
        record is accepted (LocalProtocolError after)."""
        if lib.dtp_aead_set_in_order(self._ctx) != 0:
            raise LocalProtocolError("records were accepted already", ErrorCode.ARG)


# --------------------------------------------------------------------------------------
# reassembly


_U8 = ffi.typeof("uint8_t[]")


def _writable(dst: bytearray | memoryview) -> Any:
    """A C pointer into a writable buffer (read-only ones are refused)."""
    try:
        return ffi.from_buffer(_U8, dst, True)
    except (TypeError, BufferError):
        raise LocalProtocolError("the destination is read-only", ErrorCode.ARG) from None


_READY: int = lib.DTP_READY
_WAKE: int = lib.DTP_WAKE
_ERR_IO: int = lib.DTP_ERR_IO
_ERR_QUEUE: int = lib.DTP_ERR_QUEUE
_ERR_BUFFER: int = lib.DTP_ERR_BUFFER
OWN_CAP = LANE_OWN_CAP
FIRST_OUT = 2048  # what a lane's seal output starts at (it grows to seal_cap on demand)
_from_buffer = ffi.from_buffer


def _bytes_like(data: Any) -> Any:
    """``data``'s buffer for a C call, or the TypeError a socket raises for it."""
    try:
        return _from_buffer(data)
    except TypeError:
        raise TypeError(f"a bytes-like object is required, not {type(data).__name__!r}") from None


_lane_recv = lib.dtp_lane_recv
_rx_take = lib.dtp_rx_take_counts
_RX_COUNTS: int = lib.DTP_RX_COUNTS
#: take's counts (consumed, records, taken, spill_off, spill_len: the DTP_RX_* order)
_unpack_rx = struct.Struct(f"{_RX_COUNTS}N").unpack_from
_lane_send = lib.dtp_lane_send
_wait_readable = lib.dtp_wait_readable


def _lane_failed(rc: int, err: int) -> NoReturn:
    """Raise for a lane call's negative result ``rc``: OSError (``err``: the errno)
    when the carrier's wait, read or write failed, else the code's DTPError."""
    if rc == _ERR_IO:
        raise OSError(err, os.strerror(err))
    raise error_for(rc, remote=False)


_SCRATCH_KEPT = 4  # most spare take() scratch buffers (one per thread taking at once)
# take()'s scratch (a record's whole plaintext, when its data cannot go straight to the
# destination), borrowed for the call rather than one kept by every lane: an idle
# connection then holds no page of it. Pop and append are atomic (the C call releases
# the GIL: threads taking at once each borrow one of their own).
_spare_scratch: list[Any] = []
# take()'s last destination given with ``keep`` and its C pointer, as one tuple (swapped
# whole: threads read a pair that belongs together). A connection's reads go into one
# of a few long-lived spare buffers: ffi.from_buffer of the same one, every read, is
# made once.
_kept_out: list[tuple[Any, Any]] = [(None, None)]
# (and the last source given with ``size``: a connection's reads come into its thread's
# one long-lived read buffer)
_kept_src: list[tuple[Any, Any]] = [(None, None)]


class NativeLane:
    """The fast path of an established stream over a reliable carrier (C core).

    :meth:`seal` seals stream bytes into a buffer the lane owns (``dtp_stream_seal``);
    :meth:`take` takes one stream's in-order bytes out of received records straight
    into the caller's buffer (``dtp_rx_take_counts``). Each is one C call with every
    buffer and result slot allocated once, so a small message costs little more than the
    crypto. The AEADs are the connection's own (their counters and replay window are
    shared with its general path). Not thread-safe.
    """

    def __init__(
        self,
        send: NativeAead,
        recv: NativeAead,
        seal_cap: int = 1 << 18,
        recv_cap: int = 1 << 18,
    ) -> None:
        max_seal = lane_max_seal(seal_cap, recv_cap)
        self._send = send
        self._recv = recv
        self._send_ctx = send._ctx
        self._recv_ctx = recv._ctx
        #: Most bytes one :meth:`seal` call takes.
        self.max_seal = max_seal
        # seal's output starts small and grows to seal_cap as the seals ask for it (a
        # small message's seal fits, and an idle connection keeps a page less); the
        # blocking adapter's flow_seal and send get seal_cap at once (_ready_io)
        self._seal_cap = seal_cap
        self._out = _new_uninit("uint8_t[]", FIRST_OUT)
        self._out_cap = FIRST_OUT
        self._out_view = memoryview(ffi.buffer(self._out))
        # (seal's two counts, and take's DTP_RX_COUNTS read with one unpack of their
        # buffer: a cdata field or item costs an attribute access or index each)
        self._counts = ffi.new("size_t[]", _RX_COUNTS)
        self._counts1 = self._counts + 1
        self._counts_buf = ffi.buffer(self._counts)
        # flow_take's (made by _ready_io; take borrows one of _spare_scratch)
        self._scratch: Any = None
        self._scratch_view = memoryview(b"")
        #: The state of the stream the connection lends (``dtp_flow``): see
        #: :meth:`dtp.protocol.connection.Connection.lend`.
        self.flow = ffi.new("dtp_flow *")
        # the carrier reads' buffers (rview, own): made by _ready_io on first use
        self._rbuf: Any = None
        self._rbuf_cap = recv_cap
        self._own: Any = None
        self.own_cap = OWN_CAP
        #: The carrier I/O's context (``dtp_lane``): the buffers, and what the last
        #: :meth:`recv` / :meth:`send` did (``got``, ``end``, ``sent``, ``status``,
        #: ``err``; ``pending``: the start of a record kept at ``rview[:pending]``).
        self.io = io = ffi.new("dtp_lane *")
        io.send = self._send_ctx
        io.recv = self._recv_ctx
        io.flow = self.flow
        io.out = self._out
        io.out_cap = FIRST_OUT
        io.max_chunk = MAX_FRAME_DATA  # every record full (its plaintext 16,384 bytes)
        self._err = ffi.new("int *")

    #: Where the adapter reads the carrier for :meth:`flow_take` (``recv_cap`` bytes)
    rview = t.MadeOnUse()
    #: A buffer of the lane's own for :meth:`recv` to read into (``OWN_CAP`` bytes)
    own = t.MadeOnUse()

    def _ready_io(self) -> None:
        """Make the carrier reads' buffers, flow_take's scratch and the full seal
        output. Only the blocking adapter reads and writes its carrier through the lane
        (a stream lent to it): the asyncio one, and connections whose streams take the
        general path, never touch them, and a server keeps thousands of idle
        connections -- each malloc'd block costs its first page at least."""
        if self._rbuf is None:
            self._rbuf = _new_uninit("uint8_t[]", self._rbuf_cap)
            self.rview = memoryview(ffi.buffer(self._rbuf))
            self._own = _new_uninit("uint8_t[]", OWN_CAP)
            self.own = memoryview(ffi.buffer(self._own))
            self.io.rbuf = self._rbuf
            self.io.rbuf_cap = self._rbuf_cap
            self._scratch = _new_uninit("uint8_t[]", MAX_RECORD_PLAINTEXT)
            self._scratch_view = memoryview(ffi.buffer(self._scratch))
            self.io.scratch = self._scratch
            self.io.scratch_cap = MAX_RECORD_PLAINTEXT
            self._grow_output(self._seal_cap)

    def _grow_output(self, cap: int) -> None:
        """Seal into a new buffer of ``cap`` bytes from now on (the last seal's view
        keeps the old one alive for whoever holds it)."""
        self._out = _new_uninit("uint8_t[]", cap)
        self._out_cap = cap
        self._out_view = memoryview(ffi.buffer(self._out))
        self.io.out = self._out
        self.io.out_cap = cap

    @property
    def pending(self) -> int:
        """Bytes of a record the carrier has only begun to bring, kept at
        ``rview[:pending]`` for :meth:`recv` to complete (the connection moves them to
        and from its own input buffer when it lends or takes back a stream)."""
        n: int = self.io.pending
        return n

    @pending.setter
    def pending(self, n: int) -> None:
        if not 0 <= n <= MAX_RECORD or n > len(self.rview):
            raise LocalProtocolError("not the start of one record", ErrorCode.ARG)
        self.io.pending = n

    @property
    def status(self) -> int:
        """The status of the last :meth:`recv` or :meth:`wait_read`."""
        n: int = self.io.status
        return n

    def seal(
        self,
        counter: int,
        stream_id: int,
        offset: int,
        data: bytes | bytearray | memoryview,
        head: bytes | bytearray | memoryview = b"",
    ) -> tuple[memoryview, int]:
        """Seal ``data`` (at most :attr:`max_seal` bytes with ``head``) as STREAM records
        from ``counter``; returns the sealed bytes (a view valid until the next call) and
        the number of records. ``head`` (bytes, at most ``MAX_SEAL_HEAD`` of them): stream
        bytes before ``data``, sealed as if joined to it (a message's length prefix)."""
        # (bytes go to C as they are: cffi passes their buffer, with no cdata made and no
        # keywords parsed as ffi.from_buffer makes and parses)
        src = data if type(data) is bytes else _from_buffer(data)
        size = len(src)
        if type(head) is not bytes:
            head = _from_buffer(head)  # (a bytearray or view, as the twin takes)
        head_len = len(head)
        counts = self._counts
        try:
            if size + head_len > self.max_seal:
                raise LocalProtocolError("more data than one seal takes", ErrorCode.ARG)
            rc = lib.dtp_stream_seal_head(
                self._send_ctx,
                counter,
                stream_id,
                offset,
                head,
                head_len,
                src,
                size,
                0,
                MAX_FRAME_DATA,
                self._out,
                self._out_cap,
                counts,
                self._counts1,
            )
        except OverflowError:
            # a number outside uint64_t: the code the twin gives (caught, not checked
            # first, to keep the checks off the per-call path)
            if not 0 <= counter < 2**64:
                raise LocalProtocolError("record counter out of range", ErrorCode.COUNTER) from None
            raise LocalProtocolError("value out of varint range", ErrorCode.VARINT) from None
        finally:
            del src  # (see _from)
        if rc < 0:
            if rc == _ERR_BUFFER and self._out_cap < self._seal_cap:
                # more than the output holds yet: grown (to at most seal_cap, which
                # holds max_seal), the seal runs again
                self._grow_output(min(self._seal_cap, max(2 * self._out_cap, 2 * size + 4096)))
                return self.seal(counter, stream_id, offset, data, head)
            raise error_for(rc, remote=False)
        return self._out_view[: counts[0]], counts[1]

    def release_output(self) -> None:
        """Leave the buffer the last seal returned a view of to whoever holds that view
        and seal into a new one from now on (an asyncio transport of Python 3.12 and
        later queues what it is given as it is: the next seal must not overwrite it)."""
        self._grow_output(self._out_cap)  # (the old view keeps its own)

    def take(
        self,
        buf: bytes | bytearray | memoryview,
        stream_id: int,
        offset: int,
        stream_limit: int,
        conn_received: int,
        conn_limit: int,
        dst: bytearray | memoryview,
        keep: bool = False,
        size: int | None = None,
    ) -> TakeResult:
        """Take the records at the start of ``buf`` that carry ``stream_id``'s next
        bytes within both flow-control limits, their data into ``dst``; stops before
        anything else (see ``dtp_rx_take``: called as ``dtp_rx_take_counts``). ``dst``
        past ``taken`` is unspecified afterwards (data decrypted in place there is
        zeroed when its record fails authentication). ``keep``: ``dst`` is the caller's
        own long-lived buffer, never resized or released: its C pointer is kept for the
        next take into it (which holds one export of it until another takes its
        place). ``size``: take from ``buf[:size]`` only, ``buf`` being the caller's
        long-lived read buffer (its pointer kept likewise, for the next take from it)."""
        if size is None:
            src = _from_buffer(buf)
            size = len(src)
        else:
            kept = _kept_src[0]
            src = kept[1] if kept[0] is buf else _from_buffer(buf)
            if not 0 <= size <= len(src):
                del src  # (see _from)
                raise LocalProtocolError("size past the buffer's end", ErrorCode.ARG)
            if src is not kept[1]:  # (a new one, kept once it is known good)
                _kept_src[0] = (buf, src)
        kept = _kept_out[0]
        if kept[0] is dst:
            out = kept[1]
        else:
            try:  # (inline _writable: one call less per take)
                out = _from_buffer(_U8, dst, True)
            except (TypeError, BufferError):
                del src  # (see _from)
                raise LocalProtocolError("the destination is read-only", ErrorCode.ARG) from None
            if keep:
                _kept_out[0] = (dst, out)
        try:
            scratch = _spare_scratch.pop()
        except IndexError:
            scratch = _new_uninit("uint8_t[]", MAX_RECORD_PLAINTEXT)
        try:
            try:
                rc = _rx_take(
                    self._recv_ctx,
                    src,
                    size,
                    stream_id,
                    offset,
                    stream_limit,
                    conn_received,
                    conn_limit,
                    out,
                    len(out),
                    scratch,
                    MAX_RECORD_PLAINTEXT,
                    self._counts,
                    _RX_COUNTS,
                )
            except OverflowError:  # (a number outside uint64_t)
                del src, out  # (see _from)
                raise
            del src, out  # (see _from)
            if rc < 0:
                raise error_for(rc, remote=False)
            consumed, records, taken, spill_off, spill_len = _unpack_rx(self._counts_buf)
            spill: bytes | memoryview = b""
            if spill_len:  # (a copy: the scratch goes back to the others)
                spill = ffi.buffer(scratch + spill_off, spill_len)[:]
        finally:
            if len(_spare_scratch) < _SCRATCH_KEPT:
                _spare_scratch.append(scratch)
        return _tuple_new(TakeResult, (rc, consumed, records, taken, spill))

    def flow_seal(self, data: bytes | bytearray | memoryview, now: float) -> memoryview:
        """Seal the start of ``data`` on the lent stream, as much as its limits allow
        (``dtp_flow_seal``); returns the records (a view valid until the next call;
        empty when nothing was sealed). ``flow.taken``: how much of ``data`` they hold."""
        if self._rbuf is None:
            self._ready_io()
        flow = self.flow
        src = _from_buffer(data)
        rc = lib.dtp_flow_seal(
            self._send_ctx,
            flow,
            src,
            len(src),  # bytes, whatever the buffer's item size
            MAX_FRAME_DATA,
            self._out,
            self._out_cap,
            now,
        )
        del src  # (see _from)
        if rc:
            if rc < 0:
                raise error_for(rc, remote=False)
            return self._out_view[:0]
        return self._out_view[: flow.written]

    def flow_take(self, n: int, dst: bytearray | memoryview, now: float) -> int:
        """Take the lent stream's next bytes from the records at the start of
        ``rview[:n]`` (the carrier read there) into ``dst`` (``dtp_flow_take``); returns
        the status (OK, DUE, NEED_MORE, FULL, STOP). ``flow.rx`` holds what was taken
        and consumed; :meth:`flow_spill` the data of a record that did not fit."""
        if not 0 <= n <= len(self.rview):
            raise LocalProtocolError("more than the receive buffer holds", ErrorCode.ARG)
        out = _writable(dst)
        rc: int = lib.dtp_flow_take(
            self._recv_ctx,
            self.flow,
            self._rbuf,
            n,
            out,
            len(out),
            self._scratch,
            MAX_RECORD_PLAINTEXT,
            now,
        )
        del out  # (see _from)
        if rc < 0:
            raise error_for(rc, remote=False)
        return rc

    def wait_read(
        self,
        lock: Any,
        fd: int,
        wake_fd: int,
        timeout_ms: int,
        dst: bytearray | memoryview | int,
        stream_id: int,
    ) -> int:
        """Release ``lock`` while waiting up to ``timeout_ms`` (negative: forever) for
        the carrier ``fd`` or ``wake_fd`` (-1: none) to be readable
        (``dtp_wait_readable``), then, lock held again, :meth:`recv` -- if the flow is
        still lent ``stream_id`` (another thread may have lent another stream
        meanwhile). Returns what :meth:`recv` does; 0 with :attr:`status` WAKE (also
        when the flow changed hands: nothing was read) or WAIT after the wait alone.
        Raises OSError if the wait or the read fails."""
        if self._rbuf is None:
            self._ready_io()
        io = self.io
        err = self._err
        lock.release()
        try:
            rc: int = _wait_readable(fd, wake_fd, timeout_ms, err)
        finally:
            lock.acquire()
        if rc == _READY:
            flow = self.flow
            if flow.stream_id == stream_id and flow.can_recv:
                if type(dst) is int and 0 <= dst <= OWN_CAP:
                    # (recv's read into own, inline: a frame less per waited read)
                    n: int = _lane_recv(io, fd, self._own, dst)
                else:
                    try:
                        out = _from_buffer(_U8, dst, True)
                    except (TypeError, BufferError):
                        return self.recv(fd, dst)  # (raises; an int out of range too)
                    n = _lane_recv(io, fd, out, len(out))
                    del out  # (see _from)
                if n < 0:
                    _lane_failed(n, io.err)
                return n
            rc = _WAKE
        elif rc < 0:
            _lane_failed(rc, err[0])
        io.status = rc
        return 0

    def recv(self, fd: int, dst: bytearray | memoryview | int) -> int:
        """Read the carrier ``fd`` (non-blocking) once, after the :attr:`pending` bytes,
        and :meth:`flow_take` what is there into ``dst`` (``dtp_lane_recv``) -- a
        writable buffer, or a size: then into :attr:`own` (at most :attr:`own_cap`).
        Returns the bytes taken (:attr:`status` OK, or NEED_MORE with a record kept
        pending); 0 with :attr:`status` NEED_MORE (no record whole yet), WAIT (nothing
        to read), EOF, or FULL / STOP / DUE, when ``flow.rx`` tells what was taken and
        consumed and ``rview[flow.rx.consumed : io.end]`` is the general path's (nothing
        stays pending then; after DUE, only what stays :attr:`pending` is, which the
        connection takes when it takes the stream back). Raises OSError if the read
        fails."""
        if self._rbuf is None:
            self._ready_io()
        if type(dst) is int:
            if not 0 <= dst <= OWN_CAP:
                raise LocalProtocolError("more than the lane's own buffer", ErrorCode.ARG)
            n: int = _lane_recv(self.io, fd, self._own, dst)
        else:
            try:
                out = _from_buffer(_U8, dst, True)
            except (TypeError, BufferError):
                raise LocalProtocolError("the destination is read-only", ErrorCode.ARG) from None
            n = _lane_recv(self.io, fd, out, len(out))
            del out  # (see _from)
        if n < 0:
            _lane_failed(n, self.io.err)
        return n

    def feed(self, n: int, dst: bytearray | memoryview) -> int:
        """The carrier's next ``n`` bytes were written at ``rview[pending : pending +
        n]``: take them as :meth:`recv` takes what it reads (``dtp_lane_take``)."""
        if self._rbuf is None:
            self._ready_io()
        try:
            out = _from_buffer(_U8, dst, True)
        except (TypeError, BufferError):
            raise LocalProtocolError("the destination is read-only", ErrorCode.ARG) from None
        got: int = lib.dtp_lane_take(self.io, n, out, len(out))
        del out  # (see _from)
        if got < 0:
            raise error_for(got, remote=False)
        return got

    def send(
        self, fd: int, data: bytes | bytearray | memoryview, queue: list[memoryview] | None = None
    ) -> int:
        """:meth:`flow_seal` the start of ``data`` (stamped with the monotonic clock)
        and write the records to the carrier ``fd`` (``dtp_lane_send``); returns how
        many bytes of ``data`` are left (not sealed: 0 when all were). ``io.sent`` of
        ``flow.written`` bytes went out; the rest (a copy) is appended to ``queue``,
        when given, for the caller to write later. Raises OSError if the write
        fails."""
        if self._rbuf is None:
            self._ready_io()
        if type(data) is bytes:
            size = len(data)
            n: int = _lane_send(self.io, fd, data, size)
        else:
            try:
                buf = _from_buffer(data)
            except TypeError:
                buf = _bytes_like(data)  # (raises a socket's TypeError)
            size = len(buf)
            n = _lane_send(self.io, fd, buf, size)
            del buf  # (see _from)
        if n >= 0:
            return size - n
        return self._unsent(n, size, queue)

    def _unsent(self, n: int, size: int, queue: list[memoryview] | None) -> int:
        """:meth:`send` after ``dtp_lane_send`` returned the error ``n`` for ``size``
        bytes: the bytes left (a partial write queued), or raise."""
        io = self.io
        if n == _ERR_QUEUE:
            if queue is not None:
                queue.append(memoryview(self._out_view[io.sent : self.flow.written].tobytes()))
            taken: int = self.flow.taken
            return size - taken
        _lane_failed(n, io.err)

    def exchange(
        self,
        lock: Any,
        fd: int,
        wake_fd: int,
        data: bytes,
        queue: list[memoryview],
        release: Any,
        timeout_ms: int,
        size: int,
        stream_id: int,
    ) -> int:
        """:meth:`send` ``data`` and, when every record of all of it went out,
        :meth:`wait_read` up to ``size`` bytes (at most :attr:`own_cap`) into
        :attr:`own` -- a request and its answer in one call, the wait first (the answer
        cannot have come yet). ``release`` (a lock the caller holds, or None) is
        released once the records are written, or when this raises before. Returns what
        :meth:`wait_read` does; when not all of ``data`` went on the wire, -1 - the
        bytes of it left unsealed (the records sealed but not written are appended to
        ``queue``, as :meth:`send` does), and nothing waited. Raises OSError if the
        write, the wait or the read fails."""
        # (wait_read inline: one Python frame for the whole exchange, which is most of
        # a small call's cost when two processes share a CPU)
        if self._rbuf is None:
            self._ready_io()
        io = self.io
        size_in = len(data)
        try:
            if not 0 <= size <= OWN_CAP:
                raise LocalProtocolError("more than the lane's own buffer", ErrorCode.ARG)
            n: int = _lane_send(io, fd, data if type(data) is bytes else _bytes_like(data), size_in)
        finally:
            if release is not None:
                release.release()
        if n != size_in:
            return -1 - (size_in - n if n >= 0 else self._unsent(n, size_in, queue))
        err = self._err
        lock.release()
        try:
            rc: int = _wait_readable(fd, wake_fd, timeout_ms, err)
        finally:
            lock.acquire()
        if rc == _READY:
            flow = self.flow
            if flow.stream_id == stream_id and flow.can_recv:
                n = _lane_recv(io, fd, self._own, size)
                if n < 0:
                    _lane_failed(n, io.err)
                return n
            rc = _WAKE
        elif rc < 0:
            _lane_failed(rc, err[0])
        io.status = rc
        return 0

    def flow_spill(self) -> memoryview:
        """After :meth:`flow_take` returned FULL: the data of the last record that did
        not fit in ``dst`` (valid until the next call)."""
        rx = self.flow.rx
        return self._scratch_view[rx.spill_off : rx.spill_off + rx.spill_len]


class NativeReassembler:
    """Reorder buffer over a byte sequence space (C core); memory capped by ``window``."""

    def __init__(self, start_seq: int = 0, window: int = 1 << 20, max_ranges: int = 1024) -> None:
        if not (0 <= start_seq < 2**64 and 0 < window < 2**32 and 0 < max_ranges < 2**32):
            raise LocalProtocolError("reassembler parameters out of range", ErrorCode.ARG)
        r = lib.dtp_reasm_new(start_seq, window, max_ranges)
        if r == ffi.NULL:
            raise MemoryError("could not allocate a reassembly buffer")
        self._r = ffi.gc(r, lib.dtp_reasm_free)

    def push(self, seq: int, data: bytes | bytearray | memoryview) -> None:
        """Insert one chunk whose first byte has sequence number ``seq``."""
        self.push_many([(seq, data)])

    def push_many(self, chunks: Sequence[tuple[int, bytes | bytearray | memoryview]]) -> None:
        """Insert chunks in one call; on error nothing is inserted."""
        n = len(chunks)
        joined = b"".join([d for _, d in chunks])
        cchunks = ffi.new("dtp_chunk[]", max(1, n))
        off = 0
        try:
            for i, (seq, data) in enumerate(chunks):
                size = len(data)
                c = cchunks[i]
                c.seq = seq
                c.data_off = off
                c.len = size
                off += size
            if off != len(joined):
                # a chunk's items are wider than a byte: place the chunks by their bytes
                off = 0
                for i, (_, data) in enumerate(chunks):
                    size = memoryview(data).nbytes
                    cchunks[i].data_off = off
                    cchunks[i].len = size
                    off += size
        except OverflowError:
            raise LocalProtocolError("chunk sequence out of range", ErrorCode.ARG) from None
        # each code on its usual side: ARG is our misuse, WINDOW/FRAGMENTED the peer's
        _check(lib.dtp_reasm_push(self._r, cchunks, n, _from(joined), len(joined)))

    def pop(self, max_bytes: int | None = None) -> bytes:
        """Release contiguous bytes (all that are ready, or at most ``max_bytes``)."""
        ready = lib.dtp_reasm_readable(self._r)
        size = ready if max_bytes is None else min(ready, max_bytes)
        if size <= 0:
            return b""
        out = bytearray(size)
        written = ffi.new("size_t *")
        _check(lib.dtp_reasm_pop(self._r, _from(out), size, written), remote=False)
        return bytes(out[: written[0]])

    @property
    def next_seq(self) -> int:
        """Sequence number of the first byte not yet released."""
        return int(lib.dtp_reasm_next_seq(self._r))

    @property
    def readable(self) -> int:
        """Contiguous bytes ready to pop."""
        return int(lib.dtp_reasm_readable(self._r))

    @property
    def buffered(self) -> int:
        """All bytes held, contiguous or not."""
        return int(lib.dtp_reasm_buffered(self._r))


# --------------------------------------------------------------------------------------
# backend selection: mypy sees the native names; DTP_PUREPYTHON=1 swaps in the twins.

from dtp.native import _ham  # noqa: E402  (it uses the names above)
from dtp.native.reference._ham import decode_ham_batch, encode_ham_batch  # noqa: E402

NativeHamGraph = _ham.NativeHamGraph
native_find_ham_souls = _ham.native_find_ham_souls
native_zero_negative_states = _ham.native_zero_negative_states

if TYPE_CHECKING or not PUREPYTHON:
    write_record_header = native_write_record_header
    parse_records = native_parse_records
    decode_frames = native_decode_frames
    encode_frames = native_encode_frames
    Aead = NativeAead
    Reassembler = NativeReassembler
    HamGraph = NativeHamGraph
    Lane = NativeLane
    find_ham_souls = native_find_ham_souls
    zero_negative_states = native_zero_negative_states
else:
    from dtp.native.reference import (
        Aead,
        HamGraph,
        Lane,
        Reassembler,
        decode_frames,
        encode_frames,
        find_ham_souls,
        parse_records,
        write_record_header,
        zero_negative_states,
    )

BACKEND = "python" if PUREPYTHON else "c"

__all__ = [
    "BACKEND",
    "HAVE_NATIVE",
    "Aead",
    "HamGraph",
    "HamUpdate",
    "Lane",
    "Reassembler",
    "decode_frames",
    "decode_ham_batch",
    "encode_frames",
    "encode_ham_batch",
    "find_ham_souls",
    "parse_records",
    "write_record_header",
    "zero_negative_states",
]
