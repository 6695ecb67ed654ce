"""Client-side metering: a client paying on cadence also signs
for the requests it opens before their fees reach the server's allowance -- the byte
cadence alone let a client opening streams with few bytes each (RPC calls) be paused
for a receipt every ``min_deposit`` worth of requests."""

from __future__ import annotations

from pathlib import Path

import pytest

import dtp.socket
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.payments._receipt_writer import ReceiptWriter
from dtp.payments._settlement import ClientPayment
from dtp.payments.metering import ClientMeter, MeteringConfig
from dtp.payments.receipt_store import ReceiptStore
from dtp.payments.receipts import fee
from tests.hostid.paid_handlers import echo_streams
from tests.support.paid_inprocess import ident, paid_service
from tests.support.scopes import scope_of

# a request costs an eighth of min_deposit (the server's default allowance): eight
# unreceipted requests pause the connection; bytes are all but free
SLA = Sla(price_per_kib=1, price_per_request=1000, min_deposit=8000)
CID = "0x" + "5e" * 32
CLIENT = HostIdentity.from_private_bytes(bytes([0x35]) * 32, bytes([0x36]) * 32)
SERVER_ID, CLIENT_ID = ident(0x37), ident(0x38)
# for the real connection: an allowance of 400 requests, the client's cadence at 100
RPC_SLA = Sla(price_per_kib=1, price_per_request=10, min_deposit=4000)
CALLS = 450


def _unreceipted(meter: ClientMeter, total_bytes: int, total_requests: int) -> int:
    latest = meter.latest
    return fee(SLA, total_bytes, total_requests) - (0 if latest is None else latest.total_amount)


def test_requests_are_signed_for_within_a_quarter_of_the_allowance() -> None:
    # the default cadence (bytes, and a second): 30 requests within one millisecond
    meter = ClientMeter(CLIENT, scope_of(CID), SLA, 1 << 40, MeteringConfig())
    worst = 0
    for requests in range(1, 31):
        meter.update(0, 10 * requests, requests)
        worst = max(worst, _unreceipted(meter, 10 * requests, requests))
    # never more than a quarter of min_deposit unpaid (it reached all 30 000 MIST)
    assert worst <= SLA.min_deposit // 4
    # a cadence of its own that is tighter stays; a looser one is bounded the same way
    assert (
        ClientMeter(
            CLIENT, scope_of(CID), SLA, 1 << 40, MeteringConfig(every_requests=1)
        ).meter.every_requests
        == 1
    )
    assert (
        ClientMeter(
            CLIENT, scope_of(CID), SLA, 1 << 40, MeteringConfig(every_requests=50)
        ).meter.every_requests
        == 2
    )
    # "pay only when asked" (every cadence 0) is left as it is
    asked = ClientMeter(
        CLIENT, scope_of(CID), SLA, 1 << 40, MeteringConfig(every_bytes=0, every_ms=0)
    )
    assert all(asked.update(0, 0, n) is None for n in range(1, 31))
    assert asked.flush(0) is not None


def test_a_client_opening_many_small_streams_is_never_asked_for_a_receipt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[bytes] = []
    answer = ClientPayment.on_server_receipt

    def counting(self: ClientPayment, data: bytes) -> None:
        asked.append(data)
        answer(self, data)

    monkeypatch.setattr(ClientPayment, "on_server_receipt", counting)
    # a receipt counts once the server's writer thread has synced it (a low-priority
    # thread: on a loaded machine that took longer than the 300 calls of margin, and
    # the server asked); each call waits for those writes, so the disk's pace is out
    writers: list[ReceiptWriter] = []
    start = ReceiptWriter.__init__

    def kept(self: ReceiptWriter, store: ReceiptStore) -> None:
        start(self, store)
        writers.append(self)

    monkeypatch.setattr(ReceiptWriter, "__init__", kept)
    with paid_service(tmp_path, SERVER_ID, CLIENT_ID, 81, RPC_SLA, echo_streams) as service:
        sock = dtp.socket.create_connection(
            service.address,
            timeout=10,
            ledger=service.ledger,
            identity=CLIENT_ID,
            deposit=1 << 20,
            # no time cadence: what pays is the meter's own rule, on every machine
            metering=MeteringConfig(every_ms=0),
        )
        with sock:
            for _ in range(CALLS):
                stream = sock.open_stream()
                stream.sendall(b"hi")
                assert stream.recv(100) == b"hi"
                stream.close()
                assert all(writer.flush(timeout=30) for writer in writers)
            # the server never paused the client for a receipt: it paid as it went
            assert asked == []
