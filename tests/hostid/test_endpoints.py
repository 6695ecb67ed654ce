"""A host may publish several TCP endpoints (IPv4 and IPv6, a LAN and a public
address), not all reachable from every client. Connecting by host ID tries them in
published order until one answers, as ``socket.create_connection`` tries a name's
addresses; before, only the first was tried, and a host whose first endpoint was down
could not be reached at all. When none answers, the error names them all and no
connection was opened on the ledger (the open waits for the carrier)."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import ConnectionLost
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import EventFilter, Sla
from dtp.ledger.local import LocalLedger

SERVER = HostIdentity.generate()
CLIENT = HostIdentity.generate()
PORT = 80
DEPOSIT = 1000


def _dead_port() -> int:
    """A local port nothing listens on (connecting is refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class World:
    ledger: LocalLedger
    host: str
    server: dtp.socket.DTPServer

    @property
    def address(self) -> str:
        return f"dtp://{self.host}:{PORT}"

    def publish(self, *endpoints: tuple[str, int]) -> None:
        self.ledger.set_endpoints(
            SERVER, self.host, [f"tcp://{h}:{p}".encode() for h, p in endpoints]
        )

    def opens(self) -> int:
        """Connections opened on the ledger so far."""
        return len(self.ledger.events(filter=EventFilter(type="ConnectionOpened"))[0])


def _echo(sock: dtp.socket.DTPSocket) -> None:
    while data := sock.recv(65536):
        sock.sendall(data)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    ledger = LocalLedger(tmp_path / "ledger.db")
    host = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host, PORT, "echo", Sla(0, 0, DEPOSIT))
    ledger.faucet(CLIENT.sui_address, 1_000_000)
    server = dtp.socket.create_server(
        ("127.0.0.1", 0), identity=SERVER, ledger=ledger, host_id=host, port=PORT
    )
    thread = threading.Thread(target=server.serve_forever, args=(_echo,), daemon=True)
    thread.start()
    try:
        yield World(ledger, host, server)
    finally:
        server.close()
        thread.join(10)
        ledger.close()


def test_blocking_the_next_endpoint_is_tried_when_the_first_is_down(world: World) -> None:
    world.publish(("127.0.0.1", _dead_port()), world.server.address)
    with dtp.socket.create_connection(
        world.address, ledger=world.ledger, identity=CLIENT, deposit=DEPOSIT, timeout=10
    ) as sock:
        sock.sendall(b"ping")
        assert sock.recv(4) == b"ping"
        assert sock.getpeername() == world.server.address


def test_asyncio_the_next_endpoint_is_tried_when_the_first_is_down(world: World) -> None:
    world.publish(("127.0.0.1", _dead_port()), world.server.address)

    async def main() -> None:
        reader, writer = await dtp.aio.open_connection(
            world.address, ledger=world.ledger, identity=CLIENT, deposit=DEPOSIT, timeout=10
        )
        try:
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            assert writer.get_extra_info("peername")[:2] == world.server.address
        finally:
            writer.close()
            await writer.wait_closed()

    asyncio.run(main())


def test_when_no_endpoint_answers_the_error_names_them_all(world: World) -> None:
    dead = [("127.0.0.1", _dead_port()), ("127.0.0.1", _dead_port())]
    world.publish(*dead)
    with pytest.raises(ConnectionLost) as lost:
        dtp.socket.create_connection(
            world.address, ledger=world.ledger, identity=CLIENT, deposit=DEPOSIT, timeout=5
        )
    for host, port in dead:
        assert f"{host}:{port}" in str(lost.value)
    assert world.opens() == 0  # the open never went out

    async def main() -> None:
        await dtp.aio.open_connection(
            world.address, ledger=world.ledger, identity=CLIENT, deposit=DEPOSIT, timeout=5
        )

    with pytest.raises(ConnectionLost, match="no endpoint answered"):
        asyncio.run(main())
    assert world.opens() == 0
