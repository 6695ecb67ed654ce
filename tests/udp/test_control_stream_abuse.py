"""UDP through DTP (dtp.hostid.udp, dtp.hostid.udp._asyncio) against a peer that breaks the control
protocol on stream 0: a frame too long, of an unknown kind, or meant for the other
direction ends the connection at once with the reason in its CLOSE. Before, the reader
of the control stream returned quietly and everything else went on: a relay kept
forwarding for a client whose receipts nobody read any more (served on credit, then
dropped as unpaid for good), a forwarder kept a flow whose usage reports nobody signed.
Real UDP sockets and DTP connections on 127.0.0.1.

A UDP relay (blocking and asyncio) against a client that abuses the control stream:
a request for the final report sent again and again was
answered each time (5 bytes in, 21 out, never drained: the relay's buffer grew without
bound, or its control thread blocked in a send), and forged receipts were only counted,
each a verification and a log line (a client sending nothing else kept the relay's event
loop busy). A second final-report request now ends the connection, and so do refused
receipts past a few; one refused receipt is still no fault (below)."""

from __future__ import annotations

import contextlib
import functools
import socket
import threading
import time
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import ConnectionClosed, DTPError
from dtp.hostid.udp import UdpBilling
from dtp.hostid.udp._engine import _REFUSED_RECEIPTS_MAX, USAGE, control_frame
from dtp.ledger._objects import Sla
from dtp.payments.receipts import Meter
from tests.support.polling import wait_for
from tests.support.scopes import scope_of, v1_receipt_bytes
from tests.udp.conftest import UdpDriver
from tests.udp.world import CLIENT, CONNECTION_ID, SERVER, DnsLikeBackend, meter

#: Far beyond any bound below: a relay or flow that does not end on its own in the
#: test's time is one that did not notice the bad frame.
HOURS = 3600.0
BOUND = 30.0

#: Control frames a client never sends to a relay, and the reason the relay gives.
BAD_FOR_RELAY = {
    "unknown kind": (control_frame(b"X", b"junk"), "unexpected UDP control frame b'X'"),
    "usage report the wrong way": (
        control_frame(b"U", USAGE.pack(1, 1)),
        "unexpected UDP control frame b'U'",
    ),
    # declared 2 GiB, then a few bytes and nothing more: never waited for nor buffered
    "length above the cap": (b"\x80\x00\x00\x00R" + b"\x00" * 64, "UDP control frame of"),
}


def _billing() -> UdpBilling:
    return UdpBilling(scope_of(CONNECTION_ID), Sla(0, 1, 0), CLIENT.ed25519_public, 10**6)


def _closed_reason(sock: dtp.socket.DTPSocket) -> str:
    """Read datagrams until the connection ends (within BOUND); the reason it gives."""
    deadline = time.monotonic() + BOUND
    while time.monotonic() < deadline:
        try:
            sock.recv_datagram(0.2)
        except ConnectionClosed as exc:
            return exc.reason
        except TimeoutError:
            continue
    raise AssertionError("the connection is still open")


def _served(sock: dtp.socket.DTPSocket, payload: bytes) -> bool:
    """Whether a datagram on ``sock`` comes back answered by the backend."""
    for _ in range(20):
        sock.send_datagram(payload)
        with contextlib.suppress(TimeoutError):
            if sock.recv_datagram(1.0).startswith(payload):
                return True
    return False


@pytest.mark.parametrize("name", sorted(BAD_FOR_RELAY))
def test_a_relay_closes_a_connection_that_breaks_the_control_protocol(
    backend: DnsLikeBackend, name: str, driver: UdpDriver
) -> None:
    """A receipt that does not verify is refused and counted, and the client is served
    on; a frame no client sends ends that connection with the reason (the relay
    returns), while another connection to the same server is served throughout."""
    frame, reason = BAD_FOR_RELAY[name]
    billings: list[UdpBilling] = []
    ended: list[float] = []

    def relay_kw() -> dict[str, Any]:
        billing = _billing()
        billings.append(billing)
        return {"billing": billing, "idle_timeout": HOURS}

    with driver.serve_relay(SERVER, backend.address, relay_kw, ended) as address:
        connect = functools.partial(
            dtp.socket.create_connection, address, server_key=SERVER.noise_public, timeout=5
        )
        with connect() as bystander, connect() as rogue:
            assert _served(bystander, b"\x00\x01calm")
            assert _served(rogue, b"\x00\x02rogue")
            assert wait_for(lambda: len(billings) == 2, BOUND)
            # a receipt signed by someone else: refused, not fatal
            stranger = Meter(SERVER, scope_of(CONNECTION_ID), Sla(0, 1, 0), 10**6)
            now = int(time.time() * 1000)
            forged = stranger.record(now, requests=1) or stranger.flush(now)
            assert forged is not None
            rogue.sendall(control_frame(b"R", forged.encode()))
            assert wait_for(lambda: sum(b.refused_receipts for b in billings) == 1, BOUND)
            assert _served(rogue, b"\x00\x03still")

            rogue.sendall(frame)
            assert reason in _closed_reason(rogue)
            assert wait_for(lambda: len(ended) == 1, BOUND)  # its relay returned
            assert _served(bystander, b"\x00\x04after")
            assert len(ended) == 1


