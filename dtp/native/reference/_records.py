"""Record headers: the twin of dtp_records_parse / dtp_record_header_write (frame.c).

A record is a 12-byte header -- kind u8, flags u8, body length u16le, counter u64le --
and then the body (protocol.md, section 2).
"""

from __future__ import annotations

import struct
from typing import Final

from dtp.errors import ErrorCode, LocalProtocolError, ProtocolError, RemoteProtocolError
from dtp.native.reference._limits import (
    AEAD_TAG_LEN,
    MAX_HANDSHAKE_RECORD,
    MAX_RECORD_PLAINTEXT,
    RECORD_HEADER_LEN,
)
from dtp.native.types import (
    FULL,
    NEED_MORE,
    OK,
    REC_DATA,
    REC_HS_FINAL,
    REC_HS_INIT,
    REC_HS_RESP,
    RecordBatch,
    RecordHeader,
)

#: A record header: kind (u8), flags (u8), body length (u16le), counter (u64le).
RECORD_HEADER: Final = struct.Struct("<BBHQ")
_HANDSHAKE_KINDS = (REC_HS_INIT, REC_HS_RESP, REC_HS_FINAL)


def check_header(buf: bytes | memoryview, pos: int) -> RecordHeader | ErrorCode:
    """Validate the header at ``buf[pos:pos+12]`` (which must exist): kind, then flags,
    then body length. Returns the header or the failing code."""
    kind, flags, body_len, counter = RECORD_HEADER.unpack_from(buf, pos)
    if kind == REC_DATA:
        if flags != 0:
            return ErrorCode.RECORD_FLAGS
        if not AEAD_TAG_LEN <= body_len <= MAX_RECORD_PLAINTEXT + AEAD_TAG_LEN:
            return ErrorCode.RECORD_SIZE
    elif kind in _HANDSHAKE_KINDS:
        if flags != 0:
            return ErrorCode.RECORD_FLAGS
        if not 1 <= body_len <= MAX_HANDSHAKE_RECORD:
            return ErrorCode.RECORD_SIZE
    else:
        return ErrorCode.RECORD_KIND
    return RecordHeader(kind, flags, body_len, counter, pos)


def parse_records(buf: bytes | bytearray | memoryview, max_records: int = 1024) -> RecordBatch:
    """Split a byte stream into whole records (see ``dtp_records_parse``)."""
    # the view is released on every path, errors included: callers resize their
    # buffers right after (a live export would make that fail)
    # (cast: a buffer of wider items is read as its bytes, as the C core reads it)
    with memoryview(buf) as base, base.cast("B") as view:
        return _parse(view, max_records)


def _parse(view: memoryview, max_records: int) -> RecordBatch:
    cap = max(1, min(max_records, len(view) // RECORD_HEADER_LEN + 1))
    records: list[RecordHeader] = []
    pos = 0
    status = OK
    while pos < len(view):
        if len(view) - pos < RECORD_HEADER_LEN:
            status = NEED_MORE
            break
        if len(records) == cap:
            status = FULL
            break
        header = check_header(view, pos)
        if isinstance(header, ErrorCode):
            raise RemoteProtocolError(code=header)
        if len(view) - pos - RECORD_HEADER_LEN < header.body_len:
            status = NEED_MORE
            break
        records.append(header)
        pos += RECORD_HEADER_LEN + header.body_len
    return RecordBatch(records, pos, status)


def write_record_header(kind: int, flags: int, body_len: int, counter: int) -> bytes:
    """The 12-byte header of a record; invalid fields raise LocalProtocolError."""
    if not (0 <= kind <= 0xFF and 0 <= flags <= 0xFF and 0 <= counter < 2**64):
        raise LocalProtocolError("record header field out of range", ErrorCode.ARG)
    if not 0 <= body_len <= 0xFFFF:
        raise LocalProtocolError(code=ErrorCode.RECORD_SIZE)
    header = RECORD_HEADER.pack(kind, flags, body_len, counter)
    checked = check_header(header, 0)
    if isinstance(checked, ErrorCode):
        raise LocalProtocolError(code=checked)
    return header


__all__ = ["ProtocolError", "check_header", "parse_records", "write_record_header"]
