"""Connection's state in slots: every attribute it sets has one (idle_memory_10k)."""

from __future__ import annotations

import pytest

from dtp.errors import LocalProtocolError
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


@pytest.mark.parametrize("ik", [True, False])
def test_an_established_connection_keeps_no_handshake_state(ik: bool) -> None:
    # What a live connection holds, the garbage collector walks at every full collection
    # (connections_10k): once the handshake is over, neither side keeps the Noise state
    # (nor the transport keys it held), its sent messages, or empty queues of data that
    # came early or before accept().
    kwargs: dict[str, object] = {} if ik else {"ik": False}
    c, s, link = connect(**kwargs)
    sid = c.conn.open_stream()
    c.conn.send_stream_data(sid, b"ping")
    run(link, c, s)
    assert bytes(s.data[sid]) == b"ping"
    assert c.conn.pattern == s.conn.pattern == ("IK" if ik else "XX")
    for conn in (c.conn, s.conn):
        assert conn.established and conn.handshake_hash is not None
        assert conn._hs is None
        with pytest.raises(LocalProtocolError):
            conn._handshake()
        assert conn._hs_messages == () and conn._early_records == ()
        assert conn._held_events is None
        assert conn.records.pending_stream_credit is None
