"""Client-side metering: no receipt for usage that pays nothing.

Usage that the SLA prices at 0 -- the bytes of a service priced by the request, all of a
subscribed connection's usage -- made the client sign receipts that pay nothing more
than the last one (the time cadence every second, every ask of the server, the close),
each a signature here and a check and a write at the server. With the request cadence
a service priced by the request got two receipts per stream: one for the request, one
for its free bytes."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

import dtp.aio
import dtp.socket
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.payments.metering import ClientMeter, MeteringConfig
from dtp.payments.receipts import Receipt, fee
from tests.hostid.paid_handlers import echo_streams
from tests.support.paid_inprocess import ident, paid_service
from tests.support.polling import wait_for
from tests.support.scopes import scope_of
from tests.support.settlements import settled_escrow

CID = "0x" + "6e" * 32
CLIENT = HostIdentity.from_private_bytes(bytes([0x45]) * 32, bytes([0x46]) * 32)
SERVER_ID, CLIENT_ID = ident(0x47), ident(0x48)
# priced by the request alone, a request above the server's default allowance
# (min_deposit): the client signs at every stream it opens
BY_REQUEST = Sla(price_per_kib=0, price_per_request=5000, min_deposit=1000)
STREAMS = 12


def test_free_bytes_are_not_signed_for_on_their_own() -> None:
    sla = Sla(price_per_kib=0, price_per_request=10, min_deposit=4000)
    meter = ClientMeter(CLIENT, scope_of(CID), sla, 1 << 40, MeteringConfig(), now_ms=0)
    assert meter.update(0, 0, 1) is None  # (a quarter of min_deposit is 100 requests)
    first = meter.flush(0)
    assert first is not None and first.total_amount == 10
    # megabytes move for seconds: they cost nothing, no receipt (one a second before)
    assert meter.update(1500, 10 << 20, 1) is None
    assert meter.update(3000, 300 << 20, 1) is None
    assert meter.flush(3000) is None  # (an ask of the server, the close)
    # a request is owed, a second after the last receipt: signed, the bytes as they are
    receipt = meter.update(3500, 300 << 20, 2)
    assert receipt is not None
    assert (receipt.total_bytes, receipt.total_requests, receipt.total_amount) == (
        300 << 20,
        2,
        20,
    )
    # the time cadence still pays a priced request it was not asked for
    meter.update(4000, 301 << 20, 3)
    timed = meter.update(5000, 302 << 20, 3)
    assert timed is not None and timed.total_amount == 30


def test_a_subscribed_connection_signs_nothing() -> None:
    # the all-zero SLA of a subscribed connection, deposit 0: no receipt ever (one a
    # second while it moved data, and one at close, each for 0 MIST)
    meter = ClientMeter(CLIENT, scope_of(CID), Sla(0, 0, 0), 0, MeteringConfig(), now_ms=0)
    for step in range(1, 6):
        assert meter.update(step * 1000, step << 20, step) is None
    assert meter.flush(6000) is None
    assert meter.latest is None and not meter.exhausted


@pytest.mark.parametrize("api", ["blocking", "asyncio"])
def test_a_service_priced_by_the_request_gets_a_receipt_per_request_at_most(
    api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    signed: list[Receipt] = []
    update, flush = ClientMeter.update, ClientMeter.flush

    def counting_update(self: ClientMeter, *args: int, **kwargs: bool) -> Receipt | None:
        receipt = update(self, *args, **kwargs)
        if receipt is not None:
            signed.append(receipt)
        return receipt

    def counting_flush(self: ClientMeter, now_ms: int) -> Receipt | None:
        receipt = flush(self, now_ms)
        if receipt is not None and receipt not in signed:
            signed.append(receipt)
        return receipt

    monkeypatch.setattr(ClientMeter, "update", counting_update)
    monkeypatch.setattr(ClientMeter, "flush", counting_flush)
    port = 82 if api == "blocking" else 83
    with paid_service(tmp_path, SERVER_ID, CLIENT_ID, port, BY_REQUEST, echo_streams) as service:
        ledger = service.ledger
        if api == "blocking":
            sock = dtp.socket.create_connection(
                service.address, timeout=10, ledger=ledger, identity=CLIENT_ID, deposit=1 << 20
            )
            with sock:
                for _ in range(STREAMS):
                    stream = sock.open_stream()
                    stream.sendall(b"hi")
                    assert stream.recv(100) == b"hi"
                    stream.close()
            connection_id = sock.connection_id
        else:

            async def main() -> str | None:
                _reader, writer = await dtp.aio.open_connection(
                    service.address, timeout=10, ledger=ledger, identity=CLIENT_ID, deposit=1 << 20
                )
                for _ in range(STREAMS):
                    s_reader, s_writer = await writer.open_stream()
                    s_writer.write(b"hi")
                    assert await s_reader.readexactly(2) == b"hi"
                    s_writer.close()
                writer.close()
                await writer.wait_closed()
                return writer.connection_id

            connection_id = asyncio.run(main())
        assert connection_id is not None
        # the streams opened, each carrying a call: every one paid, and nothing else
        # signed -- the first stream, held open and ended empty, carries no request
        requests = STREAMS
        amounts = [receipt.total_amount for receipt in signed]
        assert amounts == sorted(set(amounts)), amounts  # each receipt pays more
        assert len(signed) <= requests
        assert signed[-1].total_requests == requests
        assert signed[-1].total_amount == fee(BY_REQUEST, 0, requests)
        # the server counted the requests as the client did: it claimed the last one
        # (after the client's close, in its own time)
        # (read through its settlement's event once its client deleted it)
        assert wait_for(
            lambda: settled_escrow(ledger, connection_id).claimed == fee(BY_REQUEST, 0, requests),
            timeout=20,
        ), settled_escrow(ledger, connection_id)
