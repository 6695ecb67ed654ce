"""The msgpack framing of the transport parameters (docs/protocol.md 8.2): one map whose
keys are msgpack strings, walked without decoding the values of keys nobody knows.

A general msgpack decoder (``msgpack.unpackb``) judges every value it meets: it refused a
nested map with integer keys, a string that is not UTF-8 or a timestamp extension of the
wrong size anywhere in the payload, so an unknown key -- which 8.2 says is ignored
whatever its value -- could still fail the handshake. Here an unknown key's value only
has to be one well-formed msgpack object (its framing); the known keys are read by the
strict rules of 8.2 (:func:`read_uint`, :func:`read_bin`)."""

from __future__ import annotations

import struct
from typing import Final

from dtp.errors import HandshakeError

__all__ = ["read_bin", "read_uint", "split_map"]

# type byte -> (size of the length field, or of the value for fixed-size types; extra
# bytes after the length: 1 for an extension's type byte). Fixed-size types have no
# length field and are listed in _FIXED.
_FIXED: Final = {
    0xC0: 0,  # nil
    0xC2: 0,  # false
    0xC3: 0,  # true
    0xCA: 4,  # float 32
    0xCB: 8,  # float 64
    0xCC: 1,  # uint 8
    0xCD: 2,  # uint 16
    0xCE: 4,  # uint 32
    0xCF: 8,  # uint 64
    0xD0: 1,  # int 8
    0xD1: 2,  # int 16
    0xD2: 4,  # int 32
    0xD3: 8,  # int 64
    0xD4: 2,  # fixext 1 (type byte + 1)
    0xD5: 3,  # fixext 2
    0xD6: 5,  # fixext 4
    0xD7: 9,  # fixext 8
    0xD8: 17,  # fixext 16
}
# bin 8/16/32, str 8/16/32: a length, then that many bytes; ext 8/16/32: a length, a
# type byte, then that many bytes
_SIZED: Final = {
    0xC4: (1, 0),
    0xC5: (2, 0),
    0xC6: (4, 0),
    0xD9: (1, 0),
    0xDA: (2, 0),
    0xDB: (4, 0),
    0xC7: (1, 1),
    0xC8: (2, 1),
    0xC9: (4, 1),
}
_LENGTH_FORMAT: Final = {1: ">B", 2: ">H", 4: ">I", 8: ">Q"}


def _malformed() -> HandshakeError:
    return HandshakeError("malformed transport parameters")


def _length(data: bytes, pos: int, size: int) -> tuple[int, int]:
    if pos + size > len(data):
        raise _malformed()
    (value,) = struct.unpack_from(_LENGTH_FORMAT[size], data, pos)
    return int(value), pos + size


def _container(data: bytes, pos: int) -> tuple[int, int] | None:
    """``(items, position after the header)`` if an array or map starts at ``pos`` (a
    map of ``n`` pairs is ``2n`` items), else None."""
    byte = data[pos]
    if 0x90 <= byte <= 0x9F:
        return byte - 0x90, pos + 1
    if 0x80 <= byte <= 0x8F:
        return 2 * (byte - 0x80), pos + 1
    if byte in (0xDC, 0xDD):
        count, after = _length(data, pos + 1, 2 if byte == 0xDC else 4)
        return count, after
    if byte in (0xDE, 0xDF):
        count, after = _length(data, pos + 1, 2 if byte == 0xDE else 4)
        return 2 * count, after
    return None


def _skip(data: bytes, pos: int) -> int:
    """The position after the one msgpack object at ``pos``: its framing is checked
    (every length within ``data``, no reserved type byte 0xc1), nothing in it judged.
    Iterative, so nesting depth costs nothing but the bytes that express it."""
    pending = 1
    end = len(data)
    while pending:
        if pos >= end:
            raise _malformed()
        pending -= 1
        byte = data[pos]
        if byte <= 0x7F or byte >= 0xE0 or byte in _FIXED:
            pos += 1 + _FIXED.get(byte, 0)
        elif 0xA0 <= byte <= 0xBF:
            pos += 1 + byte - 0xA0
        elif byte in _SIZED:
            size, extra = _SIZED[byte]
            n, pos = _length(data, pos + 1, size)
            pos += extra + n
        else:
            container = _container(data, pos)
            if container is None:  # 0xc1, never used
                raise _malformed()
            items, pos = container
            # every item takes a byte at least: a count beyond what is left is a lie,
            # refused before it is believed
            if items > end - pos:
                raise _malformed()
            pending += items
        if pos > end:
            raise _malformed()
    return pos


def _str_key(data: bytes, pos: int) -> tuple[bytes, int]:
    """A map key: a msgpack str (any of its three forms), its raw bytes (not decoded:
    a key that is not UTF-8 is just a key nobody knows)."""
    if pos >= len(data):
        raise _malformed()
    byte = data[pos]
    if 0xA0 <= byte <= 0xBF:
        n, pos = byte - 0xA0, pos + 1
    elif byte in (0xD9, 0xDA, 0xDB):
        n, pos = _length(data, pos + 1, _SIZED[byte][0])
    else:
        raise _malformed()  # not a string key (an integer, bytes, nil...)
    if pos + n > len(data):
        raise _malformed()
    return data[pos : pos + n], pos + n


def split_map(payload: bytes) -> list[tuple[bytes, bytes]]:
    """The ``(key, value)`` pairs of the one msgpack map ``payload`` is, in wire order,
    keys as raw bytes and each value as its own msgpack bytes. Raises
    :class:`HandshakeError` ("malformed transport parameters") for anything else: not a
    map, a key that is not a msgpack str, a value that is not one well-formed object,
    or bytes after the map."""
    data = bytes(payload)
    if not data:
        raise _malformed()
    header = _container(data, 0)
    if header is None or data[0] in range(0x90, 0xA0) or data[0] in (0xDC, 0xDD):
        raise _malformed()  # (an array is a container too, but not a map)
    items, pos = header
    if items > len(data) - pos:
        raise _malformed()
    pairs = []
    for _ in range(items // 2):
        key, pos = _str_key(data, pos)
        end = _skip(data, pos)
        pairs.append((key, data[pos:end]))
        pos = end
    if pos != len(data):
        raise _malformed()  # something after the map
    return pairs


def read_uint(value: bytes) -> int | None:
    """A msgpack integer (positive or negative fixint, uint or int of 8 to 64 bits: any
    width, shortest or not) as a Python int; None for any other type (a boolean, a
    float, nil, a string...)."""
    byte = value[0]
    if byte <= 0x7F:
        return byte
    if byte >= 0xE0:
        return byte - 0x100
    if 0xCC <= byte <= 0xCF:
        return int.from_bytes(value[1:], "big")
    if 0xD0 <= byte <= 0xD3:
        return int.from_bytes(value[1:], "big", signed=True)
    return None


def read_bin(value: bytes) -> bytes | None:
    """A msgpack bin (8, 16 or 32) as its bytes; None for any other type (a str
    included)."""
    byte = value[0]
    if byte not in (0xC4, 0xC5, 0xC6):
        return None
    n, pos = _length(value, 1, _SIZED[byte][0])
    return value[pos : pos + n]
