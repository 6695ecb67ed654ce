"""The asyncio API's peer name over the ledger carrier: ("ledger", <connection id>), as
getpeername() of the blocking API (docs/ledger-carrier.md), on both ends. The carrier
under it is a local socket pair, whose own peer name is ''."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import dtp.aio
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from tests.support.ledger_server import identity_from_seed
from tests.support.polling import wait_for

PORT = 7
SERVER = identity_from_seed(0x61)
CLIENT = identity_from_seed(0x62)


def _bridge_threads() -> list[threading.Thread]:
    return [
        t
        for t in threading.enumerate()
        if t.name.startswith("dtp-ledger-") and t.name != "dtp-ledger-listener"
    ]


def test_peername_over_the_ledger_carrier(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    ledger = LocalLedger(path)
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "echo", Sla(10, 5, 1000))
    ledger.faucet(CLIENT.sui_address, 1_000_000)

    async def main() -> None:
        server_ledger = LocalLedger(path)
        seen: asyncio.Future[object] = asyncio.get_running_loop().create_future()

        async def callback(
            reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter
        ) -> None:
            seen.set_result(writer.get_extra_info("peername"))
            await reader.read()  # until the client closes
            writer.close()

        server = await dtp.aio.start_server(
            callback,
            None,
            None,
            identity=SERVER,
            ledger=server_ledger,
            host_id=host_id,
            dtp_port=PORT,
        )
        try:
            _reader, writer = await dtp.aio.open_connection(
                f"dtp://{host_id}:{PORT}", ledger=ledger, identity=CLIENT, deposit=5000, timeout=30
            )
            expected = ("ledger", writer.connection_id)
            assert writer.connection_id
            assert writer.get_extra_info("peername") == expected
            assert f"peer={expected}" in repr(writer)
            # streams of the connection name the same peer
            _, stream_writer = await writer.open_stream()
            assert stream_writer.get_extra_info("peername") == expected
            assert await asyncio.wait_for(seen, 30) == expected  # the server's end
            writer.close()
            await writer.wait_closed()
            await asyncio.to_thread(wait_for, lambda: not _bridge_threads(), 30)
        finally:
            server.close()
            await server.wait_closed()
            server_ledger.close()

    try:
        asyncio.run(main())
    finally:
        ledger.close()
    assert not _bridge_threads()
