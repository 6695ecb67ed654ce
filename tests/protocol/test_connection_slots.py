"""Connection's state in slots: every attribute it sets has one (idle_memory_10k)."""

from __future__ import annotations

from dtp.protocol._state import ConnState
from dtp.protocol.connection import Connection
from dtp.protocol.connection._base import _ConnectionState
from tests.support.pairs import connect, run


def test_a_connections_attributes_all_have_slots() -> None:
    # Connection's state lives in slots (an instance dict of 45 attributes weighed
    # 1.6 KiB on every connection): one that __init__ or a mixin sets without a slot
    # would bring the dict back. After a handshake, stream data both ways and a
    # close, nothing is in either side's instance dict.
    c, s, link = connect()
    sid = c.conn.open_stream()
    c.conn.send_stream_data(sid, b"ping")
    run(link, c, s)
    s.conn.send_stream_data(sid, b"pong", end_stream=True)
    run(link, c, s)
    assert bytes(s.data[sid]) == b"ping" and bytes(c.data[sid]) == b"pong"
    c.conn.close()
    run(link, c, s)
    assert c.conn._state is ConnState.CLOSED and s.conn.closed
    for conn in (c.conn, s.conn):
        assert vars(conn) == {}, sorted(vars(conn))
    # every attribute the mixins declare is one of them
    declared = set(_ConnectionState.__annotations__)
    assert declared <= set(Connection.__slots__), declared - set(Connection.__slots__)
