"""The established-stream fast path: the twin of ``dtp_rx_take`` (aead.c) and of
:class:`dtp._core.NativeLane`.

A connection over a reliable carrier spends most of its life moving one stream's bytes
in order. The lane seals them (``dtp_stream_seal``) and, on the way in, takes the run of
records that each hold exactly one nonempty STREAM frame of the stream being read, at
its next offset and within both flow-control limits, copying their data straight into
the reader's buffer. Anything else -- another stream, a control frame, a FIN, a
malformed, replayed or forged record, a record past a limit -- stops the run untouched
(its plaintext wiped, the replay window not advanced) for the connection's general path
to open and judge.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag

from dtp._reference.aead import (
    COUNTER_RESERVED,
    MAX_STREAM_CHUNK,
    Aead,
    next_data_record,
    nonce,
)
from dtp._reference.limits import AEAD_TAG_LEN, RECORD_HEADER_LEN
from dtp._reference.varint import varint_decode
from dtp._types import FRAME_STREAM, FULL, NEED_MORE, OK, STOP, TakeResult
from dtp.errors import ErrorCode, LocalProtocolError

_STREAM_RECORD_OVERHEAD = RECORD_HEADER_LEN + AEAD_TAG_LEN + 25


def _stream_data(
    plain: bytes, stream_id: int, offset: int, stream_limit: int, received: int, limit: int
) -> int | None:
    """Where the data starts when ``plain`` is exactly one nonempty STREAM frame of
    ``stream_id`` at ``offset`` within both limits; None otherwise."""
    if len(plain) < 4 or plain[0] != FRAME_STREAM:
        return None
    pos = 1
    values = []
    for _ in range(3):
        got = varint_decode(plain, pos)
        if got is None:
            return None
        value, pos = got
        values.append(value)
    sid, off, n = values
    if sid != stream_id or off != offset or n == 0 or n != len(plain) - pos:
        return None
    if offset > stream_limit or n > stream_limit - offset:
        return None
    if received > limit or n > limit - received:
        return None
    return pos


class Lane:
    """The fast path of an established stream (pure Python); same methods and results
    as :class:`dtp._core.NativeLane`."""

    def __init__(self, send: Aead, recv: Aead, seal_cap: int = 1 << 18) -> None:
        per_record = MAX_STREAM_CHUNK + _STREAM_RECORD_OVERHEAD
        if seal_cap < per_record:
            raise LocalProtocolError("seal buffer below one record", ErrorCode.ARG)
        self._send = send
        self._recv = recv
        self.max_seal = (seal_cap // per_record) * MAX_STREAM_CHUNK

    def seal(
        self, counter: int, stream_id: int, offset: int, data: bytes | bytearray | memoryview
    ) -> tuple[memoryview, int]:
        """Seal ``data`` (at most :attr:`max_seal` bytes) as STREAM records from
        ``counter``; returns the sealed bytes and the number of records."""
        if len(data) > self.max_seal:
            raise LocalProtocolError("more data than one seal takes", ErrorCode.ARG)
        sealed, n = self._send.seal_stream(counter, stream_id, offset, data)
        return memoryview(sealed), n

    def take(
        self,
        buf: bytes | bytearray | memoryview,
        stream_id: int,
        offset: int,
        stream_limit: int,
        conn_received: int,
        conn_limit: int,
        dst: bytearray | memoryview,
    ) -> TakeResult:
        """Take the records at the start of ``buf`` that carry ``stream_id``'s next
        bytes within both flow-control limits, their data into ``dst``; stops before
        anything else."""
        view = memoryview(buf)
        out = memoryview(dst).cast("B")
        window = self._recv._window
        cipher = self._recv._cipher
        pos = taken = records = 0
        status = OK
        spill = b""
        while pos < len(view):
            if taken == len(out):
                status = FULL
                break
            header = next_data_record(view, pos)
            if isinstance(header, int):
                status = NEED_MORE if header == NEED_MORE else STOP
                break
            end = pos + RECORD_HEADER_LEN + header.body_len
            counter = header.counter
            if counter == COUNTER_RESERVED or not window.check(counter):
                status = STOP
                break
            try:
                plain = cipher.decrypt(
                    nonce(counter),
                    bytes(view[pos + RECORD_HEADER_LEN : end]),
                    bytes(view[pos : pos + RECORD_HEADER_LEN]),
                )
            except InvalidTag:
                status = STOP
                break
            start = _stream_data(plain, stream_id, offset, stream_limit, conn_received, conn_limit)
            if start is None:
                status = STOP
                break
            window.mark(counter)
            n = len(plain) - start
            copy = min(n, len(out) - taken)
            out[taken : taken + copy] = plain[start : start + copy]
            taken += copy
            offset += n
            conn_received += n
            records += 1
            pos = end
            if copy < n:
                spill = plain[start + copy :]
                status = FULL
                break
        return TakeResult(status, pos, records, taken, spill)