def _rogue_relay(backend: DnsLikeBackend, reasons: list[str], sock: dtp.socket.DTPSocket) -> None:
    """A relay that answers one datagram, then sends the forwarder a receipt -- a frame
    only forwarders send -- and waits for the connection's end, noting its reason."""
    upstream = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    upstream.connect(backend.address)
    upstream.settimeout(5)
    try:
        upstream.send(sock.recv_datagram(BOUND))
        sock.send_datagram(upstream.recv(65535))
        sock.sendall(control_frame(b"R", b"\x00" * 32))
        reasons.append(_closed_reason(sock))
    except DTPError as exc:
        reasons.append(f"failed: {exc!r}")
    finally:
        upstream.close()
        with contextlib.suppress(DTPError):
            sock.close()


def _local_client() -> socket.socket:
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.settimeout(BOUND)
    return client


def test_a_forwarder_ends_a_flow_whose_relay_breaks_the_control_protocol(
    backend: DnsLikeBackend, driver: UdpDriver
) -> None:
    """A metered flow's relay sends a frame relays never send: the flow's connection is
    closed with the reason and the flow ends (not kept, idle timeout or not, with its
    usage reports unread and unsigned)."""
    reasons: list[str] = []
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER)
    serving = threading.Thread(
        target=server.serve_forever,
        args=(functools.partial(_rogue_relay, backend, reasons),),
        daemon=True,
    )
    serving.start()
    connect = functools.partial(
        dtp.socket.create_connection, server.address, server_key=SERVER.noise_public, timeout=5
    )
    client = _local_client()
    try:
        with driver.forwarder(
            connect, server.address, meter_for=lambda _: meter(), idle_timeout=HOURS
        ) as fwd:
            client.sendto(b"\x00\x06metered", fwd.address)
            assert client.recv(100).startswith(b"\x00\x06metered")
            assert wait_for(lambda: reasons, BOUND), fwd.stats.snapshot()
            assert "unexpected UDP control frame b'R'" in reasons[0]
            assert wait_for(lambda: fwd.stats.sessions_closed == 1, BOUND), fwd.stats
            assert fwd.sessions == 0
    finally:
        client.close()
        server.close()
        serving.join(BOUND)


def _forged() -> bytes:
    """A receipt signed by someone other than the connection's client."""
    stranger = Meter(SERVER, scope_of(CONNECTION_ID), Sla(0, 1, 0), 10**6)
    now = int(time.time() * 1000)
    receipt = stranger.record(now, requests=1) or stranger.flush(now)
    assert receipt is not None
    return control_frame(b"R", receipt.encode())


ABUSE = {
    "final report asked twice": (
        lambda: control_frame(b"F") + control_frame(b"F"),
        "a second request for the final report",
    ),
    "refused receipts past the bound": (
        lambda: _forged() * (_REFUSED_RECEIPTS_MAX + 1),
        "receipts refused",
    ),
    # a forwarder of the release before receipt format version 2: none of its receipts
    # could ever pay, so the first one ends the flow, saying why (docs/escrow.md §6)
    "a version-1 receipt": (
        lambda: control_frame(b"R", v1_receipt_bytes(CONNECTION_ID, 0, 1, 1, 1, CLIENT)),
        "Receipt format version 1 is not supported",
    ),
}


@pytest.mark.parametrize("name", sorted(ABUSE))
def test_a_relay_ends_a_connection_that_abuses_the_control_stream(
    backend: DnsLikeBackend, name: str, driver: UdpDriver
) -> None:
    frames, reason = ABUSE[name]
    ended: list[float] = []

    def relay_kw() -> dict[str, Any]:
        return {"billing": _billing(), "idle_timeout": HOURS}

    with (
        driver.serve_relay(SERVER, backend.address, relay_kw, ended) as address,
        dtp.socket.create_connection(address, server_key=SERVER.noise_public, timeout=5) as sock,
    ):
        assert _served(sock, b"\x00\x01abuse")
        sock.sendall(_forged())  # (one refused receipt: served on)
        assert _served(sock, b"\x00\x02still")
        sock.sendall(frames())
        assert reason in _closed_reason(sock)
        assert wait_for(lambda: len(ended) == 1, BOUND)  # its relay returned
