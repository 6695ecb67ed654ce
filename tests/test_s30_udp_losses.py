"""UDP replies lost on the way back after the relay counted them: the forwarder never
signs for them, so without a write-off their bytes stayed unreceipted for good, a lossy
flow ran out of credit and was served nothing more, and a draining relay waited its
whole idle timeout for a receipt that could not come."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

import dtp.aio
import dtp.socket
import dtp.udp_aio
from dtp.chain.objects import Sla
from dtp.connection import ConnectionConfig
from dtp.escrow import Meter
from dtp.udp import FlowAccount, UdpBilling, _control
from dtp.udp_aio import relay_udp_async
from tests.test_s13_carrier_udp import CLIENT, CONNECTION_ID, SERVER

SLA = Sla(10, 1, 0)
DEPOSIT = 10**12


def _lossy_flow(billing: UdpBilling, rounds: int, lose_every: int) -> int:
    """Requests of 100 bytes, each answered by a reply of 1000 that the client gets
    except every ``lose_every``-th; the client signs each report as the forwarder does
    (capped by what it sent and received). Returns the requests the relay served."""
    account = FlowAccount(Meter(CLIENT, CONNECTION_ID, SLA, DEPOSIT))
    served = 0
    for i in range(rounds):
        if not billing.may_forward(100):
            continue
        billing.forwarded(100)
        account.sent_datagrams += 1
        account.sent_bytes += 100
        served += 1
        if billing.replies_allowed([1000]) == 1:
            billing.replied(1000, 1000)
            if i % lose_every:
                account.received_bytes += 1000
        totals = billing.report_due(billing.report_interval(8))
        if totals is not None:
            frame = account.sign(*totals)
            if frame is not None:
                assert billing.receipt(frame[5:])
    return served


def test_a_flow_losing_a_few_replies_is_served_on() -> None:
    """One reply in 60 lost (1.7%), a 64 KiB byte credit: the lost replies' bytes used
    it up after ~4000 requests, and then no request was served again."""
    rounds = 6000
    cut_off = UdpBilling(
        CONNECTION_ID, SLA, CLIENT.ed25519_public, DEPOSIT, credit_datagrams=4, loss_allowance=0
    )
    assert _lossy_flow(cut_off, rounds, 60) < rounds * 0.8  # (the behaviour before)
    billing = UdpBilling(CONNECTION_ID, SLA, CLIENT.ed25519_public, DEPOSIT, credit_datagrams=4)
    assert _lossy_flow(billing, rounds, 60) == rounds
    assert billing.latest is not None
    unpaid = billing.bytes - billing.latest.total_bytes
    assert 0 < unpaid <= billing.credit_bytes + billing.reply_bytes * billing.loss_allowance


def test_a_client_claiming_every_reply_lost_gets_at_most_the_allowance_free() -> None:
    """The write-off is bounded: a client that signs for no reply at all is served
    replies only while the credit and the allowed share of them last."""
    billing = UdpBilling(CONNECTION_ID, SLA, CLIENT.ed25519_public, DEPOSIT, credit_datagrams=4)
    served = _lossy_flow(billing, 6000, 1)  # every reply "lost"
    assert served < 200
    assert billing.reply_bytes <= (billing.credit_bytes + 2000) / (1 - billing.loss_allowance)


@pytest.mark.parametrize("share", [-0.1, 1.0, float("nan")])
def test_the_allowance_is_a_share_below_one(share: float) -> None:
    with pytest.raises(ValueError, match="loss_allowance"):
        UdpBilling(CONNECTION_ID, SLA, CLIENT.ed25519_public, DEPOSIT, loss_allowance=share)


@pytest.mark.parametrize("reliable", [True, False], ids=["tcp", "lossy"])
def test_a_draining_relay_waits_a_bounded_time_for_a_receipt_short_by_lost_replies(
    reliable: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The daemon's drain: the relay reports its count and waits for a receipt that
    covers it. The client lost the reply (it signs for its request only), so none ever
    does; the relay waited out its idle timeout (60 s here) before it ended. Over a
    lossy carrier (the ledger: round trips of seconds) it waits longer."""
    if not reliable:
        monkeypatch.setattr(dtp.udp_aio, "FINAL_RECEIPT_WAIT", 30.0)
        monkeypatch.setattr(dtp.udp_aio, "LOSSY_FINAL_RECEIPT_WAIT", 1.0)
    server_config = ConnectionConfig(SERVER, False, reliable_carrier=reliable)
    client_config = ConnectionConfig(CLIENT, True, reliable_carrier=reliable)
    backend = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    backend.bind(("127.0.0.1", 0))

    def echo() -> None:
        try:
            data, peer = backend.recvfrom(100)
            backend.sendto(data * 10, peer)
        except OSError:
            return

    echoer = threading.Thread(target=echo, daemon=True)
    echoer.start()
    billing = UdpBilling(CONNECTION_ID, SLA, CLIENT.ed25519_public, DEPOSIT)
    ended: list[float] = []

    async def main() -> None:
        finish = asyncio.Event()
        replied = threading.Event()

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            await relay_udp_async(
                reader, writer, backend.getsockname(), billing=billing, idle_timeout=60,
                finish=finish,
            )  # fmt: skip
            ended.append(time.monotonic())

        server = await dtp.aio.start_server(
            handle, "127.0.0.1", 0, identity=SERVER, config=server_config
        )

        def client() -> None:
            with dtp.socket.create_connection(
                server.address, server_key=SERVER.noise_public, timeout=10, config=client_config
            ) as sock:
                sock.send_datagram(b"go")
                assert sock.recv_datagrams(1, 5)  # the reply: "lost", not signed for
                meter = Meter(CLIENT, CONNECTION_ID, SLA, DEPOSIT)
                now = int(time.time() * 1000)
                receipt = meter.record(now, nbytes=2, requests=1) or meter.flush(now)
                assert receipt is not None
                sock.sendall(_control(b"R", receipt.encode()))
                replied.set()
                deadline = time.monotonic() + 30
                while not ended and time.monotonic() < deadline:
                    time.sleep(0.05)

        try:
            job = asyncio.create_task(asyncio.to_thread(client))
            while not replied.is_set():
                await asyncio.sleep(0.02)
            while billing.latest is None:
                await asyncio.sleep(0.02)
            started = time.monotonic()
            finish.set()
            await asyncio.wait_for(job, 40)
            assert ended, "the relay did not end"
            assert ended[0] - started < dtp.udp_aio.FINAL_RECEIPT_WAIT + 5
        finally:
            server.close()
            await server.wait_closed()

    try:
        asyncio.run(main())
    finally:
        echoer.join(5)
        backend.close()
    assert billing.latest is not None and billing.latest.total_bytes < billing.bytes
