"""UDP relay billing against a client that pays for requests but not bytes, or not at
all for replies: the relays bound what they serve by a byte credit and the deposit.
Real UDP sockets and DTP connections on 127.0.0.1."""

from __future__ import annotations

import asyncio
import functools
import socket
import threading
import time

import dtp.aio
import dtp.socket
from dtp.chain.objects import Sla
from dtp.errors import DTPError
from dtp.escrow import Meter
from dtp.udp import UdpBilling, UdpStats, _control, relay_udp
from dtp.udp_aio import relay_udp_async
from tests.polling import wait_for
from tests.test_s13_carrier_udp import CLIENT, CONNECTION_ID, SERVER
from tests.test_udp import DnsLikeBackend


def test_a_receipt_for_requests_only_does_not_buy_the_bytes() -> None:
    """On a service priced by the byte, a receipt for 2**40 requests and no bytes costs
    nothing; the relay counted only requests against its credit and served the client
    without bound (5000 x 1 KB for a deposit worth 100 KB)."""
    sla = Sla(100, 0, 0)
    deposit = 10_000  # 100 KiB at 100 per KiB
    dns = DnsLikeBackend()
    billing = UdpBilling(CONNECTION_ID, sla, CLIENT.ed25519_public, deposit)
    stats = UdpStats()
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER)
    handler = functools.partial(
        relay_udp, backend=dns.address, billing=billing, stats=stats, idle_timeout=5
    )
    serving = threading.Thread(target=server.serve_forever, args=(handler,), daemon=True)
    serving.start()
    try:
        with dtp.socket.create_connection(
            server.address, server_key=SERVER.noise_public, timeout=5
        ) as sock:
            meter = Meter(CLIENT, CONNECTION_ID, sla, deposit)
            now = int(time.time() * 1000)
            receipt = meter.record(now, requests=2**40) or meter.flush(now)
            assert receipt is not None and receipt.total_amount == 0
            sock.sendall(_control(b"R", receipt.encode()))
            assert wait_for(lambda: billing.latest is not None, 5)
            for i in range(500):
                sock.send_datagram(b"\x00" * 1000)
                if i % 50 == 0:
                    time.sleep(0.005)  # (the backend's socket buffer)
            assert wait_for(lambda: stats.datagrams_in + stats.dropped_unpaid >= 500, 5)
    finally:
        server.close()
        serving.join(5)
        dns.close()
    assert stats.dropped_unpaid > 0, stats.snapshot()
    assert billing.owed <= deposit


def test_async_relay_bounds_replies_no_receipt_covers() -> None:
    """One request, a backend that streams replies, no receipt ever: the reply path
    checked no credit, so every reply went (here 600 KB against a 256 KiB credit)."""
    backend = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    backend.bind(("127.0.0.1", 0))

    def stream() -> None:
        try:
            _, peer = backend.recvfrom(100)
            for i in range(600):
                backend.sendto(b"r" * 1000, peer)
                if i % 50 == 0:
                    time.sleep(0.005)
        except OSError:
            return

    streamer = threading.Thread(target=stream, daemon=True)
    streamer.start()
    billing = UdpBilling(
        CONNECTION_ID, Sla(1, 1, 0), CLIENT.ed25519_public, 10**9, credit_datagrams=16
    )
    stats = UdpStats()

    async def main() -> int:
        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            await relay_udp_async(
                reader, writer, backend.getsockname(), billing=billing, stats=stats, idle_timeout=5
            )

        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=SERVER)

        def client() -> int:
            got = 0
            with dtp.socket.create_connection(
                server.address, server_key=SERVER.noise_public, timeout=5
            ) as sock:
                sock.send_datagram(b"go")
                try:
                    while True:
                        got += sum(map(len, sock.recv_datagrams(256, 2)))
                except (TimeoutError, DTPError):
                    pass
            return got

        try:
            return await asyncio.to_thread(client)
        finally:
            server.close()
            await server.wait_closed()

    try:
        got = asyncio.run(main())
    finally:
        streamer.join(10)
        backend.close()
    # (the credit, and the share of the replies the relay writes off as lost)
    assert got <= billing.credit_bytes / (1 - billing.loss_allowance) + 1000, got
    assert stats.dropped_unpaid > 0


def test_datagrams_allowed_but_not_yet_counted_leave_room_in_the_deposit() -> None:
    """The request path asks may_forward, sends, then counts; the reply path, in
    another thread, asks replies_allowed, sends, then counts. Each judged the deposit
    without what the other had allowed and not counted yet, so together they served
    past it (CI: owed 10370 against a deposit of 10000). Allowed now means reserved
    until counted or given back."""
    sla = Sla(1024, 0, 0)  # 1 MIST per byte
    billing = UdpBilling(CONNECTION_ID, sla, CLIENT.ed25519_public, 1500)
    assert billing.may_forward(1000)  # reserved, on its way to the backend
    assert billing.replies_allowed([1000]) == 0  # it would take the deposit past 1500
    assert billing.replies_allowed([400, 400]) == 1  # 1000 + 400 fits, not 1800
    billing.forwarded(1000)
    billing.replied(400, 400)
    assert billing.owed == 1400 <= 1500
    assert not billing.may_forward(200)  # 1600: beyond the deposit
    # a send that failed gives its reservation back
    roomy = UdpBilling(CONNECTION_ID, sla, CLIENT.ed25519_public, 1500)
    assert roomy.may_forward(1000)
    roomy.not_forwarded(1000)
    assert roomy.replies_allowed([1000]) == 1
    roomy.replied(0, 1000)  # the reply was not sent after all
    assert roomy.may_forward(1400) and roomy.owed == 0
