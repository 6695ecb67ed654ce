"""A closed paid connection (by host ID, on a LocalLedger file: the open, the metered
exchange, the final receipt, the settlement) leaves no reference cycle of ours behind,
on either side: blocking and asyncio servers (the ``driver`` fixture) with a blocking
client, and an asyncio client against an asyncio server. The collector is off while
they run (tests/support/cycles.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import dtp.aio
import dtp.socket
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from tests.paid.conftest import Driver
from tests.support.cycles import cyclic_garbage, describe
from tests.support.paid_twins import echo_aio, until_idle

SLA = Sla(price_per_kib=1, price_per_request=1, min_deposit=1 << 20)
DEPOSIT = 1 << 22
PORT = 7000
CONNECTIONS = 8


def _world(tmp_path: Path) -> tuple[LocalLedger, HostIdentity, HostIdentity, str, str]:
    ledger = LocalLedger(tmp_path / "ledger.db")
    host, client = HostIdentity.generate(), HostIdentity.generate()
    ledger.faucet(client.sui_address, 1 << 40)
    host_id = ledger.create_host(host, host.noise_public)
    ledger.add_service(host, host_id, PORT, "echo", SLA)
    cap = ledger.create_spending_cap(client, 1 << 40)
    return ledger, host, client, host_id, cap


def test_closed_paid_connections_leave_no_cycle(driver: Driver, tmp_path: Path) -> None:
    ledger, host, client, host_id, cap = _world(tmp_path)

    def one() -> None:
        with dtp.socket.create_connection(
            f"dtp://{host_id}:{PORT}",
            timeout=30,
            ledger=ledger,
            identity=client,
            deposit=DEPOSIT,
            cap_id=cap,
        ) as sock:
            sock.sendall(b"p" * 100)
            got = b""
            while len(got) < 100:
                got += sock.recv(100 - len(got))
            assert got == b"p" * 100

    try:
        with driver.serve(
            host_id, PORT, "echo", ledger=ledger, identity=host, receipts=tmp_path / "r.db"
        ) as server:
            for _ in range(3):  # warm up: threads, lazy imports, the first keys
                one()
            driver.until_idle(server, 30)
            with cyclic_garbage(asyncio_transports=True) as garbage:
                for _ in range(CONNECTIONS):
                    one()
                driver.until_idle(server, 30)
            assert garbage == [], describe(garbage)
    finally:
        ledger.close()


def test_closed_paid_asyncio_connections_leave_no_cycle(tmp_path: Path) -> None:
    ledger, host, client, host_id, cap = _world(tmp_path)

    async def one() -> None:
        reader, writer = await dtp.aio.open_connection(
            f"dtp://{host_id}:{PORT}",
            timeout=30,
            ledger=ledger,
            identity=client,
            deposit=DEPOSIT,
            cap_id=cap,
        )
        writer.write(b"p" * 100)
        await writer.drain()
        assert await reader.readexactly(100) == b"p" * 100
        writer.close()
        await writer.wait_closed()

    async def main() -> list[object]:
        server_ledger = LocalLedger(ledger.path)
        server = await dtp.aio.serve(
            host_id,
            PORT,
            echo_aio,
            ledger=server_ledger,
            identity=host,
            receipts=tmp_path / "r.db",
        )
        try:
            for _ in range(3):
                await one()
            await until_idle(server)
            with cyclic_garbage(asyncio_transports=True) as garbage:
                for _ in range(CONNECTIONS):
                    await one()
                await until_idle(server)
                for _ in range(5):  # (the callbacks the last close scheduled)
                    await asyncio.sleep(0.01)
            return garbage
        finally:
            server.close()
            await server.wait_closed()
            server_ledger.close()

    try:
        garbage = asyncio.run(main())
    finally:
        ledger.close()
    assert garbage == [], describe(garbage)
