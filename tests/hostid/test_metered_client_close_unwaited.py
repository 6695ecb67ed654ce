"""dtp.aio: a metered client connection closed with ``writer.close()`` and no
``wait_closed()`` as ``asyncio.run`` ends (common asyncio usage): the loop's shutdown
cancels the graceful close, which then aborts the connection. The final receipt for
the usage since the last one was never sent, and the paid server, settling, claimed
nothing of it (0 here, for 200 kB it served). It now goes out before the abort, as in
the graceful close. Real LocalLedger files; the paid server is the blocking one, in
this process's threads, so that it outlives the client's loop."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import dtp.aio
import dtp.socket
from dtp.hostid.paid import PaidSocket, ServicePolicy
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.payments.metering import MeteringConfig
from tests.support.ledger_server import identity_from_seed
from tests.support.settlements import is_settled, settled_escrow

PORT = 7
SERVER = identity_from_seed(0x79)
CLIENT = identity_from_seed(0x7A)
SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=50_000)
SIZE = 100_000


def _echo(sock: PaidSocket) -> None:
    while data := sock.recv(65536):
        sock.sendall(data)


def test_close_without_wait_closed_at_loop_end_still_pays_the_final_receipt(
    tmp_path: Path,
) -> None:
    book = LocalLedger(tmp_path / "ledger.db")
    server_book = LocalLedger(tmp_path / "ledger.db")
    host_id = book.create_host(SERVER, SERVER.noise_public)
    book.add_service(SERVER, host_id, PORT, "echo", SLA)
    book.faucet(CLIENT.sui_address, 10_000_000)
    service = dtp.socket.serve(
        host_id,
        PORT,
        _echo,
        ledger=server_book,
        identity=SERVER,
        receipts=tmp_path / "receipts.db",
        policy=ServicePolicy(allowance=50_000),  # the whole exchange on credit
    )
    try:
        ids: list[str] = []

        async def main() -> None:
            reader, writer = await dtp.aio.open_connection(
                f"dtp://{host_id}:{PORT}",
                ledger=book,
                identity=CLIENT,
                deposit=200_000,
                timeout=10,
                # no receipt on cadence: only the final one pays
                metering=MeteringConfig(every_bytes=1 << 20, every_ms=1_000_000),
            )
            writer.write(b"z" * SIZE)
            await writer.drain()
            assert await reader.readexactly(SIZE) == b"z" * SIZE
            assert writer.connection_id is not None
            ids.append(writer.connection_id)
            writer.close()  # and asyncio.run ends: the close task is cancelled

        asyncio.run(main())
        (cid,) = ids
        deadline = time.monotonic() + 10
        while not is_settled(book, cid) and time.monotonic() < deadline:
            time.sleep(0.02)  # the server settles in its own thread
        assert is_settled(book, cid)
        # 2 x 100 kB at 10 MIST/KiB and one request: about 1,960 MIST (0 before)
        assert settled_escrow(book, cid).claimed > 1_900
    finally:
        service.close()
        server_book.close()
        book.close()
