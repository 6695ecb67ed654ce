"""ULEB128, the variable-length integer BCS (and so Sui) uses for lengths."""

from __future__ import annotations


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
