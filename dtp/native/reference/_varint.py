"""QUIC variable-length integers (RFC 9000 section 16), the twin of dtp_core/util.c."""

from __future__ import annotations

from dtp.native.reference._limits import VARINT_MAX


def varint_size(value: int) -> int:
    """Bytes needed to encode ``value`` minimally; 0 if out of range."""
    if value < 0 or value > VARINT_MAX:
        return 0
    if value < 1 << 6:
        return 1
    if value < 1 << 14:
        return 2
    if value < 1 << 30:
        return 4
    return 8


def varint_encode(value: int) -> bytes | None:
    """Minimal encoding of ``value``, or None when it is out of range."""
    size = varint_size(value)
    if size == 0:
        return None
    prefix = {1: 0x00, 2: 0x40, 4: 0x80, 8: 0xC0}[size]
    raw = bytearray(value.to_bytes(size, "big"))
    raw[0] |= prefix
    return bytes(raw)


def varint_decode(buf: bytes | memoryview, pos: int) -> tuple[int, int] | None:
    """Decode at ``buf[pos:]``: (value, new position), or None if ``buf`` is too short.

    Non-minimal encodings are accepted, as RFC 9000 allows.
    """
    if pos >= len(buf):
        return None
    first = buf[pos]
    size = 1 << (first >> 6)
    if pos + size > len(buf):
        return None
    value = first & 0x3F
    for i in range(1, size):
        value = (value << 8) | buf[pos + i]
    return value, pos + size
