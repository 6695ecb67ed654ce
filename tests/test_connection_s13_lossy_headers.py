"""On a lossy carrier, a datagram whose record header does not parse (unknown kind,
reserved flags, a length out of range) is dropped like any damaged datagram: anyone
can send one, and nothing in it is authenticated. It used to close an established
connection. On a reliable carrier the same bytes still end the connection."""

from __future__ import annotations

import struct

import pytest

from dtp.connection import ConnState
from tests.test_connection import connect, run

JUNK = {
    "unknown kind": bytes([9, 0]) + struct.pack("<H", 10) + bytes(8) + b"x" * 10,
    "flags": bytes([16, 0xFF]) + struct.pack("<H", 20) + bytes(8) + b"x" * 20,
    "zero length": bytes([16, 0]) + struct.pack("<H", 0) + bytes(8),
    "short data": bytes([16, 0]) + struct.pack("<H", 5) + bytes(8) + b"x" * 5,
    "long handshake": bytes([1, 0]) + struct.pack("<H", 5000) + bytes(8) + b"\x01" * 5000,
}


@pytest.mark.parametrize("junk", list(JUNK), ids=list(JUNK))
def test_a_datagram_with_a_bad_header_is_dropped_on_a_lossy_carrier(junk: str) -> None:
    c, s, link = connect(reliable_carrier=False)
    assert c.conn.established and s.conn.established
    s.conn.receive_datagram(JUNK[junk], link.now)
    c.conn.receive_datagram(JUNK[junk], link.now)
    assert s.conn.state is ConnState.ESTABLISHED
    assert c.conn.state is ConnState.ESTABLISHED
    # and the connection goes on carrying data both ways
    sid = c.conn.open_stream()
    c.conn.send_stream_data(sid, b"after the junk", end_stream=True)
    assert run(link, c, s, lambda: sid in s.eof)
    assert bytes(s.data[sid]) == b"after the junk"
    s.conn.send_stream_data(sid, b"and back", end_stream=True)
    assert run(link, c, s, lambda: sid in c.eof)
    assert bytes(c.data[sid]) == b"and back"


def test_a_bad_header_still_ends_a_reliable_connection() -> None:
    _c, s, link = connect()
    s.conn.receive_data(JUNK["unknown kind"], link.now)
    assert s.conn.closed
