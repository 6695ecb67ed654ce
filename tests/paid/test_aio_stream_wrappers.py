"""The paid stream wrappers against the plain ones (dtp.hostid.paid._aio's PaidReader /
PaidWriter against dtp.aio's reader and writer, dtp.hostid.paid's PaidSocket against
dtp.socket's DTPSocket): a cancelled paid read of all consumes nothing, what moves no
data is there, and sendfile() is metered. Real LocalLedger files, real DTP connections
on 127.0.0.1, the server in this process."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import ConnectionClosed, DTPError, LocalProtocolError, PaymentRequired
from dtp.hostid.paid import PaidSocket, ServicePolicy
from dtp.hostid.paid._aio import PaidReader, PaidWriter
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.payments.metering import MeteringConfig
from dtp.payments.receipts import fee
from tests.support.paid_twins import ident
from tests.support.polling import wait_for

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=5000)
PORT = 7100
ALLOWANCE = 1000  # MIST on credit: about 100 KiB
STINGY = ServicePolicy(allowance=ALLOWANCE, pause_timeout=1.0)
UNPAID = MeteringConfig(enabled=False)
SERVER, CLIENT = ident(0x95), ident(0x96)

AioHandler = Callable[[PaidReader, PaidWriter], Awaitable[None]]


@dataclass
class World:
    ledger: LocalLedger
    host_id: str
    receipts: Path
    tmp: Path


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    ledger = LocalLedger(tmp_path / "ledger.db")
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "followup", SLA)
    ledger.faucet(CLIENT.sui_address, 10_000_000)
    try:
        yield World(ledger, host_id, tmp_path / "receipts.db", tmp_path)
    finally:
        ledger.close()


async def _paid_pair(
    world: World,
    handler: AioHandler,
    client: Callable[[dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter], Awaitable[None]],
    policy: ServicePolicy | None = None,
) -> None:
    """Serve ``handler`` (dtp.aio.serve) and run ``client`` on a paid connection to it."""
    server = await dtp.aio.serve(
        world.host_id,
        PORT,
        handler,
        ledger=world.ledger,
        identity=SERVER,
        receipts=world.receipts,
        policy=policy,
    )
    async with server:
        reader, writer = await dtp.aio.open_connection(
            f"dtp://{world.host_id}:{PORT}",
            timeout=10,
            ledger=world.ledger,
            identity=CLIENT,
            deposit=SLA.min_deposit,
        )
        try:
            await client(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(DTPError):
                await asyncio.wait_for(writer.wait_closed(), 10)


def test_a_cancelled_paid_read_of_all_consumes_nothing(world: World) -> None:
    """``asyncio.wait_for(reader.read(), t)`` timing out after some bytes came: those
    bytes come with the next read (the paid read of all kept them in a local list, and
    they were lost), as with dtp.aio's reader."""
    got: list[object] = []

    async def handler(reader: PaidReader, writer: PaidWriter) -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.read(), 0.3)  # b"abc" came, no EOF yet
        writer.write(b"k")
        await writer.drain()
        got.append(await asyncio.wait_for(reader.read(), 5))
        got.append(reader.at_eof())
        writer.close()

    async def client(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        writer.write(b"abc")
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(1), 5) == b"k"
        writer.write(b"def")
        writer.write_eof()
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""

    asyncio.run(_paid_pair(world, handler, client))
    assert got == [b"abcdef", True]


