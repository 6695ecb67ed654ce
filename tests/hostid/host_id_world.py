"""A host on a LocalLedger file with a published TCP endpoint, two echo services and funded
clients (the world fixture), and a raw connection naming any connection ID and port in
its handshake, for the tests of connecting by host ID."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import dtp.aio
import dtp.socket
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.protocol.connection import ConnectionConfig

SLA = Sla(10, 5, 1000)
PORT = 443
OTHER_PORT = 444


def ident(seed: int) -> HostIdentity:
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


SERVER, CLIENT, MALLORY = ident(0x41), ident(0x42), ident(0x43)


def echo(sock: dtp.socket.DTPSocket) -> None:
    while data := sock.recv(65536):
        sock.sendall(data)


@dataclass
class World:
    ledger: LocalLedger
    host_id: str
    server: dtp.socket.DTPServer

    def address(self, port: int = PORT) -> str:
        return f"dtp://{self.host_id}:{port}"

    def balances(self) -> tuple[int, int]:
        return (
            self.ledger.balance(CLIENT.sui_address),
            self.ledger.balance(MALLORY.sui_address),
        )

    def conserved(self) -> bool:
        a = self.ledger.audit()
        return a["minted"] == a["balances"] + a["escrows"] + a["broadcasts"]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    ledger = LocalLedger(tmp_path / "ledger.db")
    server_ledger = LocalLedger(tmp_path / "ledger.db")  # the host's own view of the file
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    server = dtp.socket.create_server(
        ("127.0.0.1", 0), identity=SERVER, ledger=server_ledger, host_id=host_id, port=PORT
    )
    ledger.set_endpoints(SERVER, host_id, [f"tcp://127.0.0.1:{server.address[1]}"])
    ledger.add_service(SERVER, host_id, PORT, "echo", SLA)
    ledger.add_service(SERVER, host_id, OTHER_PORT, "echo", SLA)
    ledger.faucet(CLIENT.sui_address, 100_000)
    ledger.faucet(MALLORY.sui_address, 100_000)
    thread = threading.Thread(target=server.serve_forever, args=(echo,), daemon=True)
    thread.start()
    try:
        yield World(ledger, host_id, server)
    finally:
        server.close()
        thread.join(5)
        ledger.close()
        server_ledger.close()


def connect_raw(world: World, signer: HostIdentity, cid: str, port: int) -> None:
    """Connect straight to the endpoint, naming ``cid`` and ``port`` in the handshake."""
    cfg = ConnectionConfig(
        identity=signer, is_client=True, connection_id=bytes.fromhex(cid[2:]), port=port
    )
    with dtp.socket.create_connection(
        world.server.address,
        timeout=10,
        server_key=SERVER.noise_public,
        identity=signer,
        config=cfg,
    ) as sock:
        sock.sendall(b"x")
        sock.recv(10)


#: The two drivers a client connects by host ID with: dtp.socket and dtp.aio.
APIS = ("blocking", "asyncio")


def echo_by_host_id(
    api: str,
    world: World,
    cap: str,
    payload: bytes,
    while_open: Callable[[str, str | None], None] = lambda cid, escrow: None,
) -> None:
    """Connect to ``world``'s echo service as CLIENT on ``api``'s driver, paying from
    ``cap``; echo ``payload``, call ``while_open(connection_id, escrow_id)`` and close.
    What the connect raises, it raises."""
    if api == "blocking":
        with dtp.socket.create_connection(
            world.address(), timeout=10, ledger=world.ledger, identity=CLIENT, cap_id=cap
        ) as sock:
            sock.sendall(payload)
            assert sock.recv(100) == payload
            while_open(sock.connection_id or "", sock.escrow_id)
        return

    async def main() -> None:
        reader, writer = await dtp.aio.open_connection(
            world.address(), timeout=10, ledger=world.ledger, identity=CLIENT, cap_id=cap
        )
        writer.write(payload)
        await writer.drain()
        assert await reader.readexactly(len(payload)) == payload
        while_open(writer.connection_id or "", writer.escrow_id)
        writer.close()
        await writer.wait_closed()

    asyncio.run(main())
