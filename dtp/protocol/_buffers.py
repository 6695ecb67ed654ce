"""Bytes from what the socket module calls a bytes-like object, checked as it checks."""

from __future__ import annotations

__all__ = ["bytes_like"]


def bytes_like(data: object) -> bytes:
    """``data`` (any object with the buffer protocol: bytes, bytearray, memoryview,
    array ...) as bytes; TypeError, worded as a socket words it, for anything else:
    ``bytes(5)`` would quietly be five zero bytes, and ``bytes("x")`` fails with a
    message about encodings."""
    try:
        return bytes(memoryview(data))  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"a bytes-like object is required, not {type(data).__name__!r}") from None
