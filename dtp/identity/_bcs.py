"""ULEB128, the variable-length integer BCS (and so Sui) uses for lengths."""

from __future__ import annotations

from typing import Final

from dtp.errors import InvalidArgument

#: BCS caps every length and variant index at ``u32``.
BCS_MAX_ULEB: Final = 2**32 - 1


def uleb128(n: int) -> bytes:
    """Encode a non-negative integer as ULEB128 (7 bits per byte, low bits first)."""
    if n < 0:
        raise ValueError(f"ULEB128 encodes non-negative integers, got {n}")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def bcs_uleb128(n: int) -> bytes:
    """ULEB128, as BCS writes lengths: :class:`~dtp.errors.InvalidArgument` unless ``n``
    is an int from 0 to :data:`BCS_MAX_ULEB`."""
    if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n <= BCS_MAX_ULEB:
        raise InvalidArgument(f"A BCS length must be an integer from 0 to 2**32-1, got {n!r}.")
    return uleb128(n)
