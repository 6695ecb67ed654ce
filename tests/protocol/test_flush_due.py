"""Connection.flush_due() and acknowledge_read()'s answer, which let a driver skip a
flush with nothing to do (dtp/transport/asyncio/protocol.py): each must say True
whenever data_to_send() would return bytes or a deadline may have moved earlier.
Driven in memory (tests/support/pairs.py)."""

from __future__ import annotations

from dtp.protocol.connection import Connection
from tests.support.pairs import connect, make_pair, run

WINDOW = 64 * 1024


def _settled(conn: Connection, now: float) -> None:
    """Collect what ``conn`` has to send (dropped: the peer need not see it here)."""
    conn.data_to_send(now)


def test_settled_connection_has_nothing_due_until_something_is_queued() -> None:
    c, s, link = connect(stream_window=WINDOW, connection_window=2 * WINDOW)
    s.auto_read = False
    client, server = c.conn, s.conn
    assert run(link, c, s)
    assert not server.flush_due() and not client.flush_due()

    sid = client.open_stream()
    client.send_stream_data(sid, b"q" * 100)
    assert client.flush_due()  # the data to go
    assert run(link, c, s, lambda: bytes(s.data.get(sid, b"")) == b"q" * 100)
    # receiving queued nothing on a reliable carrier (no ACKs)
    assert not server.flush_due()

    # a small read returns no credit yet: nothing queued, nothing due
    assert server.acknowledge_read(sid, 100) is False
    assert not server.flush_due()
    assert server.data_to_send(link.now) == b""

    # a read past a quarter of the window queues MAX_DATA / MAX_STREAM_DATA
    client.send_stream_data(sid, b"r" * (WINDOW // 2))
    assert run(link, c, s, lambda: len(s.data[sid]) == 100 + WINDOW // 2)
    assert not server.flush_due()
    assert server.acknowledge_read(sid, WINDOW // 2) is True
    assert server.flush_due()
    assert server.data_to_send(link.now) != b""
    assert not server.flush_due()

    # anything written, or a close, is due at once
    server.send_stream_data(sid, b"a")
    assert server.flush_due()
    _settled(server, link.now)
    assert not server.flush_due()
    server.close()
    assert server.flush_due()


def test_flush_is_due_before_establishment_and_on_a_lossy_carrier() -> None:
    client, server = make_pair()
    assert client.flush_due() and server.flush_due()
    c, s, link = connect(reliable_carrier=False)
    assert run(link, c, s)
    # ACKs and loss deadlines: a lossy carrier's connection is never settled
    assert c.conn.flush_due() and s.conn.flush_due()


def test_acknowledge_read_on_a_closed_connection_queues_nothing() -> None:
    c, s, link = connect()
    sid = c.conn.open_stream()
    c.conn.send_stream_data(sid, b"x")
    assert run(link, c, s)
    s.conn.close()
    _settled(s.conn, link.now)
    assert s.conn.closed
    # (a whole window's read would have queued credit on an open connection)
    assert s.conn.acknowledge_read(sid, 8 << 20) is False
    assert s.conn.acknowledge_read(sid, 0) is False
