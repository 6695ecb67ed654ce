"""The connection limits a Host publishes (``Firewall.max_connections_per_client``,
``Service.max_connections``) are enforced by the host's asyncio server against the DTP
connections it serves at that moment; the ledger counts none, so that the opens of a
busy host never wait on one another on Sui (docs/escrow.md §2). A client beyond a limit
is refused at its handshake with ``host::EMaxConnections`` (ConnectionLimitReached at the
client); the blocking server's twin is tests/hostid/test_refused_before_money_moves.py.

A real LocalLedger file, a real dtp.aio server on TCP, real clients connecting by host ID."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import dtp.aio
from dtp.errors import ConnectionLimitReached
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import ConnectionState, EventFilter, Sla
from dtp.ledger.local import LocalLedger
from tests.support.ledger_server import identity_from_seed

PORT = 443
SLA = Sla(10, 5, 1000)
SERVER = identity_from_seed(0x81)
ALICE, BOB, CAROL = identity_from_seed(0x82), identity_from_seed(0x83), identity_from_seed(0x84)

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


@dataclass
class World:
    ledger: LocalLedger
    server_ledger: LocalLedger
    host_id: str

    async def connect(self, client: HostIdentity) -> Streams:
        """A DTP connection of ``client`` to the host's service, checked to be served."""
        reader, writer = await dtp.aio.open_connection(
            f"dtp://{self.host_id}:{PORT}", ledger=self.ledger, identity=client
        )
        await self.served(reader, writer)
        return reader, writer

    async def served(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ping")
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(4), 10) == b"ping"

    async def refused(self, client: HostIdentity) -> ConnectionLimitReached:
        """The refusal a new connection of ``client`` meets."""
        with pytest.raises(ConnectionLimitReached) as info:
            await dtp.aio.open_connection(
                f"dtp://{self.host_id}:{PORT}", ledger=self.ledger, identity=client
            )
        return info.value


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    path = tmp_path / "ledger.db"
    ledger, server_ledger = LocalLedger(path), LocalLedger(path)
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "echo", SLA)
    for client in (ALICE, BOB, CAROL):
        ledger.faucet(client.sui_address, 100_000)
    try:
        yield World(ledger, server_ledger, host_id)
    finally:
        ledger.close()
        server_ledger.close()


async def _serve(world: World) -> dtp.aio.DTPServer:
    server = await dtp.aio.start_server(
        _echo,
        "127.0.0.1",
        0,
        identity=SERVER,
        ledger=world.server_ledger,
        host_id=world.host_id,
        dtp_port=PORT,
        carriers=("tcp",),
    )
    port = server.sockets[0].getsockname()[1]
    world.ledger.set_endpoints(SERVER, world.host_id, [f"tcp://127.0.0.1:{port}"])
    return server


async def _close(*streams: Streams) -> None:
    for _, writer in streams:
        writer.close()
        await writer.wait_closed()


async def _served_again(
    world: World, server: dtp.aio.DTPServer, client: HostIdentity, serving: int
) -> Streams:
    """A connection of ``client`` once the server has let the ended ones go (it serves
    ``serving`` connections): one connect, one ledger connection. (Connecting until
    served opened a ledger connection at each refusal, each one more open to count.)"""
    for _ in range(500):
        if len(server._serving) == serving:
            return await world.connect(client)
        await asyncio.sleep(0.01)
    raise AssertionError(f"the server still serves {len(server._serving)} connections")


def test_the_per_client_limit_counts_one_clients_live_connections(world: World) -> None:
    world.ledger.set_client_limits(SERVER, world.host_id, 1, 0, 0)

    async def main() -> None:
        server = await _serve(world)
        try:
            alice = await world.connect(ALICE)
            refusal = await world.refused(ALICE)
            assert refusal.name == "EMaxConnections" and refusal.module == "host"
            assert isinstance(refusal, ConnectionRefusedError)
            # another client is not counted against Alice's limit
            bob = await world.connect(BOB)
            await world.served(*alice)  # (the first one is served on)
            await _close(alice)
            # Alice's connection ended: her place is free again
            again = await _served_again(world, server, ALICE, serving=1)  # (Bob's)
            await _close(again, bob)
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())
    # the ledger counted nothing: every open landed (the refused one too), and each
    # was half-closed by its client as it left (the refused one's deposit comes back
    # after the half-close timeout, as any refused connection's)
    opened, _ = world.ledger.events(filter=EventFilter(type="ConnectionOpened"))
    assert [e["client"] for e in opened] == [c.sui_address for c in (ALICE, ALICE, BOB, ALICE)]
    for event in opened:
        tc = world.ledger.get_connection(event["connection"])
        assert tc.state is ConnectionState.HALF_CLOSED and tc.half_closed_by == event["client"]


def test_the_per_service_limit_counts_every_clients_connections_and_follows_the_ledger(
    world: World,
) -> None:
    world.ledger.update_service(SERVER, world.host_id, PORT, SLA, 2)

    async def main() -> None:
        server = await _serve(world)
        try:
            alice, bob = await world.connect(ALICE), await world.connect(BOB)
            refusal = await world.refused(CAROL)
            assert refusal.name == "EMaxConnections" and "serves 2 of 2" in str(refusal)
            # the host raises its limit on the ledger: the next admission reads it
            world.ledger.update_service(SERVER, world.host_id, PORT, SLA, 3)
            carol = await world.connect(CAROL)
            await _close(alice, bob, carol)
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())
