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


class BcsError(ValueError):
    """Bytes that are not the BCS form of the expected value."""


class BcsReader:
    """Reads the BCS form of a value field by field, refusing what BCS refuses: a
    length in a longer ULEB128 form than needed or above ``u32``, a value that runs
    past the end, a string that is not UTF-8 -- and, at :meth:`done`, bytes after it."""

    __slots__ = ("_at", "_data")

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._at = 0

    @property
    def position(self) -> int:
        """How many bytes were read."""
        return self._at

    def take(self, n: int) -> bytes:
        """The next ``n`` bytes."""
        end = self._at + n
        if end > len(self._data):
            raise BcsError("the value runs past the end of its bytes")
        out = self._data[self._at : end]
        self._at = end
        return out

    def uleb128(self) -> int:
        """A ULEB128 length or enum tag, in its shortest form, at most ``u32``."""
        value = shift = 0
        while True:
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                if byte == 0 and shift > 7:
                    raise BcsError("a ULEB128 length in a longer form than needed")
                break
            if shift >= 35:
                raise BcsError("a ULEB128 length longer than 5 bytes")
        if value > BCS_MAX_ULEB:
            raise BcsError("a ULEB128 length above u32")
        return value

    def uint(self, size: int) -> int:
        """A little-endian unsigned integer of ``size`` bytes (u8, u16, u64...)."""
        return int.from_bytes(self.take(size), "little")

    def vector(self) -> bytes:
        """A ``vector<u8>``: its length, then its bytes."""
        return self.take(self.uleb128())

    def string(self) -> str:
        """A ``String``: a ``vector<u8>`` of UTF-8."""
        try:
            return self.vector().decode("utf-8")
        except UnicodeDecodeError:
            raise BcsError("a string that is not UTF-8") from None

    def done(self) -> None:
        """The value ended: nothing may follow it."""
        if self._at != len(self._data):
            raise BcsError(f"{len(self._data) - self._at} bytes after the value")


def bcs_vector(data: bytes) -> bytes:
    """A ``vector<u8>`` (or a ``String``'s UTF-8): its ULEB128 length, then the bytes."""
    return uleb128(len(data)) + data
