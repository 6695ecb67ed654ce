"""An asyncio metered client whose application reads nothing of what the server sent
still answers the server's request for a final receipt: the protocol keeps reading the
carrier whatever the application's buffer holds (the stream's flow-control window, not
a paused transport, is what holds the server back), so the request is seen as it
arrives and the server settles with every byte paid -- those the client never read
included (they were delivered, and the receipt counts what crossed the carrier)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import dtp.aio
from dtp.chain.objects import Sla
from dtp.escrow import fee
from dtp.hostid.paid import PaidSocket, ServicePolicy
from dtp.metering import MeteringConfig
from tests.support.paid_inprocess import ident, paid_service

SLA = Sla(price_per_kib=10, price_per_request=0, min_deposit=1 << 30)
SENT = 50_000
REPLY = 120_000  # within the stream's window: the server's writes end without a reader
SERVER, CLIENT = ident(0x75), ident(0x76)


def test_an_aio_client_that_reads_nothing_answers_the_final_receipt_request(
    tmp_path: Path,
) -> None:
    handled: list[int] = []

    def handle(sock: PaidSocket) -> None:
        got = 0
        while got < SENT:
            got += len(sock.recv(65536))
        sock.sendall(bytes(REPLY))
        handled.append(got)
        # the handler ends the connection: the server asks for a final receipt first

    policy = ServicePolicy(final_receipt_timeout=0.6)
    with paid_service(tmp_path, SERVER, CLIENT, 85, SLA, handle, policy) as service:
        ledger = service.ledger

        async def main() -> str:
            reader, writer = await dtp.aio.open_connection(
                service.address,
                timeout=10,
                ledger=ledger,
                identity=CLIENT,
                deposit=1 << 30,
                # receipts only when asked (or at the close): all of it is unpaid
                metering=MeteringConfig(every_bytes=0, every_ms=0),
            )
            cid = writer.connection_id
            assert cid is not None
            writer.write(bytes(SENT))
            await writer.drain()
            # the application reads nothing; the server settles meanwhile
            deadline = time.monotonic() + 10
            while not ledger.get_connection(cid).settled:
                assert time.monotonic() < deadline, "the server never settled"
                await asyncio.sleep(0.02)
            # what it did not read is all there still, whole
            data = await reader.read()
            assert len(data) == REPLY
            writer.close()
            await writer.wait_closed()
            return cid

        cid = asyncio.run(main())
        assert handled == [SENT]
        escrow = ledger.get_escrow(ledger.get_connection(cid).escrow)
        # settled with the answer to its request: both directions paid for, to the
        # byte (the usage counts stream bytes; the records' framing is not billed)
        assert escrow.claimed == fee(SLA, SENT + REPLY, 1)
