"""A metered client whose application reads nothing still answers the server's request
for a final receipt in time, on either client API, and the server settles with every
byte paid -- those the client never read included (they were delivered, and the receipt
counts what crossed the carrier). How the request is seen is each API's own:

- blocking: the engine is looked at every ``METERED_MAX_WAIT`` seconds, from the start
  (the timers start once the payment is set), well within the server's
  ``final_receipt_timeout`` (1 s by default). It answered at its next pass, up to a
  second later: often after the server had settled without the receipt, the usage
  since the last one unpaid.
- asyncio: the protocol keeps reading the carrier whatever the application's buffer
  holds (the stream's flow-control window, not a paused transport, is what holds the
  server back), so the request is seen as it arrives.

The server is the blocking paid server (the client is what differs); three connections
a test, as the late answer came only now and then."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import dtp.aio
import dtp.socket
from dtp.hostid._payment_hook import METERED_MAX_WAIT
from dtp.hostid.paid import PaidSocket, ServicePolicy
from dtp.ledger._objects import Sla
from dtp.payments.metering import MeteringConfig
from dtp.payments.receipts import fee
from dtp.transport.blocking._engine import TIMERS
from tests.support.paid_inprocess import PaidService, ident, paid_service
from tests.support.settlements import is_settled, settled_escrow

SLA = Sla(price_per_kib=10, price_per_request=0, min_deposit=1 << 30)
SENT = 100_000
REPLY = 120_000  # within the stream's window: the server's writes end without a reader
SERVER, CLIENT = ident(0x75), ident(0x76)
#: receipts only when asked (or at the close): all the client sent and got is unpaid
ASKED_ONLY = MeteringConfig(every_bytes=0, every_ms=0)


def _blocking_client(service: PaidService) -> str:
    """Sends SENT, reads nothing until the server settled, then all it was sent."""
    ledger = service.ledger
    with dtp.socket.create_connection(
        service.address,
        timeout=10,
        ledger=ledger,
        identity=CLIENT,
        deposit=1 << 30,
        metering=ASKED_ONLY,
    ) as sock:
        # the engine's first pass is due within METERED_MAX_WAIT already
        engine = sock._engine
        with TIMERS._lock:
            due = min(d for d, _, ref in TIMERS._heap if ref() is engine)
        assert due - time.monotonic() <= METERED_MAX_WAIT
        sock.sendall(bytes(SENT))
        cid = sock.connection_id
        assert cid is not None
        # the application does not read: only the engine's passes see the request
        deadline = time.monotonic() + 10
        while not is_settled(ledger, cid):
            assert time.monotonic() < deadline, "the server never settled"
            time.sleep(0.02)
        # what it did not read is all there still, whole
        data = b""
        while chunk := sock.recv(1 << 16):
            data += chunk
        assert len(data) == REPLY
    return cid


def _aio_client(service: PaidService) -> str:
    """:func:`_blocking_client` on the asyncio client."""
    ledger = service.ledger

    async def main() -> str:
        reader, writer = await dtp.aio.open_connection(
            service.address,
            timeout=10,
            ledger=ledger,
            identity=CLIENT,
            deposit=1 << 30,
            metering=ASKED_ONLY,
        )
        cid = writer.connection_id
        assert cid is not None
        writer.write(bytes(SENT))
        await writer.drain()
        # the application reads nothing; the server settles meanwhile
        deadline = time.monotonic() + 10
        while not is_settled(ledger, cid):
            assert time.monotonic() < deadline, "the server never settled"
            await asyncio.sleep(0.02)
        # what it did not read is all there still, whole
        data = await reader.read()
        assert len(data) == REPLY
        writer.close()
        await writer.wait_closed()
        return cid

    return asyncio.run(main())


@pytest.mark.parametrize("client", [_blocking_client, _aio_client], ids=["blocking", "asyncio"])
def test_a_client_that_reads_nothing_answers_the_final_receipt_request(
    tmp_path: Path, client: Callable[[PaidService], str]
) -> None:
    handled: list[int] = []

    def handle(sock: PaidSocket) -> None:
        got = 0
        while got < SENT:
            got += len(sock.recv(65536))
        sock.sendall(bytes(REPLY))
        handled.append(got)
        # the handler ends the connection: the server asks for a final receipt first

    # a server less patient than the default, still well above the client's passes
    policy = ServicePolicy(final_receipt_timeout=0.6)
    with paid_service(tmp_path, SERVER, CLIENT, 85, SLA, handle, policy) as service:
        ledger = service.ledger
        for _ in range(3):
            cid = client(service)
            escrow = settled_escrow(ledger, cid)
            # settled with the answer to its request: both directions paid for, to the
            # byte (the usage counts stream bytes; the records' framing is not billed)
            assert escrow.claimed == fee(SLA, SENT + REPLY, 1)
    assert handled == [SENT] * 3
