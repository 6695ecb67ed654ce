"""The requests a paid connection meters (docs/escrow.md §6.1, ``Connection.usage``):
every stream the client opens, its first one -- stream 0, which the connection opens
with it -- only once data goes on it, either way. A page holds stream 0 open for the
connection's life, ends it empty, and makes each call on a stream of its own: three
calls are three requests, not four. Both sides count alike, over a sans-I/O pair, IK
and XX; the count holds once stream 0 is forgotten, and while it carries nothing a
paid client's deposit keeps room for its request (``requests_pending``)."""

from __future__ import annotations

import pytest

from tests.support.pairs import Side, connect, run


def _requests(c: Side, s: Side) -> tuple[int, int]:
    # (usage reads both parts itself: it must say what used_bytes and requests_made say)
    for conn in (c.conn, s.conn):
        assert conn.usage == (conn.used_bytes(), conn.requests_made())
    return c.conn.usage[1], s.conn.usage[1]


def _call(link: object, c: Side, s: Side, payload: bytes = b"call") -> int:
    """A call on a stream of its own, answered and ended both ways."""
    stream_id = c.conn.open_stream()
    c.conn.send_stream_data(stream_id, payload, end_stream=True)
    run(link, c, s, until=lambda: stream_id in s.eof)  # type: ignore[arg-type]
    s.conn.send_stream_data(stream_id, b"answer", end_stream=True)
    run(link, c, s, until=lambda: stream_id in c.eof)  # type: ignore[arg-type]
    return stream_id


@pytest.mark.parametrize("ik", [True, False], ids=["IK", "XX"])
def test_three_calls_beside_an_empty_first_stream_are_three_requests(ik: bool) -> None:
    c, s, link = connect(ik=ik)
    first = c.conn.open_stream()  # (held open, as a page holds it)
    assert first == 0
    assert _requests(c, s) == (0, 0)
    assert c.conn.requests_pending == 1  # (its first bytes would make it one)
    for n in range(1, 4):
        assert _call(link, c, s) != 0
        assert _requests(c, s) == (n, n)
    c.conn.send_stream_data(first, b"", end_stream=True)  # (ended empty)
    s.conn.send_stream_data(first, b"", end_stream=True)
    run(link, c, s, until=lambda: first in c.eof and first in s.eof)
    assert _requests(c, s) == (3, 3)
    assert 0 not in c.conn.streams.by_id  # (forgotten: asked no more)
    assert c.conn.requests_pending == 0


@pytest.mark.parametrize("who", ["client", "server"])
def test_the_first_stream_counts_once_data_goes_on_it_either_way(who: str) -> None:
    c, s, link = connect()
    first = c.conn.open_stream()
    _call(link, c, s)
    assert _requests(c, s) == (1, 1)
    if who == "client":
        c.conn.send_stream_data(first, b"ping")
    else:
        s.conn.send_stream_data(first, b"hello")  # (a server that speaks first)
    run(link, c, s, until=lambda: first in (s.data if who == "client" else c.data))
    assert _requests(c, s) == (2, 2)
    assert c.conn.requests_pending == 0
    # ended and forgotten, it still counts
    c.conn.send_stream_data(first, b"", end_stream=True)
    s.conn.send_stream_data(first, b"", end_stream=True)
    run(link, c, s, until=lambda: first in c.eof and first in s.eof)
    assert 0 not in c.conn.streams.by_id and 0 not in s.conn.streams.by_id
    assert _requests(c, s) == (2, 2)


def test_a_first_stream_reset_after_data_counts_and_one_reset_empty_does_not() -> None:
    c, s, link = connect()
    first = c.conn.open_stream()
    c.conn.reset_stream(first)
    run(link, c, s)
    assert _requests(c, s) == (0, 0)
    c, s, link = connect()
    first = c.conn.open_stream()
    c.conn.send_stream_data(first, b"x" * 100)
    c.conn.reset_stream(first)
    run(link, c, s)
    assert _requests(c, s) == (1, 1)
