"""Connections kept by their caller (dtp/hostid/_asyncio.py: open_kept_connection, and
dtp/hostid/_connect.py: prepare_reconnection): a connect refused after its open landed
leaves the ledger connection Open for its keeper -- the services daemon's forwards --
which connects on it again later, writing nothing to the ledger, instead of opening
another deposit (docs/daemon.md, "Tunnels"). Without a keeper, the refused connection
is half-closed as ``dtp.aio.open_connection`` leaves it.

A real DTP server on 127.0.0.1 whose admission refuses, then accepts; a LocalLedger
file."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

import dtp.aio
from dtp.errors import ConnectionRefused, ConnectionStateError, InvalidArgument, NotAuthorized
from dtp.hostid._address import HostAddress
from dtp.hostid._admission import PeerInfo
from dtp.hostid._asyncio import open_kept_connection
from dtp.hostid._connect import prepare_reconnection
from dtp.ledger._connections import find_connections
from dtp.ledger._objects import ConnectionState, EventFilter, Sla
from dtp.ledger.local import LocalLedger
from dtp.protocol.connection import ConnectionConfig
from tests.support.paid_inprocess import ident

SERVER, CLIENT, OTHER = ident(0x81), ident(0x82), ident(0x83)
SLA = Sla(10, 5, 1000)
DEPOSIT = 40_000
FUNDS = 1_000_000


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[LocalLedger]:
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    for who in (CLIENT, OTHER):
        ledger.faucet(who.sui_address, FUNDS)
    try:
        yield ledger
    finally:
        ledger.close()


class Server:
    """A DTP server whose admission refuses while ``refusing``; it echoes on the first
    stream, and keeps the ledger connection of every DTP connection it served."""

    def __init__(self) -> None:
        self.refusing = True
        self.served: list[str] = []

    def admit(self, peer: PeerInfo) -> str | None:
        return "not now" if self.refusing else None

    async def handle(
        self, reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter
    ) -> None:
        assert writer.peer_connection_id is not None
        self.served.append(writer.peer_connection_id)
        with contextlib.suppress(Exception):
            while data := await reader.read(1 << 16):
                writer.write(data)
                await writer.drain()


async def _serving(ledger: LocalLedger, server: Server) -> tuple[dtp.aio.DTPServer, HostAddress]:
    config = ConnectionConfig(identity=SERVER, is_client=False)
    dtp_server = await dtp.aio.start_server(
        server.handle, "127.0.0.1", 0, identity=SERVER, config=config, admit=server.admit
    )
    port = dtp_server.address[1]
    host = await asyncio.to_thread(
        ledger.create_host, SERVER, SERVER.noise_public, [f"tcp://127.0.0.1:{port}"]
    )
    await asyncio.to_thread(ledger.add_service, SERVER, host, 80, "raw", SLA)
    await asyncio.to_thread(ledger.add_service, SERVER, host, 81, "raw", SLA)
    return dtp_server, HostAddress.parse(f"dtp://{host}:80")


def test_a_refused_connect_is_left_open_for_its_keeper_who_connects_on_it_again(
    ledger: LocalLedger,
) -> None:
    """Refused at the handshake, the kept connection stays Open, its deposit in escrow;
    a connect on it once the server accepts is served, with no transaction of the
    client's: the same ledger connection, the same deposit."""

    async def run() -> None:
        server = Server()
        dtp_server, address = await _serving(ledger, server)
        try:
            told: list[str | None] = []
            with pytest.raises(ConnectionRefused, match="not now"):
                await open_kept_connection(
                    address,
                    ledger=ledger,
                    identity=CLIENT,
                    on_open=lambda cap, cid: told.append(cid),
                    deposit=DEPOSIT,
                    timeout=5,
                )
            cid = told[-1]
            assert cid is not None
            assert ledger.get_connection(cid).state == ConnectionState.OPEN
            mine = EventFilter(sender=CLIENT.sui_address)
            before = len(ledger.events(filter=mine)[0])
            with pytest.raises(ConnectionRefused):  # (again: still refused, still Open)
                await open_kept_connection(
                    address, ledger=ledger, identity=CLIENT, on_open=None, reconnect=cid, timeout=5
                )
            assert ledger.get_connection(cid).state == ConnectionState.OPEN
            server.refusing = False
            reader, writer = await open_kept_connection(
                address, ledger=ledger, identity=CLIENT, on_open=None, reconnect=cid, timeout=5
            )
            assert (writer.connection_id, server.served) == (cid, [cid])
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.readexactly(4), 5) == b"ping"
            writer.close()
            assert len(ledger.events(filter=mine)[0]) == before  # nothing written
            assert ledger.balance(CLIENT.sui_address) == FUNDS - DEPOSIT
        finally:
            dtp_server.close()

    asyncio.run(asyncio.wait_for(run(), 30))


def test_a_refused_connect_nobody_keeps_is_half_closed(ledger: LocalLedger) -> None:
    async def run() -> None:
        dtp_server, address = await _serving(ledger, Server())
        try:
            with pytest.raises(ConnectionRefused):
                await open_kept_connection(
                    address,
                    ledger=ledger,
                    identity=CLIENT,
                    on_open=None,
                    deposit=DEPOSIT,
                    timeout=5,
                )
            (report,) = find_connections(ledger, client=CLIENT.sui_address).reports
            assert report.connection.state == ConnectionState.HALF_CLOSED
        finally:
            dtp_server.close()

    asyncio.run(asyncio.wait_for(run(), 30))


def test_a_reconnection_only_on_an_open_connection_of_ours_to_that_service(
    ledger: LocalLedger,
) -> None:
    """Another client's connection, one to another port of the host, one no longer
    Open: each refused before anything goes on the wire, nothing written."""
    host = ledger.create_host(SERVER, SERVER.noise_public, ["tcp://127.0.0.1:9"])
    ledger.add_service(SERVER, host, 80, "raw", SLA)
    ledger.add_service(SERVER, host, 81, "raw", SLA)
    address = HostAddress.parse(f"dtp://{host}:80")

    def opened(who: object = CLIENT, port: int = 80) -> str:
        assert who in (CLIENT, OTHER)
        identity = CLIENT if who is CLIENT else OTHER
        cap = ledger.create_spending_cap(identity, DEPOSIT)
        return ledger.open_connection(identity, host, port, cap, DEPOSIT).connection_id

    mine = opened()
    prepared = prepare_reconnection(ledger, address, CLIENT, mine)
    tc = ledger.get_connection(mine)
    assert (prepared.connection_id, prepared.escrow_id, prepared.cap_id) == (
        mine,
        tc.escrow,
        tc.spending_cap,
    )
    assert prepared.config.connection_id == bytes.fromhex(mine[2:])
    assert prepared.config.server_static == SERVER.noise_public
    assert prepared.endpoint == ("127.0.0.1", 9) and prepared.journaled
    with pytest.raises(NotAuthorized):
        prepare_reconnection(ledger, address, CLIENT, opened(OTHER))
    with pytest.raises(InvalidArgument, match="not dtp://"):
        prepare_reconnection(ledger, address, CLIENT, opened(port=81))
    ledger.close_connection(CLIENT, mine)
    with pytest.raises(ConnectionStateError, match="Half"):
        prepare_reconnection(ledger, address, CLIENT, mine)
