"""Reading a blocking stream in tests: a given number of bytes, as they come."""

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
