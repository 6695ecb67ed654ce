"""A UDP relay (blocking and asyncio) against a client that abuses the control stream,
found by a second reader: a request for the final report sent again and again was
answered each time (5 bytes in, 21 out, never drained: the relay's buffer grew without
bound, or its control thread blocked in a send), and forged receipts were only counted,
each a verification and a log line (a client sending nothing else kept the relay's event
loop busy). A second final-report request now ends the connection, and so do refused
receipts past a few; one refused receipt is still no fault (tests/test_s19_udp_review)."""

from __future__ import annotations

import threading
import time

import pytest

import dtp.aio
import dtp.socket
from dtp.chain.objects import Sla
from dtp.escrow import Meter
from dtp.udp import _REFUSED_RECEIPTS_MAX, _control, relay_udp
from tests.test_s13_carrier_udp import CONNECTION_ID, SERVER
from tests.test_s19_udp_review import (
    BOUND,
    HOURS,
    _billing,
    _closed_reason,
    _served,
    async_relay_ends,
    dns,
)
from tests.test_udp import DnsLikeBackend

__all__ = ["dns"]  # (the fixture, imported for the tests below)


def _forged() -> bytes:
    """A receipt signed by someone other than the connection's client."""
    stranger = Meter(SERVER, CONNECTION_ID, Sla(0, 1, 0), 10**6)
    now = int(time.time() * 1000)
    receipt = stranger.record(now, requests=1) or stranger.flush(now)
    assert receipt is not None
    return _control(b"R", receipt.encode())


ABUSE = {
    "final report asked twice": (
        lambda: _control(b"F") + _control(b"F"),
        "a second request for the final report",
    ),
    "refused receipts past the bound": (
        lambda: _forged() * (_REFUSED_RECEIPTS_MAX + 1),
        "receipts refused",
    ),
}


@pytest.mark.parametrize("name", sorted(ABUSE))
def test_a_relay_ends_a_connection_that_abuses_the_control_stream(
    dns: DnsLikeBackend, name: str
) -> None:
    frames, reason = ABUSE[name]
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER)

    def handler(sock: dtp.socket.DTPSocket) -> None:
        relay_udp(sock, dns.address, billing=_billing(), idle_timeout=HOURS)

    serving = threading.Thread(target=server.serve_forever, args=(handler,), daemon=True)
    serving.start()
    try:
        with dtp.socket.create_connection(
            server.address, server_key=SERVER.noise_public, timeout=5
        ) as sock:
            assert _served(sock, b"\x00\x01abuse")
            sock.sendall(_forged())  # (one refused receipt: served on)
            assert _served(sock, b"\x00\x02still")
            sock.sendall(frames())
            assert reason in _closed_reason(sock)
    finally:
        server.close()
        serving.join(BOUND)


@pytest.mark.parametrize("name", sorted(ABUSE))
def test_an_async_relay_ends_a_connection_that_abuses_the_control_stream(
    dns: DnsLikeBackend, name: str
) -> None:
    frames, reason = ABUSE[name]
    async_relay_ends(dns, frames(), reason)
