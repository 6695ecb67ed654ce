"""Record protection: the twin of ``dtp_aead_*`` (aead.c), protocol.md section 4.

ChaCha20-Poly1305 (RFC 8439) exactly as Noise's ``ChaChaPoly`` (Noise spec, section
12.3): the 96-bit nonce is 4 zero bytes followed by the 64-bit counter, little-endian.
A DATA record is::

    header = kind 16 | flags 0 | body length u16le (= len(plaintext) + 16) | counter u64le
    record = header || ChaCha20-Poly1305(key, nonce(counter), ad=header, plaintext)

The receiver keeps a sliding replay window of :data:`REPLAY_WINDOW` counters
(:class:`ReplayWindow`). The cipher itself comes from ``cryptography``; everything
around it -- framing, batching, statuses, the window -- is spelled out here and must give
the same bytes and the same results as the C core.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from dtp.errors import (
    DecryptionError,
    DTPError,
    ErrorCode,
    LocalProtocolError,
    ProtocolError,
    error_for,
)
from dtp.native.reference._limits import (
    AEAD_KEY_LEN,
    AEAD_TAG_LEN,
    MAX_FRAME_DATA,
    MAX_RECORD_PLAINTEXT,
    MAX_SEAL_HEAD,
    MAX_STREAM_CHUNK,
    OPEN_FRAMES_MAX,
    RECORD_HEADER_LEN,
    RECORD_OVERHEAD,
    REPLAY_WINDOW,
    VARINT_MAX,
)
from dtp.native.reference._records import RECORD_HEADER, check_header
from dtp.native.reference._varint import varint_encode, varint_size
from dtp.native.types import (
    FRAME_ACK,
    FRAME_DATAGRAM,
    FRAME_MAX_STREAMS,
    FRAME_STREAM,
    FRAME_STREAM_FIN,
    FULL,
    NEED_MORE,
    OK,
    REC_DATA,
    STOP,
    OpenedFrames,
    OpenedRecord,
    OpenFramesResult,
    OpenResult,
    RecordHeader,
)

COUNTER_RESERVED = 2**64 - 1
"""Never used as a nonce, as in Noise: sealing stops before it, opening rejects it."""

INT_MAX = 2**31 - 1
"""Largest plaintext / associated data for one ``encrypt``/``decrypt`` (the C core hands
lengths to OpenSSL as ``int``)."""

_NONCE = struct.Struct("<4xQ")


def nonce(counter: int) -> bytes:
    """The 12-byte ChaCha20-Poly1305 nonce of ``counter``: 4 zero bytes || u64le."""
    return _NONCE.pack(counter)


def next_data_record(view: memoryview, pos: int) -> RecordHeader | int:
    """The DATA record at ``view[pos:]`` with its body complete (``next_data_record`` in
    aead.c), or why not: NEED_MORE, STOP (a record of another kind) or the header's
    error code. Checked in the order every open path uses."""
    if len(view) - pos < RECORD_HEADER_LEN:
        return NEED_MORE
    header = check_header(view, pos)
    if isinstance(header, ErrorCode):
        return int(header)
    if header.kind != REC_DATA:
        return STOP
    if pos + RECORD_HEADER_LEN + header.body_len > len(view):
        return NEED_MORE
    return header


class ReplayWindow:
    """Sliding window over received counters (protocol.md 4.3).

    ``top`` is the highest counter accepted so far (None before the first). Bit ``i``
    of ``seen`` is set when counter ``top - i`` was accepted, for ``0 <= i < 4096``.
    A counter ``c`` is new when ``c > top``, or ``top - c < 4096`` and bit ``top - c``
    is clear; anything else is a replay (including counters that were never seen but
    have fallen out of the window).
    """

    def __init__(self) -> None:
        self.top: int | None = None
        self.seen = 0
        #: Only the counter after ``top`` (0 first) is new (Aead.set_in_order).
        self.in_order = False

    def check(self, counter: int) -> bool:
        """True if ``counter`` may be accepted."""
        if self.in_order:
            return counter == (0 if self.top is None else self.top + 1)
        if self.top is None or counter > self.top:
            return True
        age = self.top - counter
        return age < REPLAY_WINDOW and not (self.seen >> age) & 1

    def mark(self, counter: int) -> None:
        """Record ``counter`` as accepted (``check`` must have returned True)."""
        if self.top is None:
            self.top, self.seen = counter, 1
        elif counter > self.top:
            shift = counter - self.top
            # A jump of a whole window or more forgets everything before it.
            kept = (self.seen << shift) if shift < REPLAY_WINDOW else 0
            self.top, self.seen = counter, (kept | 1) & ((1 << REPLAY_WINDOW) - 1)
        else:
            self.seen |= 1 << (self.top - counter)


class Aead:
    """One direction's ChaCha20-Poly1305 key and receive replay window (pure Python).

    Same methods and results as :class:`dtp.native.core.NativeAead`.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != AEAD_KEY_LEN:
            raise LocalProtocolError("AEAD key must be 32 bytes", ErrorCode.ARG)
        self._cipher = ChaCha20Poly1305(bytes(key))
        self._window = ReplayWindow()

    # ---- sealing ---------------------------------------------------------------------

    def seal(self, first_counter: int, plaintexts: Sequence[bytes | memoryview]) -> bytes:
        """Seal each plaintext as one DATA record, counters from ``first_counter``."""
        raw = [bytes(p) for p in plaintexts]  # (bytes: a buffer's bytes, not its items)
        for p in raw:
            if len(p) > MAX_RECORD_PLAINTEXT:
                raise LocalProtocolError("record plaintext too large", ErrorCode.RECORD_SIZE)
        return self._seal(first_counter, raw)

    def seal_one(self, counter: int, plaintext: bytes | memoryview) -> bytes:
        """As :meth:`dtp.native.core.NativeAead.seal_one`: ``seal(counter, [plaintext])``."""
        return self.seal(counter, [plaintext])

    def seal_chunks(
        self,
        first_counter: int,
        data: bytes | bytearray | memoryview,
        chunk: int = MAX_RECORD_PLAINTEXT,
    ) -> tuple[bytes, int]:
        """As :meth:`dtp.native.core.NativeAead.seal_chunks`."""
        if not 0 < chunk <= MAX_RECORD_PLAINTEXT:
            raise LocalProtocolError("chunk size out of range", ErrorCode.ARG)
        raw = bytes(data)
        n = max(1, -(-len(raw) // chunk))
        return self._seal(first_counter, [raw[i * chunk : (i + 1) * chunk] for i in range(n)]), n

    def _seal(self, first_counter: int, plaintexts: list[bytes]) -> bytes:
        if not 0 <= first_counter < 2**64:
            raise LocalProtocolError("record counter out of range", ErrorCode.COUNTER)
        n = len(plaintexts)
        if n == 0:
            return b""
        # Every counter used must stay below the reserved 2^64 - 1.
        if first_counter + n - 1 >= COUNTER_RESERVED:
            raise LocalProtocolError(code=ErrorCode.COUNTER)
        out = []
        for i, plaintext in enumerate(plaintexts):
            counter = first_counter + i
            header = RECORD_HEADER.pack(REC_DATA, 0, len(plaintext) + AEAD_TAG_LEN, counter)
            out.append(header)
            out.append(self._cipher.encrypt(nonce(counter), plaintext, header))
        return b"".join(out)

    # ---- opening ---------------------------------------------------------------------

    def open(self, buf: bytes | bytearray | memoryview, max_records: int = 1024) -> OpenResult:
        """As :meth:`dtp.native.core.NativeAead.open`."""
        # views are released on every path, errors included (callers resize buffers)
        with memoryview(buf) as base, base.cast("B") as view:
            return self._open(view, max_records)

    def _open(self, view: memoryview, max_records: int) -> OpenResult:
        cap = max(1, min(max_records, len(view) // RECORD_OVERHEAD + 1))
        records: list[OpenedRecord] = []
        pos = 0
        status: int = OK
        error: DTPError | None = None
        while pos < len(view):
            step = self._next(view, pos, len(records) == cap)
            if isinstance(step, _Stop):
                status, error = step
                break
            end, counter, plaintext = step
            if plaintext is None:
                records.append(OpenedRecord(counter, b"", True))
            else:
                self._window.mark(counter)
                records.append(OpenedRecord(counter, plaintext, False))
            pos = end
        return OpenResult(records, pos, int(status), error)

    def _next(
        self, view: memoryview, pos: int, full: bool
    ) -> _Stop | tuple[int, int, bytes | None]:
        """The DATA record at ``pos`` of an open walk: its end, counter and plaintext
        (None for a replay, which does not stop the walk), or why the walk stops there
        (``full``: the caller has no room for another record). The window is not marked."""
        header = next_data_record(view, pos)
        if isinstance(header, int):
            return _Stop(header, _remote_error(ErrorCode(header)) if header < 0 else None)
        if full:
            return _Stop(FULL)
        counter = header.counter
        if counter == COUNTER_RESERVED:
            # Never sealed by an honest peer: the same answer as a forgery.
            return _Stop(ErrorCode.DECRYPT, DecryptionError())
        end = pos + RECORD_HEADER_LEN + header.body_len
        if not self._window.check(counter):
            # Checked before decrypting; lossy carriers duplicate, so go on.
            return end, counter, None
        ad = bytes(view[pos : pos + RECORD_HEADER_LEN])
        body = bytes(view[pos + RECORD_HEADER_LEN : end])
        try:
            return end, counter, self._cipher.decrypt(nonce(counter), body, ad)
        except InvalidTag:
            return _Stop(ErrorCode.DECRYPT, DecryptionError())

    # ---- stream fast paths (dtp_stream_seal, dtp_aead_open_frames) ----------------

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
        """Seal stream bytes as records of one STREAM frame each (``dtp_stream_seal``):
        ``data`` in chunks of ``max_chunk``, or of what fills the record's plaintext to
        16,384 bytes where the frame header beside ``max_chunk`` would pass it (one
        empty record for empty data), the last frame STREAM_FIN when ``fin``. Returns
        (sealed bytes, number of records). ``head`` (at most :data:`MAX_SEAL_HEAD`
        bytes): stream bytes before ``data``, sealed as the two joined
        (``dtp_stream_seal_head``)."""
        first = memoryview(head).tobytes()  # (a bytes-like head only, as C takes)
        raw = first + bytes(data)
        if not 0 <= first_counter < 2**64:
            raise LocalProtocolError("record counter out of range", ErrorCode.COUNTER)
        if max_chunk <= 0:
            raise LocalProtocolError("chunk size out of range", ErrorCode.ARG)
        if len(first) > MAX_SEAL_HEAD:
            raise LocalProtocolError("a seal's head is too long", ErrorCode.ARG)
        if max_chunk > MAX_FRAME_DATA:
            raise LocalProtocolError(code=ErrorCode.FRAME_SIZE)
        if not (0 <= stream_id <= VARINT_MAX and 0 <= offset <= VARINT_MAX):
            raise LocalProtocolError("value out of varint range", ErrorCode.VARINT)
        if len(raw) > VARINT_MAX - offset:
            raise LocalProtocolError("stream offset out of range", ErrorCode.FRAME_VALUE)
        plaintexts = []
        pos = 0
        sid = varint_encode(stream_id) or b""
        while True:
            chunk_len = min(max_chunk, len(raw) - pos)
            fixed = 1 + len(sid) + varint_size(offset + pos)
            if fixed + varint_size(chunk_len) + chunk_len > MAX_RECORD_PLAINTEXT:
                chunk_len = MAX_RECORD_PLAINTEXT - fixed - 2  # (a 2-byte length)
            end = pos + chunk_len
            ftype = FRAME_STREAM_FIN if fin and end == len(raw) else FRAME_STREAM
            header = bytes([ftype]) + sid
            header += (varint_encode(offset + pos) or b"") + (varint_encode(chunk_len) or b"")
            plaintexts.append(header + raw[pos:end])
            pos = end
            if pos >= len(raw):
                break
        n = len(plaintexts)
        if first_counter + n - 1 >= COUNTER_RESERVED:
            raise LocalProtocolError(code=ErrorCode.COUNTER)
        return self._seal(first_counter, plaintexts), n

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
        ``max_streams`` is 0 (a MAX_STREAMS of 0 would raise no limit), a MAX_STREAMS
        frame of it after (an answer and the stream credit its end returns). Checks in
        C's order: varints, the stream's end, the record's size, the counter."""
        raw = memoryview(data).tobytes()  # (its bytes, whatever its items)
        if not (
            0 <= stream_id <= VARINT_MAX
            and 0 <= offset <= VARINT_MAX
            and 0 <= max_streams <= VARINT_MAX
        ):
            raise LocalProtocolError("value out of varint range", ErrorCode.VARINT)
        if len(raw) > VARINT_MAX - offset:
            raise LocalProtocolError("stream offset out of range", ErrorCode.FRAME_VALUE)
        plain = b"".join(
            (
                bytes([FRAME_STREAM_FIN]),
                varint_encode(stream_id) or b"",
                varint_encode(offset) or b"",
                varint_encode(len(raw)) or b"",
                raw,
            )
        )
        if max_streams:
            plain += bytes([FRAME_MAX_STREAMS]) + (varint_encode(max_streams) or b"")
        if len(plain) > MAX_RECORD_PLAINTEXT:
            raise LocalProtocolError("record plaintext too large", ErrorCode.RECORD_SIZE)
        if not 0 <= counter < COUNTER_RESERVED:
            raise LocalProtocolError("record counter out of range", ErrorCode.COUNTER)
        return self._seal(counter, [plain])

    def open_frames(
        self,
        buf: bytes | bytearray | memoryview,
        max_records: int = 1024,
        max_frames: int = OPEN_FRAMES_MAX,
        max_ranges: int = OPEN_FRAMES_MAX,
        datagram_runs: bool = False,
    ) -> OpenFramesResult:
        """Open the DATA records at the start of ``buf`` and decode their frames
        (``dtp_aead_open_frames``). Stops as :meth:`open` does, and also (FULL) before
        a record whose frames or ACK ranges do not fit in what is left of
        ``max_frames`` / ``max_ranges``, or (with the decoder's error) at a record whose
        frames do not decode; the stopping record is not reported and does not move
        the replay window. A first record too big for the slots is opened alone, with
        room for any record (at most 16384 frames and ranges). ``datagram_runs``: a
        record of DATAGRAM frames alone comes as their payloads
        (:class:`~dtp.native.types.OpenedFrames`)."""
        if max_records < 0 or max_frames < 0 or max_ranges < 0:
            raise LocalProtocolError("limits must be >= 0", ErrorCode.ARG)
        with memoryview(buf) as base, base.cast("B") as view:
            cap = max(1, min(max_records, len(view) // RECORD_OVERHEAD + 1))
            runs = bool(datagram_runs)
            result = self._open_frames(view, cap, max_frames, max_ranges, runs)
            if result.status == FULL and not result.records:
                result = self._open_frames(
                    view, 1, MAX_RECORD_PLAINTEXT, MAX_RECORD_PLAINTEXT, runs
                )
            return result

    def _open_frames(
        self, view: memoryview, cap: int, max_frames: int, max_ranges: int, runs: bool
    ) -> OpenFramesResult:
        from dtp.native.reference._frames import decode_frames

        records: list[OpenedFrames] = []
        pos = 0
        status: int = OK
        error: DTPError | None = None
        n_frames = n_ranges = 0
        while pos < len(view):
            step = self._next(view, pos, len(records) == cap)
            if isinstance(step, _Stop):
                status, error = step
                break
            end, counter, plaintext = step
            if plaintext is None:
                records.append(OpenedFrames(counter, True, []))
                pos = end
                continue
            try:
                batch = decode_frames(plaintext, True, max_frames - n_frames, max_ranges - n_ranges)
            except ProtocolError as exc:
                status, error = int(exc.code), exc
                break
            if batch.status == FULL:
                status = FULL
                break
            frames = list(batch)
            n_frames += len(frames)
            n_ranges += sum(len(f.ranges) for f in frames)
            self._window.mark(counter)
            if runs and frames and all(f.type == FRAME_DATAGRAM for f in frames):
                payloads = [bytes(f.data) for f in frames]
                records.append(OpenedFrames(counter, False, [], payloads))
            else:
                records.append(OpenedFrames(counter, False, frames))
            pos = end
        return OpenFramesResult(records, pos, int(status), error)

    def open_lone_frame(self, buf: bytes | bytearray | memoryview) -> OpenedFrames | None:
        """``buf`` opened when it is exactly one DATA record whose plaintext is exactly
        one frame, not an ACK (``dtp_aead_open_lone_frame``): the record as
        ``open_frames(..., datagram_runs=True)`` reports it (the replay window advances
        for it; a DATAGRAM's payload in ``datagrams``, as bytes); None, with nothing
        changed, for anything else (:meth:`open_frames` opens it and judges)."""
        from dtp.native.reference._frames import decode_frames

        with memoryview(buf) as base, base.cast("B") as view:
            header = next_data_record(view, 0)
            if isinstance(header, int) or RECORD_HEADER_LEN + header.body_len != len(view):
                return None
            counter = header.counter
            if (
                header.body_len == AEAD_TAG_LEN  # (an empty plaintext has no frame)
                or counter == COUNTER_RESERVED
                or not self._window.check(counter)
            ):
                return None
            ad = bytes(view[:RECORD_HEADER_LEN])
            body = bytes(view[RECORD_HEADER_LEN:])
        try:
            plaintext = self._cipher.decrypt(nonce(counter), body, ad)
            batch = decode_frames(plaintext, True, 1, 0)
        except (InvalidTag, ProtocolError):
            return None
        frames = list(batch)
        if batch.status != OK or len(frames) != 1 or frames[0].type == FRAME_ACK:
            return None
        self._window.mark(counter)
        if frames[0].type == FRAME_DATAGRAM:
            return OpenedFrames(counter, False, [], [bytes(frames[0].data)])
        return OpenedFrames(counter, False, frames)

    # ---- single messages (Noise's ChaChaPoly) ----------------------------------------

    def encrypt(self, counter: int, ad: bytes, plaintext: bytes) -> bytes:
        """Seal one message (ciphertext || tag), as Noise's ChaChaPoly ``encrypt``."""
        if not 0 <= counter < COUNTER_RESERVED:
            raise LocalProtocolError("counter out of range", ErrorCode.COUNTER)
        ad, plaintext = bytes(ad), bytes(plaintext)  # their bytes, whatever the item size
        if len(ad) > INT_MAX or len(plaintext) > INT_MAX:
            raise LocalProtocolError(code=ErrorCode.ARG)
        return self._cipher.encrypt(nonce(counter), plaintext, ad)

    def decrypt(self, counter: int, ad: bytes, ciphertext: bytes) -> bytes:
        """Open one message; any failure raises :class:`~dtp.errors.DecryptionError`."""
        if not 0 <= counter < COUNTER_RESERVED:
            raise LocalProtocolError("counter out of range", ErrorCode.COUNTER)
        ad, ciphertext = bytes(ad), bytes(ciphertext)  # their bytes, whatever the item size
        if len(ciphertext) < AEAD_TAG_LEN:
            raise DecryptionError()
        if len(ad) > INT_MAX or len(ciphertext) - AEAD_TAG_LEN > INT_MAX:
            raise _remote_error(ErrorCode.ARG)
        try:
            return self._cipher.decrypt(nonce(counter), ciphertext, ad)
        except InvalidTag:
            raise DecryptionError() from None

    @property
    def replay_top(self) -> int | None:
        """Highest counter accepted so far (None before the first)."""
        return self._window.top

    def set_in_order(self) -> None:
        """As :meth:`dtp.native.core.NativeAead.set_in_order`."""
        if self._window.top is not None:
            raise LocalProtocolError("records were accepted already", ErrorCode.ARG)
        self._window.in_order = True


class _Stop(NamedTuple):
    """Where an open walk stops: the status it returns, and the error it raises, if any."""

    status: int
    error: DTPError | None = None


def _remote_error(code: ErrorCode) -> DTPError:
    error = error_for(code, remote=True)
    assert isinstance(error, DTPError)
    return error


__all__ = [
    "COUNTER_RESERVED",
    "MAX_STREAM_CHUNK",
    "OPEN_FRAMES_MAX",
    "Aead",
    "ReplayWindow",
    "nonce",
]