def test_a_paid_readexactly_that_fails_consumes_nothing(world: World) -> None:
    """A paid readexactly() that meets the connection's failure after some bytes came
    puts them back, as dtp.aio's does: the next read gets them, then the error (they
    were lost)."""
    got: list[object] = []

    async def handler(reader: PaidReader, writer: PaidWriter) -> None:
        writer.write(b"k")  # (served: the client aborts only then)
        await writer.drain()
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(reader.readexactly(10), 5)
        got.append(await reader.read(10))
        with pytest.raises(ConnectionClosed):
            await reader.read(10)

    async def client(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        assert await asyncio.wait_for(reader.readexactly(1), 5) == b"k"
        writer.write(b"abc")
        await writer.drain()
        writer.abort("gone")

    asyncio.run(_paid_pair(world, handler, client))
    assert got == [b"abc"]


def test_paid_reader_and_writer_have_what_moves_no_data(world: World) -> None:
    """exception() and start_tls() as dtp.aio's (the paid ones raised AttributeError),
    and a repr naming the stream; push delivery stays refused (it would pass the gate)."""
    seen: list[object] = []

    async def handler(reader: PaidReader, writer: PaidWriter) -> None:
        seen.append(reader.exception())
        with pytest.raises(LocalProtocolError):
            await writer.start_tls(None)
        seen.append("DTPStreamWriter" in repr(writer))
        for obj, name in ((reader, "set_sink"), (writer, "set_datagram_sink")):
            with pytest.raises(AttributeError):
                getattr(obj, name)
        writer.write(b"k")
        await writer.drain()
        assert await reader.read() == b""
        seen.append(reader.exception())
        writer.close()

    async def client(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        assert await asyncio.wait_for(reader.readexactly(1), 5) == b"k"
        writer.write_eof()
        await writer.drain()
        assert await asyncio.wait_for(reader.read(), 5) == b""

    asyncio.run(_paid_pair(world, handler, client))
    assert seen == [None, True, None]


def test_paid_sendfile_is_metered(world: World) -> None:
    """PaidSocket.sendfile (DTPSocket has one): a client that pays nothing gets the
    allowance's worth of a 2 MiB file, then PaymentRequired; before, it raised
    AttributeError in the handler and nothing was sent."""
    path = world.tmp / "big.bin"
    path.write_bytes(b"f" * (2 << 20))
    outcome: list[BaseException] = []

    def handler(sock: PaidSocket) -> None:
        assert sock.recv(2) == b"go"
        with path.open("rb") as file:
            try:
                sock.sendfile(file)
            except DTPError as exc:
                outcome.append(exc)
            assert 90 * 1024 < file.tell() < 200 * 1024  # left after what was sent

    got = 0
    errors: list[DTPError] = []
    with (
        dtp.socket.serve(
            world.host_id,
            PORT,
            handler,
            ledger=world.ledger,
            identity=SERVER,
            receipts=world.receipts,
            policy=STINGY,
        ),
        dtp.socket.create_connection(
            f"dtp://{world.host_id}:{PORT}",
            timeout=20,
            ledger=world.ledger,
            identity=CLIENT,
            deposit=SLA.min_deposit,
            metering=UNPAID,
        ) as sock,
    ):
        sock.sendall(b"go")
        try:
            while data := sock.recv(1 << 16):
                got += len(data)
        except DTPError as exc:
            errors.append(exc)
    assert fee(SLA, got + 2, 1) <= ALLOWANCE + 1
    assert got > 90 * 1024
    assert len(errors) == 1 and isinstance(errors[0], PaymentRequired)
    # the handler's thread raises just after the server closed the connection, maybe
    # after the client saw the close (close() does not wait for handlers)
    assert wait_for(lambda: len(outcome) == 1, 30)
    assert isinstance(outcome[0], PaymentRequired)


def test_paid_sendfile_sends_a_range_and_checks_its_arguments(world: World) -> None:
    """A paying client gets ``count`` bytes from ``offset``; nonsense arguments raise
    as DTPSocket.sendfile's do."""
    path = world.tmp / "small.bin"
    path.write_bytes(bytes(range(256)) * 64)
    results: list[object] = []
    done = threading.Event()

    def handler(sock: PaidSocket) -> None:
        try:
            assert sock.recv(2) == b"go"
            with path.open("rb") as file:
                for bad in ({"offset": -1}, {"count": 0}):
                    with pytest.raises(ValueError):
                        sock.sendfile(file, **bad)  # type: ignore[arg-type]
                for bad_type in ({"count": 1.5}, {"offset": 1.5}):
                    with pytest.raises(TypeError):
                        sock.sendfile(file, **bad_type)  # type: ignore[arg-type]
                results.append(sock.sendfile(file, 100, 1000))
                results.append(file.tell())
            sock.shutdown(dtp.socket.SHUT_WR)
            sock.recv(1)
        finally:
            done.set()

    with (
        dtp.socket.serve(
            world.host_id,
            PORT,
            handler,
            ledger=world.ledger,
            identity=SERVER,
            receipts=world.receipts,
        ),
        dtp.socket.create_connection(
            f"dtp://{world.host_id}:{PORT}",
            timeout=10,
            ledger=world.ledger,
            identity=CLIENT,
            deposit=SLA.min_deposit,
        ) as sock,
    ):
        sock.sendall(b"go")
        data = b""
        while chunk := sock.recv(1 << 16):
            data += chunk
        sock.shutdown(dtp.socket.SHUT_WR)
        assert done.wait(10)
    assert data == path.read_bytes()[100:1100]
    assert results == [1000, 1100]
