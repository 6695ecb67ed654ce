"""The reorder buffer's cost stays linear when a peer trickles small chunks behind a
missing first byte, onto the end of a long run or under its start: the twin used to
copy the whole run for every chunk that joined it (quadratic: a 4 MiB window of 64-byte
chunks meant over 100 GB of copying on the pure-Python backend)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

from dtp.errors import LocalProtocolError, RemoteProtocolError
from tests.conftest import BACKENDS

each_backend = pytest.mark.parametrize("b", BACKENDS, ids=lambda b: b.name)
WINDOW = 1 << 22
CHUNK = 64
COUNT = WINDOW // CHUNK - 1
BUDGET = 4.0  # seconds; linear work takes well under one here


def trickle(b: SimpleNamespace, order: range) -> None:
    r = b.Reassembler(0, WINDOW, 16)
    chunk = bytes(range(CHUNK))
    deadline = time.monotonic() + BUDGET
    for n, i in enumerate(order):
        r.push(i * CHUNK, chunk)
        if n % 512 == 0:
            assert time.monotonic() < deadline, f"{n} pushes took the whole budget"
    assert (r.readable, r.buffered) == (0, COUNT * CHUNK)
    r.push(0, chunk)  # the missing first chunk: everything is readable
    assert r.readable == WINDOW
    assert r.pop() == chunk * (COUNT + 1)
    assert (r.next_seq, r.buffered) == (WINDOW, 0)


@each_backend
def test_chunks_appended_to_a_long_run(b: SimpleNamespace) -> None:
    trickle(b, range(1, COUNT + 1))


@each_backend
def test_chunks_put_under_a_long_run(b: SimpleNamespace) -> None:
    trickle(b, range(COUNT, 0, -1))


@each_backend
@pytest.mark.parametrize(
    "chunks",
    [
        [(0, bytearray(b"abcdefgh"))],  # past the window
        [(0, bytearray(b"ab")), (2**64 - 1, bytearray(b"ab"))],  # past 2**64 - 1
        [(0, bytearray(b"a")), (2, bytearray(b"a")), (6, bytearray(b"a"))],  # fragmented
        [(1, bytearray(b"ab"))],  # accepted
    ],
)
def test_the_callers_buffers_can_be_resized_after_a_push(
    b: SimpleNamespace, chunks: list[tuple[int, bytearray]]
) -> None:
    r = b.Reassembler(0, 7, 2)
    try:
        r.push_many(chunks)
    except (LocalProtocolError, RemoteProtocolError):
        for _, data in chunks:
            data += b"x"  # in the except clause: no export of it may be left
    for _, data in chunks:
        data += b"y"
