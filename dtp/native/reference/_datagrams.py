"""Twin of ``dtp_datagram_frames_encode`` (dtp_core/frame.c): a run of DATAGRAM frames
packed into records' plaintexts."""

from __future__ import annotations

from collections.abc import Sequence

from dtp.errors import ErrorCode, LocalProtocolError
from dtp.native.reference._limits import MAX_FRAME_DATA, MAX_RECORD_PLAINTEXT
from dtp.native.reference._varint import varint_encode
from dtp.native.types import FRAME_DATAGRAM

__all__ = ["encode_datagram_run"]

_TYPE = bytes((FRAME_DATAGRAM,))


def encode_datagram_run(
    datagrams: Sequence[bytes | bytearray | memoryview], limit: int
) -> list[bytes]:
    """The DATAGRAM frames of ``datagrams``, in order, packed into plaintexts of at most
    ``limit`` bytes each (1 ..= MAX_RECORD_PLAINTEXT, else ARG): a frame goes into the
    current plaintext while it fits, else it begins the next. Every datagram is checked
    before anything is encoded: one above MAX_FRAME_DATA bytes, or whose frame (its
    type, length and data) fits no plaintext, raises FRAME_SIZE. No datagrams, no
    plaintexts."""
    if not 1 <= limit <= MAX_RECORD_PLAINTEXT:
        raise LocalProtocolError(code=ErrorCode.ARG)
    frames: list[bytes] = []
    for data in datagrams:
        body = bytes(data)  # (a buffer of wider items: its bytes, as C reads them)
        n = len(body)
        header = _TYPE + (varint_encode(n) or b"")
        if n > MAX_FRAME_DATA or len(header) + n > limit:
            raise LocalProtocolError(code=ErrorCode.FRAME_SIZE)
        frames.append(header + body)
    records: list[bytes] = []
    current: list[bytes] = []
    used = 0
    for frame in frames:
        if used + len(frame) > limit:
            records.append(b"".join(current))
            current, used = [], 0
        current.append(frame)
        used += len(frame)
    if current:
        records.append(b"".join(current))
    return records
