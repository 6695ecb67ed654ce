"""Reading a blocking stream in tests: a given number of bytes, or up to a mark, as they
come."""

from __future__ import annotations

from typing import Protocol


class Readable(Protocol):
    def recv(self, bufsize: int, /) -> bytes: ...


def recv_exactly(sock: Readable, n: int) -> bytes:
    """``n`` bytes from ``sock`` (a DTPSocket, a PaidSocket, a socket), read as they
    come; AssertionError when the stream ends before them, with what came."""
    got = b""
    while len(got) < n:
        more = sock.recv(n - len(got))
        assert more, f"the stream ended after {len(got)} of {n} bytes: {got[-64:]!r}"
        got += more
    return got


def recv_through(sock: Readable, mark: bytes) -> bytes:
    """What ``sock`` sends up to and including ``mark``, read as it comes (64 KiB a
    read); AssertionError when the stream ends before it."""
    got = b""
    while not got.endswith(mark):
        more = sock.recv(1 << 16)
        assert more, f"the stream ended after {len(got)} bytes before {mark!r}: {got[-64:]!r}"
        got += more
    return got
