"""``create_server(ledger=..., settle_on_close=True)`` (and the asyncio ``start_server``):
an unpaid server admitting through the ledger closes and settles each client's ledger
connection as its DTP connection ends. The client is refunded its whole deposit at
once (without the option it waits out the 10-minute half-close timeout), and a client
allowed one connection at a time is served the next one straight away: the host's
admission counts the connections it serves, not those Open on the ledger
(docs/escrow.md §2)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.hostid._served import reservations_of
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import ConnectionState, Sla
from dtp.ledger.local import LocalLedger
from dtp.protocol.connection import ConnectionConfig
from dtp.transport._hooks import PeerInfo
from dtp.transport.asyncio._server import DTPServer as AsyncioTransportServer
from dtp.transport.blocking._server import DTPServer as BlockingTransportServer
from tests.support.polling import wait_for

SERVER = HostIdentity.generate()
CLIENT = HostIdentity.generate()
PORT = 443
DEPOSIT = 1000


@dataclass
class World:
    ledger: LocalLedger
    host: str
    cap: str

    def open(self) -> tuple[str, ConnectionConfig]:
        opened = self.ledger.open_connection(CLIENT, self.host, PORT, self.cap, DEPOSIT)
        config = ConnectionConfig(
            identity=CLIENT,
            is_client=True,
            connection_id=bytes.fromhex(opened.connection_id[2:]),
            port=PORT,
        )
        return opened.connection_id, config

    def settled(self, cid: str) -> bool:
        return self.ledger.get_connection(cid).settled


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    ledger = LocalLedger(tmp_path / "ledger.db")
    host = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host, PORT, "echo", Sla(10, 5, DEPOSIT))
    ledger.set_client_limits(SERVER, host, 1, 0, 0)  # one connection per client
    ledger.faucet(CLIENT.sui_address, 100_000)
    cap = ledger.create_spending_cap(CLIENT, 10**6)
    try:
        yield World(ledger, host, cap)
    finally:
        ledger.close()


def _echo(sock: dtp.socket.DTPSocket) -> None:
    while data := sock.recv(65536):
        sock.sendall(data)


@pytest.fixture
def server(world: World) -> Iterator[dtp.socket.DTPServer]:
    srv = dtp.socket.create_server(
        ("127.0.0.1", 0),
        identity=SERVER,
        ledger=world.ledger,
        host_id=world.host,
        port=PORT,
        settle_on_close=True,
    )
    thread = threading.Thread(target=srv.serve_forever, args=(_echo,), daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.close()
        thread.join(10)
        assert srv.wait_settled(10)


def _roundtrip(server: dtp.socket.DTPServer, config: ConnectionConfig, data: bytes) -> None:
    with dtp.socket.create_connection(
        server.address, timeout=10, server_key=SERVER.noise_public, identity=CLIENT, config=config
    ) as sock:
        sock.sendall(data)
        assert sock.recv(len(data)) == data


def test_the_ledger_connection_is_settled_and_refunded_as_the_dtp_connection_ends(
    world: World, server: dtp.socket.DTPServer
) -> None:
    cid, config = world.open()
    balance = world.ledger.balance(CLIENT.sui_address)
    _roundtrip(server, config, b"hello")
    assert wait_for(lambda: world.settled(cid))
    tc = world.ledger.get_connection(cid)
    assert tc.state != ConnectionState.OPEN
    escrow = world.ledger.get_escrow(tc.escrow)
    assert (escrow.claimed, escrow.refunded) == (0, DEPOSIT)
    assert world.ledger.balance(CLIENT.sui_address) == balance + DEPOSIT
    assert any(settled == cid for settled, _ in server._serving.settlements)
    # the limit of one counts served connections: the next one is served
    cid2, config2 = world.open()
    _roundtrip(server, config2, b"again")
    assert wait_for(lambda: world.settled(cid2))


def test_a_settled_ledger_connection_is_not_served_again(
    world: World, server: dtp.socket.DTPServer
) -> None:
    cid, config = world.open()
    _roundtrip(server, config, b"x")
    assert wait_for(lambda: world.settled(cid))
    with pytest.raises(ConnectionError, match="not Open"):
        _roundtrip(server, config, b"y")


def test_without_the_option_the_ledger_connection_stays_open(world: World) -> None:
    srv = dtp.socket.create_server(
        ("127.0.0.1", 0), identity=SERVER, ledger=world.ledger, host_id=world.host, port=PORT
    )
    thread = threading.Thread(target=srv.serve_forever, args=(_echo,), daemon=True)
    thread.start()
    try:
        cid, config = world.open()
        _roundtrip(srv, config, b"x")
        assert wait_for(lambda: len(srv._serving) == 0)
        assert srv.wait_settled(0)
        assert world.ledger.get_connection(cid).state == ConnectionState.OPEN
    finally:
        srv.close()
        thread.join(10)


def test_settle_on_close_needs_ledger_admission() -> None:
    with pytest.raises(ValueError, match="settle_on_close"):
        dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER, settle_on_close=True)

    async def start() -> None:
        async def cb(reader: dtp.aio.StreamReader, writer: dtp.aio.StreamWriter) -> None:
            writer.close()

        await dtp.aio.start_server(cb, "127.0.0.1", 0, identity=SERVER, settle_on_close=True)

    with pytest.raises(ValueError, match="settle_on_close"):
        asyncio.run(start())


def test_only_a_hook_with_reservations_may_settle_on_close() -> None:
    def admit(peer: PeerInfo) -> bool:
        return True

    assert reservations_of(admit, SERVER, False) is None
    assert reservations_of(None, SERVER, False) is None
    with pytest.raises(ValueError, match="settle_on_close"):
        reservations_of(admit, SERVER, True)
    made: list[tuple[HostIdentity, bool]] = []

    class Counting:
        def __call__(self, peer: PeerInfo) -> bool:
            return True

        def reservations(self, identity: HostIdentity, settle: bool) -> Any:
            made.append((identity, settle))
            return "theirs"

    assert reservations_of(Counting(), SERVER, True) == "theirs"
    assert made == [(SERVER, True)]


def test_settling_is_the_host_id_servers_not_the_transports() -> None:
    """Settlement is a ledger concern: the transport's servers take no
    ``settle_on_close`` (a TypeError naming it, before anything listens) and have no
    ``wait_settled``; the host-ID servers (dtp.socket's, dtp.aio's) have both."""
    config = ConnectionConfig(identity=SERVER, is_client=False)
    with pytest.raises(TypeError, match="settle_on_close"):
        BlockingTransportServer(("127.0.0.1", 0), SERVER, settle_on_close=True)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="settle_on_close"):
        AsyncioTransportServer(_refuse, SERVER, None, config, settle_on_close=True)  # type: ignore[call-arg]
    assert not hasattr(BlockingTransportServer, "wait_settled")
    assert not hasattr(AsyncioTransportServer, "wait_settled")
    with dtp.socket.DTPServer(("127.0.0.1", 0), SERVER) as server:
        assert server.wait_settled(0)  # (nothing to settle without ledger admission)

    async def unsettled() -> bool:
        aio_server = dtp.aio.DTPServer(_refuse, SERVER, None, config)
        return await aio_server.wait_settled(0)

    assert asyncio.run(unsettled())


async def _refuse(reader: dtp.aio.StreamReader, writer: dtp.aio.StreamWriter) -> None:
    writer.close()


def test_the_asyncio_server_settles_on_close(world: World) -> None:
    async def main() -> None:
        async def echo(reader: dtp.aio.StreamReader, writer: dtp.aio.StreamWriter) -> None:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()

        srv = await dtp.aio.start_server(
            echo,
            "127.0.0.1",
            0,
            identity=SERVER,
            ledger=world.ledger,
            host_id=world.host,
            dtp_port=PORT,
            settle_on_close=True,
        )
        try:
            host, port = srv.sockets[0].getsockname()[:2]
            for data in (b"first", b"second"):  # the second only once the first settled
                cid, config = await asyncio.to_thread(world.open)
                reader, writer = await dtp.aio.open_connection(
                    host,
                    port,
                    server_key=SERVER.noise_public,
                    identity=CLIENT,
                    config=config,
                    timeout=10,
                )
                writer.write(data)
                assert await reader.readexactly(len(data)) == data
                writer.close()
                await writer.wait_closed()
                for _ in range(500):
                    if await asyncio.to_thread(world.settled, cid):
                        break
                    await asyncio.sleep(0.01)
                assert await asyncio.to_thread(world.settled, cid)
            assert await srv.wait_settled(10)
        finally:
            srv.close()
            await srv.wait_closed()

    asyncio.run(main())
