"""dtp.aio.serve with a ReceiptStore of the caller's: close() says the store is the
caller's to close afterwards, and wait_closed() returns once the listener closed, with
connections still being served. The caller had no way to know when their settlements
were done: closing the store after wait_closed() made the settlement of a connection
open at the time fail on the closed store (sqlite3.ProgrammingError in the server's
task) and its fees went unclaimed. wait_released() waits for that. Real LocalLedger
files, real DTP connections on 127.0.0.1."""

from __future__ import annotations

import asyncio
from pathlib import Path

import dtp.aio
from dtp.chain.local import LocalLedger
from dtp.chain.objects import Sla
from dtp.hostid.paid import ServicePolicy
from dtp.hostid.paid.aio import PaidReader, PaidWriter
from dtp.metering import MeteringConfig
from dtp.receipt_store import ReceiptStore
from tests.support.ledger_server import identity_from_seed

PORT = 7
SERVER = identity_from_seed(0x73)
CLIENT = identity_from_seed(0x74)


async def _echo(reader: PaidReader, writer: PaidWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()


def test_a_caller_store_closed_after_wait_released_keeps_the_fees(tmp_path: Path) -> None:
    book = LocalLedger(tmp_path / "ledger.db")
    host_id = book.create_host(SERVER, SERVER.noise_public)
    book.add_service(SERVER, host_id, PORT, "echo", Sla(10, 5, 5000))
    book.faucet(CLIENT.sui_address, 10_000_000)
    server_book = LocalLedger(tmp_path / "ledger.db")  # the server's own, used in threads
    store = ReceiptStore(tmp_path / "receipts.db")

    async def main() -> None:
        server = await dtp.aio.serve(
            host_id,
            PORT,
            _echo,
            ledger=server_book,
            identity=SERVER,
            receipts=store,
            policy=ServicePolicy(allowance=500),
        )
        assert not await server.wait_released(0)  # (not closed)
        reader, writer = await dtp.aio.open_connection(
            f"dtp://{host_id}:{PORT}",
            ledger=book,
            identity=CLIENT,
            deposit=200_000,
            timeout=10,
            metering=MeteringConfig(every_bytes=16 << 10),
        )
        for _ in range(8):
            writer.write(b"z" * 30_000)
            await writer.drain()
            assert await reader.readexactly(30_000) == b"z" * 30_000
        server.close()
        await server.wait_closed()
        # the connection is still served: not released yet
        assert not await server.wait_released(0.2)
        writer.close()
        await writer.wait_closed()
        assert await server.wait_released(10)
        store.close()  # the caller's, once released
        cid = writer.connection_id
        assert cid is not None
        tc = await asyncio.to_thread(book.get_connection, cid)
        assert tc.settled
        escrow = await asyncio.to_thread(book.get_escrow, tc.escrow)
        assert escrow.claimed > 0  # the fees were claimed (0: lost to the closed store)
        assert [c for c, _ in server.settlements] == [cid]

    try:
        asyncio.run(main())
    finally:
        store.close()
        server_book.close()
        book.close()
