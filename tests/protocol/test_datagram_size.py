"""``max_datagram_size`` says what ``send_datagram`` takes: over a lossy carrier (the
ledger's records are smaller) it is less than the config's, as a datagram must fit one
record. It reported the config's value, so a forwarder that filtered by it sent a
datagram the connection then refused (which ended the whole flow)."""

from __future__ import annotations

import pytest

import dtp.socket
from dtp.errors import LocalProtocolError
from dtp.hostid.ledger_carrier._bridge import LEDGER_RECORD_PLAINTEXT
from dtp.protocol._events import DatagramReceived
from dtp.protocol.connection import ConnectionConfig
from tests.support.ledger_carrier_world import CLIENT, DEPOSIT, Host, server_in_thread
from tests.support.ledger_carrier_world import host as host
from tests.support.pairs import connect, run


def test_a_lossy_connection_reports_the_datagram_size_it_takes() -> None:
    c, s, link = connect(
        reliable_carrier=False,
        max_record_plaintext=LEDGER_RECORD_PLAINTEXT,
        max_datagram_size=16381,
    )
    limit = c.conn.max_datagram_size
    assert limit == LEDGER_RECORD_PLAINTEXT - 3 < c.conn.config.max_datagram_size
    c.conn.send_datagram(b"d" * limit)  # exactly the limit goes
    assert run(link, c, s, lambda: bool(s.of(DatagramReceived)))
    assert [len(e.data) for e in s.of(DatagramReceived)] == [limit]  # type: ignore[attr-defined]
    with pytest.raises(LocalProtocolError, match="exceeds"):
        c.conn.send_datagram(b"d" * (limit + 1))


def test_a_reliable_connection_reports_the_configured_size() -> None:
    c, _s, _link = connect(max_datagram_size=1200)
    assert c.conn.max_datagram_size == 1200


def test_a_socket_over_the_ledger_carrier_reports_what_it_takes(host: Host) -> None:
    with (
        server_in_thread(host),
        dtp.socket.create_connection(
            host.address,
            ledger=host.ledger,
            identity=CLIENT,
            deposit=DEPOSIT,
            timeout=30,
            config=ConnectionConfig(identity=CLIENT, is_client=True, max_datagram_size=16381),
        ) as sock,
    ):
        limit = sock.max_datagram_size
        assert limit == LEDGER_RECORD_PLAINTEXT - 3
        sock.send_datagram(b"d" * limit)  # what it says it takes, it takes
        with pytest.raises(LocalProtocolError):
            sock.send_datagram(b"d" * (limit + 1))
