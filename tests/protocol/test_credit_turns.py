"""The connection's credit goes round its streams: a stream whose writer keeps its queue
full must not take every credit update while another stream's bytes wait. Packed in
the same order each time, the first stream took all of each update, and the bytes
queued on the streams after it went out only once it stopped writing. Driven in memory,
each step one credit update, with the busy stream's queue topped up before each."""

from __future__ import annotations

import pytest

from dtp.protocol.connection import Connection
from tests.support.pairs import connect

WINDOW = 64 * 1024  # the connection's window: smaller than a stream's, so it binds
QUEUED = 4 * WINDOW  # the busy writer's queue, kept this full
STEPS = 40


def _exchange(c_conn: Connection, s_conn: Connection, now: float) -> None:
    """One round: what the client sends reaches the server, and its answer (the
    credit for what the server's application read) reaches the client."""
    data = c_conn.data_to_send(now)
    if data:
        s_conn.receive_data(data, now)
    answer = s_conn.data_to_send(now)
    if answer:
        c_conn.receive_data(answer, now)


@pytest.mark.parametrize("waiting", [1, 2])
def test_bytes_queued_behind_a_busy_stream_go_out_with_the_next_credit(waiting: int) -> None:
    c, s, _ = connect(connection_window=WINDOW)
    client = c.conn
    busy = client.open_stream()
    others = [client.open_stream() for _ in range(waiting)]
    client.send_stream_data(busy, bytes(QUEUED))
    for i, sid in enumerate(others):
        client.send_stream_data(sid, b"hello %d" % i)
    # the connection's credit is taken: the small writes wait in their queues
    assert all(client.send_buffered(sid) for sid in others)
    now = 1.0
    updates = 0
    for _ in range(STEPS):
        if all(bytes(s.data.get(sid, b"")) == b"hello %d" % i for i, sid in enumerate(others)):
            break
        # the busy writer tops its queue up before every update: it never stops
        client.send_stream_data(busy, bytes(QUEUED - client.send_buffered(busy)))
        _exchange(client, s.conn, now)
        c.drain()
        s.drain()
        updates += 1
        now += 0.001
    got = {sid: bytes(s.data.get(sid, b"")) for sid in others}
    assert got == {sid: b"hello %d" % i for i, sid in enumerate(others)}
    # they went with the first credit update: the busy stream had only the window it
    # took before they were written, and less than one more, and still has bytes queued
    assert updates < STEPS
    assert len(s.data[busy]) < 2 * WINDOW
    assert client.send_buffered(busy) > 0


def test_two_busy_streams_take_turns() -> None:
    """Two writers that both keep their queues full each get bytes out with every
    other credit update at least, not one of them all."""
    c, s, _ = connect(connection_window=WINDOW)
    client = c.conn
    a, b = client.open_stream(), client.open_stream()
    now = 1.0
    for _ in range(STEPS):
        for sid in (a, b):
            client.send_stream_data(sid, bytes(QUEUED - client.send_buffered(sid)))
        _exchange(client, s.conn, now)
        c.drain()
        s.drain()
        now += 0.001
    got_a, got_b = len(s.data.get(a, b"")), len(s.data.get(b, b""))
    assert got_a and got_b
    assert min(got_a, got_b) * 3 >= max(got_a, got_b)
