"""Connecting by host ID: refusals at admission, each a typed
error at the client before any money moves (docs/escrow.md §6.1)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import dtp.socket
from dtp.errors import ConnectionLimitReached, HandshakeError, InvalidArgument
from dtp.hostid._admission import LedgerAdmission
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import ConnectionState, EventFilter, Sla
from dtp.ledger.local import LocalLedger, rules
from tests.support.polling import wait_for

PORT = 443


def ident(seed: int) -> HostIdentity:
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


SERVER, CLIENT = ident(0x71), ident(0x72)


def echo(sock: dtp.socket.DTPSocket) -> None:
    while data := sock.recv(65536):
        sock.sendall(data)


@dataclass
class World:
    path: Path
    ledger: LocalLedger
    host_id: str


@pytest.fixture(params=["tcp", "ledger"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    """A served host reached over ``request.param``, and a funded client."""
    path = tmp_path / "ledger.db"
    ledger = LocalLedger(path)
    server_ledger = LocalLedger(path)
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "echo", Sla(10, 5, 1000))
    tcp = request.param == "tcp"
    server = dtp.socket.create_server(
        ("127.0.0.1", 0) if tcp else None,
        identity=SERVER,
        ledger=server_ledger,
        host_id=host_id,
        port=PORT,
    )
    if tcp:
        ledger.set_endpoints(SERVER, host_id, [f"tcp://127.0.0.1:{server.address[1]}"])
    ledger.faucet(CLIENT.sui_address, 100_000)
    thread = threading.Thread(target=server.serve_forever, args=(echo,), daemon=True)
    thread.start()
    try:
        yield World(path, ledger, host_id)
    finally:
        server.close()
        thread.join(5)
        ledger.close()
        server_ledger.close()


def publish_noise_key(world: World, key: bytes) -> None:
    """Put ``key`` in the Host as a host published before the ledger checked keys (or
    on an older package) would have it: the ledger itself refuses it now."""
    with sqlite3.connect(world.path) as db:
        (text,) = db.execute("SELECT data FROM objects WHERE id = ?", (world.host_id,)).fetchone()
        data = rules.from_json(text)
        data["noise_static_key"] = key
        db.execute("UPDATE objects SET data = ? WHERE id = ?", (rules.to_json(data), world.host_id))
    db.close()


@pytest.mark.parametrize("key", [bytes(32), b"\x01" + bytes(31)], ids=["zero", "one"])
def test_a_host_key_no_handshake_can_use_is_refused_before_money_moves(
    world: World, key: bytes
) -> None:
    publish_noise_key(world, key)
    before = world.ledger.dump()
    with pytest.raises(HandshakeError, match="Noise key no handshake can use"):
        dtp.socket.create_connection(
            f"dtp://{world.host_id}:{PORT}", timeout=10, ledger=world.ledger, identity=CLIENT
        )
    # no deposit locked in an escrow for the half-close timeout, no cap made for nothing
    assert world.ledger.dump() == before
    assert world.ledger.balance(CLIENT.sui_address) == 100_000


def test_the_asyncio_client_refuses_it_too(world: World) -> None:
    import asyncio

    import dtp.aio

    publish_noise_key(world, bytes(32))
    before = world.ledger.dump()

    async def main() -> None:
        with pytest.raises(HandshakeError, match="Noise key no handshake can use"):
            await dtp.aio.open_connection(
                f"dtp://{world.host_id}:{PORT}", ledger=world.ledger, identity=CLIENT
            )

    asyncio.run(main())
    assert world.ledger.dump() == before


@pytest.mark.parametrize("limit", ["per_client", "per_service"])
def test_a_connection_beyond_a_limit_is_refused_by_the_hosts_admission(
    world: World, limit: str
) -> None:
    """The Host's connection limits are enforced by the host's admission, against the
    DTP connections it serves at that moment (the ledger counts none: docs/escrow.md
    §2). A second connection while the first is served is refused at its handshake with
    EMaxConnections, which the client raises as ConnectionLimitReached; its ledger
    connection is half-closed (its deposit comes back after the timeout, as any refused
    connection's). Once the first has ended, a new one is served."""
    if limit == "per_client":
        world.ledger.set_client_limits(SERVER, world.host_id, 1, 0, 0)
    else:
        world.ledger.update_service(SERVER, world.host_id, PORT, Sla(10, 5, 1000), 1)
    address = f"dtp://{world.host_id}:{PORT}"
    with dtp.socket.create_connection(
        address, timeout=10, ledger=world.ledger, identity=CLIENT
    ) as first:
        first.sendall(b"one")
        assert first.recv(3) == b"one"
        with pytest.raises(ConnectionLimitReached) as info:
            dtp.socket.create_connection(address, timeout=10, ledger=world.ledger, identity=CLIENT)
        assert info.value.name == "EMaxConnections" and info.value.module == "host"
        assert isinstance(info.value, ConnectionRefusedError)  # a refusal, as a socket's
        opened = world.ledger.events(filter=EventFilter(type="ConnectionOpened"))[0]
        refused = world.ledger.get_connection(opened[-1]["connection"])
        assert refused.state is ConnectionState.HALF_CLOSED
        assert refused.half_closed_by == CLIENT.sui_address
        first.sendall(b"still")  # the first one is served on
        assert first.recv(5) == b"still"
    # the first one ended: its place is free once the server let it go (live
    # connections are counted, not the ledger's, which counted it Open until settled)

    def served_again() -> bool:
        try:
            with dtp.socket.create_connection(
                address, timeout=10, ledger=world.ledger, identity=CLIENT
            ) as again:
                again.sendall(b"two")
                return bool(again.recv(3) == b"two")
        except ConnectionLimitReached:
            return False

    assert wait_for(served_again, timeout=5, interval=0.05)


@pytest.mark.parametrize("port", ["443", 443.0, True, -1, 65536])
def test_a_server_port_that_is_not_a_u16_is_refused_when_made(tmp_path: Path, port: object) -> None:
    """create_server(port="443") is refused when made, not a server refusing every
    client with "this server serves port 443, not 443" (a str never equals the port a
    client names)."""
    with LocalLedger(tmp_path / "ledger.db") as ledger:
        host_id = ledger.create_host(SERVER, SERVER.noise_public)
        with pytest.raises(InvalidArgument, match="u16"):
            LedgerAdmission(ledger, host_id, port)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match="u16"):
            dtp.socket.create_server(
                ("127.0.0.1", 0), identity=SERVER, ledger=ledger, host_id=host_id, port=port
            )
