"""The asyncio paid server's credit holds for writes the connection queues beyond the
client's flow-control window (docs/escrow.md §6.1: "each [call] moves at most what the
remaining credit covers"), while ``PaidWriter.write()`` still never waits, and a read
never waits for writes the client has not read yet. The twin of
tests/paid/test_credit.py. Real LocalLedger files, real DTP connections on
127.0.0.1, the server in this process."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import dtp.aio
from dtp.chain.local import LocalLedger
from dtp.chain.objects import Sla
from dtp.connection import ConnectionConfig
from dtp.errors import DTPError, PaymentRequired
from dtp.escrow import fee
from dtp.hostid.paid import ServicePolicy
from dtp.hostid.paid.aio import PaidReader, PaidWriter
from dtp.keys import HostIdentity
from dtp.metering import MeteringConfig

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=5000)
PORT = 7000
ALLOWANCE = 1000  # MIST on credit: about 100 KiB
STINGY = ServicePolicy(allowance=ALLOWANCE, pause_timeout=1.0)
UNPAID = MeteringConfig(enabled=False)


def ident(seed: int) -> HostIdentity:
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


SERVER, CLIENT = ident(0x73), ident(0x74)


@dataclass
class World:
    ledger: LocalLedger
    host_id: str
    receipts: Path


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    ledger = LocalLedger(tmp_path / "ledger.db")
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "credit", SLA)
    ledger.faucet(CLIENT.sui_address, 10_000_000)
    try:
        yield World(ledger, host_id, tmp_path / "receipts.db")
    finally:
        ledger.close()


async def until(ready: Callable[[], bool], timeout: float = 5.0) -> bool:
    """Poll ``ready`` (state of the server in this loop) until true or ``timeout``."""
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def test_writes_queued_beyond_the_clients_window_count_against_the_credit(world: World) -> None:
    # write() let out what the gate allowed on the usage, which counts a byte once sent:
    # the bytes queued beyond the client's window were not counted, and a client paying
    # nothing with a 16 KiB window got about 630 KB (its allowance is worth 100 KiB)
    outcome: list[BaseException | None] = []

    async def handler(reader: PaidReader, writer: PaidWriter) -> None:
        assert await reader.readexactly(2) == b"go"
        try:
            for _ in range(32):
                writer.write(b"x" * (64 << 10))  # never waits
                await writer.drain()
        except DTPError as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    window = 16 << 10
    config = ConnectionConfig(
        identity=CLIENT, is_client=True, stream_window=window, connection_window=window
    )

    async def main() -> tuple[int, list[DTPError]]:
        server = await dtp.aio.serve(
            world.host_id,
            PORT,
            handler,
            ledger=world.ledger,
            identity=SERVER,
            receipts=world.receipts,
            policy=STINGY,
        )
        got = 0
        errors: list[DTPError] = []
        async with server:
            reader, writer = await dtp.aio.open_connection(
                f"dtp://{world.host_id}:{PORT}",
                timeout=20,
                ledger=world.ledger,
                identity=CLIENT,
                deposit=SLA.min_deposit,
                metering=UNPAID,
                config=config,
            )
            writer.write(b"go")
            await writer.drain()

            def written() -> int:
                # what the handler wrote so far: sent, or queued for the window
                return sum(p.conn.usage[0] + p.conn.send_buffered() for p in server.core.live())

            # we read only once the handler wrote the allowance's worth, as a client
            # slow to read would (the server then writes into its queue)
            assert await until(lambda: written() >= 90 * 1024)
            try:
                while data := await reader.read(1 << 16):
                    got += len(data)
            except DTPError as exc:
                errors.append(exc)
            writer.close()
            with contextlib.suppress(DTPError):
                await writer.wait_closed()
        return got, errors

    got, errors = asyncio.run(main())
    served = fee(SLA, got + 2, 1)
    assert served <= ALLOWANCE + 1, served
    assert got > 90 * 1024
    assert len(errors) == 1 and isinstance(errors[0], PaymentRequired)
    assert len(outcome) == 1 and isinstance(outcome[0], PaymentRequired)


def test_a_read_does_not_wait_for_writes_the_client_has_not_read_yet(world: World) -> None:
    # the handler writes in one task and reads in another; the client uploads all
    # before it reads. Writes queued for the client hold the write credit: a read that
    # waited for them to go would wait for good (the client reads only once its upload
    # is through, which needs the server to read)
    size = 1 << 20
    small = 64 << 10

    async def handler(reader: PaidReader, writer: PaidWriter) -> None:
        async def write_all() -> None:
            for _ in range(size // (64 << 10)):
                writer.write(b"d" * (64 << 10))
                await writer.drain()

        task = asyncio.ensure_future(write_all())
        got = 0
        while got < size:
            data = await reader.read(1 << 16)
            assert data
            got += len(data)
        await task
        writer.write(b"!")
        await writer.drain()

    async def main() -> int:
        server = await dtp.aio.serve(
            world.host_id,
            PORT,
            handler,
            ledger=world.ledger,
            identity=SERVER,
            receipts=world.receipts,
            policy=ServicePolicy(pause_timeout=5.0),
            config=ConnectionConfig(
                identity=SERVER, is_client=False, stream_window=small, connection_window=small
            ),
        )
        got = 0
        async with server:
            reader, writer = await dtp.aio.open_connection(
                f"dtp://{world.host_id}:{PORT}",
                timeout=10,
                ledger=world.ledger,
                identity=CLIENT,
                deposit=1_000_000,
                config=ConnectionConfig(
                    identity=CLIENT, is_client=True, stream_window=small, connection_window=small
                ),
            )
            writer.write(b"u" * size)
            await writer.drain()
            while got < size + 1:
                data = await asyncio.wait_for(reader.read(1 << 16), 5)
                assert data
                got += len(data)
            writer.close()
            await writer.wait_closed()
        return got

    assert asyncio.run(main()) == size + 1
