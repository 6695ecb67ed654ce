"""What the UDP tests share: the identities and connection ID of a metered flow, its
meter, a DNS-like UDP backend on 127.0.0.1 (the ``backend`` fixture in conftest.py), a
bare forwarder's signing of usage reports, and a relay of either driver with a client
connection to it (``relayed``)."""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import dtp.socket
from dtp.errors import DTPError
from dtp.hostid.udp import UdpBilling, UdpStats
from dtp.hostid.udp._engine import USAGE, ControlDecoder, control_frame
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.payments._ratelimit import ClientBuckets
from dtp.payments.receipts import Meter
from tests.support.polling import wait_for
from tests.support.scopes import scope_of
from tests.support.udp_backends import UdpBackend

if TYPE_CHECKING:  # (conftest.py, which defines the drivers, imports this module)
    from tests.udp.conftest import UdpDriver

SERVER = HostIdentity.from_private_bytes(b"\x61" * 32, b"\x61" * 32)
CLIENT = HostIdentity.from_private_bytes(b"\x62" * 32, b"\x62" * 32)
CONNECTION_ID = "0x" + "ab" * 32
DEPOSIT_DATAGRAMS = 5000  # more than a stalled relay's connection takes before backing up


def meter() -> Meter:
    """CLIENT's meter on CONNECTION_ID, billed per datagram, DEPOSIT_DATAGRAMS deposited."""
    return Meter(CLIENT, scope_of(CONNECTION_ID), Sla(0, 1, 0), DEPOSIT_DATAGRAMS)


class DnsLikeBackend(UdpBackend):
    """Answers each query (2-byte ID + name) with the ID, the name and a 4-byte
    'address' derived from it (while ``answer`` is true); counts what it saw."""

    def __init__(self) -> None:
        self.answer = True
        super().__init__()

    def replies(self, data: bytes) -> list[bytes]:
        if not self.answer:
            return []
        return [data + struct.pack(">I", sum(data) & 0xFFFFFFFF)]


def sign_reports(sock: dtp.socket.DTPSocket, meter: Meter, stop: threading.Event) -> None:
    """A forwarder's half of the control stream, bare: signs every usage report."""
    decoder = ControlDecoder()
    billed = (0, 0)
    while not stop.is_set():
        try:
            data = sock.recv(4096)
        except DTPError:
            if stop.is_set() or sock.connection_ended:
                return
            continue
        if not data:
            return
        decoder.receive(data)
        while (body := decoder.next_frame()) is not None:
            datagrams, nbytes = USAGE.unpack(body[1:])
            now = int(time.time() * 1000)
            receipt = meter.record(
                now, nbytes=nbytes - billed[1], requests=datagrams - billed[0]
            ) or meter.flush(now)
            billed = (datagrams, nbytes)
            if receipt is None:
                continue
            try:
                sock.sendall(control_frame(b"R", receipt.encode()))
            except DTPError:
                # (the test closes the socket once it set stop: a report read just
                # before then is answered on a closed socket)
                if stop.is_set() or sock.connection_ended:
                    return
                raise


@contextmanager
def relayed(
    driver: UdpDriver,
    backend: tuple[str, int],
    stats: UdpStats,
    *,
    billing: UdpBilling | None = None,
    signed: tuple[Sla, int] | None = None,
    limits: ClientBuckets | None = None,
    idle_timeout: float = 5,
) -> Iterator[dtp.socket.DTPSocket]:
    """A relay of ``driver`` to ``backend`` with ``billing`` and per-client ``limits``
    (none by default), and a client connection to it, whose usage reports a bare
    forwarder signs when ``signed`` gives the client's (SLA, deposit); the relay has
    ended when the block has."""

    def relay_kw() -> dict[str, Any]:
        return {"billing": billing, "stats": stats, "limits": limits, "idle_timeout": idle_timeout}

    ended: list[float] = []
    stop = threading.Event()
    signer: threading.Thread | None = None
    try:
        with driver.serve_relay(SERVER, backend, relay_kw, ended) as address:
            with dtp.socket.create_connection(
                address, server_key=SERVER.noise_public, timeout=5
            ) as sock:
                if signed is not None:
                    sla, deposit = signed
                    signer = threading.Thread(
                        target=sign_reports,
                        args=(sock, Meter(CLIENT, scope_of(CONNECTION_ID), sla, deposit), stop),
                        daemon=True,
                    )
                    signer.start()
                yield sock
                stop.set()
            assert wait_for(lambda: bool(ended), 10), "the relay did not end"
    finally:
        stop.set()
        if signer is not None:
            signer.join(5)
