"""Connecting by host ID: ``dtp://0x<host id>:<port>`` resolved on a LocalLedger, the
ledger pre-checks before money moves, and the server's ledger admission."""

from __future__ import annotations

import threading
from pathlib import Path

import msgpack
import pytest

import dtp.socket
from dtp.errors import (
    ConnectionRefused,
    FirewallDenied,
    HandshakeError,
    InsufficientFunds,
    ObjectNotFound,
    ServiceNotFound,
)
from dtp.hostid._address import HostAddress
from dtp.hostid._admission import LedgerAdmission, PeerInfo
from dtp.hostid._connect import NoCarrierEndpoint, resolve_service, tcp_endpoints
from dtp.ledger._objects import ConnectionState, FirewallMode
from dtp.ledger.local import LocalLedger
from dtp.protocol.connection import _parse_params
from tests.hostid.host_id_world import (
    CLIENT,
    MALLORY,
    OTHER_PORT,
    PORT,
    SERVER,
    SLA,
    World,
    connect_raw,
    echo,
)
from tests.hostid.host_id_world import world as world  # the fixture

# -- the happy path ------------------------------------------------------------------------


def test_connect_by_host_id_echoes_and_pays(world: World) -> None:
    before = world.ledger.balance(CLIENT.sui_address)
    with dtp.socket.create_connection(
        world.address(), timeout=10, ledger=world.ledger, identity=CLIENT, deposit=5000
    ) as sock:
        sock.sendall(b"hello by host ID")
        assert sock.recv(100) == b"hello by host ID"
        assert sock.peer_static_key == SERVER.noise_public
        assert sock.connection_id is not None and sock.escrow_id is not None
        tc = world.ledger.get_connection(sock.connection_id)
        assert tc.client == CLIENT.sui_address and tc.port == PORT
        assert tc.state == ConnectionState.OPEN and tc.escrow == sock.escrow_id
        assert world.ledger.get_escrow(sock.escrow_id).balance == 5000
    assert world.ledger.balance(CLIENT.sui_address) == before - 5000
    assert world.conserved()


def test_host_address_object_default_deposit_and_given_cap(world: World) -> None:
    cap = world.ledger.create_spending_cap(CLIENT, 1_000_000)
    address = HostAddress(world.host_id, PORT)
    with dtp.socket.create_connection(
        address, timeout=10, ledger=world.ledger, identity=CLIENT, cap_id=cap
    ) as sock:
        sock.sendall(b"ping")
        assert sock.recv(10) == b"ping"
        assert sock.escrow_id is not None
        escrow = world.ledger.get_escrow(sock.escrow_id)
        assert escrow.balance == SLA.min_deposit and escrow.spending_cap == cap


def test_server_sees_connection_id_and_port(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "l.db")
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "echo", SLA)
    ledger.faucet(CLIENT.sui_address, 10_000)
    seen: list[PeerInfo] = []
    admission = LedgerAdmission(ledger, host_id, PORT)

    def admit(peer: PeerInfo) -> str | None:
        seen.append(peer)
        return admission(peer)

    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER, admit=admit) as server:
        ledger.set_endpoints(SERVER, host_id, [f"127.0.0.1:{server.address[1]}"])
        result: list[tuple[str | None, int | None]] = []

        def serve() -> None:
            sock, _ = server.accept(timeout=10)
            with sock:
                result.append((sock.peer_connection_id, sock.peer_port))
                echo(sock)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        with dtp.socket.create_connection(
            f"{host_id}:{PORT}", timeout=10, ledger=ledger, identity=CLIENT
        ) as sock:
            sock.sendall(b"a")
            assert sock.recv(1) == b"a"
            cid = sock.connection_id
        thread.join(10)
    assert result == [(cid, PORT)]
    assert seen[0].address == CLIENT.sui_address and seen[0].connection_id == cid
    ledger.close()


# -- client-side pre-checks: nothing moves ----------------------------------------------------


def test_unknown_host(world: World) -> None:
    with pytest.raises(ObjectNotFound):
        dtp.socket.create_connection(
            f"dtp://0x{'ab' * 32}:{PORT}", ledger=world.ledger, identity=CLIENT, deposit=5000
        )


def test_no_such_service(world: World) -> None:
    before = world.balances()
    with pytest.raises(ServiceNotFound) as info:
        dtp.socket.create_connection(
            world.address(9), ledger=world.ledger, identity=CLIENT, deposit=5000
        )
    assert info.value.name == "EServiceNotFound"
    assert world.balances() == before


def test_denied_client_moves_no_money(world: World) -> None:
    world.ledger.deny(SERVER, world.host_id, CLIENT.sui_address)
    before = world.balances()
    with pytest.raises(FirewallDenied):
        dtp.socket.create_connection(
            world.address(), ledger=world.ledger, identity=CLIENT, deposit=5000
        )
    assert world.balances() == before
    # allow-listed mode: not on the list is denied, and the deny list wins over allow
    world.ledger.set_firewall_mode(SERVER, world.host_id, int(FirewallMode.ALLOW_LISTED))
    world.ledger.allow(SERVER, world.host_id, CLIENT.sui_address)
    for who in (CLIENT, MALLORY):
        with pytest.raises(FirewallDenied):
            dtp.socket.create_connection(
                world.address(), ledger=world.ledger, identity=who, deposit=5000
            )
    assert world.balances() == before
    assert world.conserved()


def test_deposit_below_minimum(world: World) -> None:
    before = world.balances()
    with pytest.raises(InsufficientFunds) as info:
        dtp.socket.create_connection(
            world.address(), ledger=world.ledger, identity=CLIENT, deposit=SLA.min_deposit - 1
        )
    assert info.value.name == "EInsufficientDeposit"
    with pytest.raises(InsufficientFunds):
        dtp.socket.create_connection(
            world.address(), ledger=world.ledger, identity=CLIENT, deposit=10**9
        )
    assert world.balances() == before


def test_no_tcp_endpoint(world: World) -> None:
    world.ledger.set_endpoints(SERVER, world.host_id, ["quic://127.0.0.1:1"])
    before = world.balances()
    with pytest.raises(NoCarrierEndpoint, match="ledger carrier"):
        dtp.socket.create_connection(
            world.address(), ledger=world.ledger, identity=CLIENT, deposit=5000, carrier="tcp"
        )
    assert world.balances() == before


def test_tcp_endpoint_forms(world: World) -> None:
    world.ledger.set_endpoints(
        SERVER,
        world.host_id,
        [b"\xff", "udp://1.2.3.4:5", "tcp://[::1]:7", "10.0.0.1:8", "tcp://nope"],
    )
    host = world.ledger.get_host(world.host_id)
    assert tcp_endpoints(host) == [("::1", 7), ("10.0.0.1", 8)]


# -- server-side admission ----------------------------------------------------------------


def test_someone_elses_connection_id_is_refused(world: World) -> None:
    cap = world.ledger.create_spending_cap(CLIENT, 10**6)
    opened = world.ledger.open_connection(CLIENT, world.host_id, PORT, cap, 5000)
    with pytest.raises(ConnectionRefused, match="another client"):
        connect_raw(world, MALLORY, opened.connection_id, PORT)
    # the owner itself is admitted with the same ID
    connect_raw(world, CLIENT, opened.connection_id, PORT)
    assert world.server.refused == 1


def test_connection_id_for_another_port_is_refused(world: World) -> None:
    cap = world.ledger.create_spending_cap(CLIENT, 10**6)
    opened = world.ledger.open_connection(CLIENT, world.host_id, OTHER_PORT, cap, 5000)
    with pytest.raises(ConnectionRefused, match="port"):
        connect_raw(world, CLIENT, opened.connection_id, PORT)
    with pytest.raises(ConnectionRefused, match="serves port"):
        connect_raw(world, CLIENT, opened.connection_id, OTHER_PORT)


def test_refusals_unknown_closed_missing_and_firewall(world: World) -> None:
    with pytest.raises(ConnectionRefused, match="unknown connection"):
        connect_raw(world, CLIENT, "0x" + "cd" * 32, PORT)
    cap = world.ledger.create_spending_cap(CLIENT, 10**6)
    opened = world.ledger.open_connection(CLIENT, world.host_id, PORT, cap, 5000)
    world.ledger.deny(SERVER, world.host_id, CLIENT.sui_address)
    with pytest.raises(ConnectionRefused, match="firewall"):
        connect_raw(world, CLIENT, opened.connection_id, PORT)
    world.ledger.undeny(SERVER, world.host_id, CLIENT.sui_address)
    world.ledger.close_connection(CLIENT, opened.connection_id)
    with pytest.raises(ConnectionRefused, match="not Open"):
        connect_raw(world, CLIENT, opened.connection_id, PORT)
    with (
        pytest.raises(ConnectionRefused, match="no connection ID"),
        dtp.socket.create_connection(
            world.server.address, timeout=10, server_key=SERVER.noise_public, identity=CLIENT
        ) as sock,
    ):
        sock.recv(1)


def test_refused_after_open_closes_on_ledger(world: World) -> None:
    """A server that refuses: the client half-closes its ledger connection."""
    world.server.close()
    refusing = dtp.socket.create_server(
        ("127.0.0.1", 0), identity=SERVER, accept=lambda address: "closed for maintenance"
    )
    with refusing:
        world.ledger.set_endpoints(
            SERVER, world.host_id, [f"tcp://127.0.0.1:{refusing.address[1]}"]
        )
        with pytest.raises(ConnectionRefused, match="maintenance"):
            dtp.socket.create_connection(
                world.address(), timeout=10, ledger=world.ledger, identity=CLIENT, deposit=5000
            )
    events, _ = world.ledger.events()
    cid = [e for e in events if e.type.endswith("ConnectionOpened")][-1].fields["connection"]
    tc = world.ledger.get_connection(cid)
    assert tc.state == ConnectionState.HALF_CLOSED and tc.half_closed_by == CLIENT.sui_address
    assert world.conserved()


# -- transport parameters -------------------------------------------------------------------


BASE = {"v": 1, "md": 1, "msd": 1, "ms": 1, "it": 1}


def test_params_optional_and_validated() -> None:
    assert "cid" not in _parse_params(msgpack.packb(BASE))
    good = _parse_params(msgpack.packb({**BASE, "cid": b"\x01" * 32, "port": 443}))
    assert good["cid"] == b"\x01" * 32 and good["port"] == 443
    for bad in (
        {"cid": b"\x01" * 31},
        {"cid": "0x" + "01" * 32},
        {"port": -1},
        {"port": 70000},
        {"port": True},
        {"port": "443"},
    ):
        with pytest.raises(HandshakeError):
            _parse_params(msgpack.packb({**BASE, **bad}))


def test_create_connection_argument_checks(world: World) -> None:
    with pytest.raises(ValueError, match="ledger"):
        dtp.socket.create_connection(world.address(), identity=CLIENT)
    with pytest.raises(ValueError, match="identity"):
        dtp.socket.create_connection(world.address(), ledger=world.ledger)
    with pytest.raises(ValueError, match="server_key"):
        dtp.socket.create_connection(
            world.address(), ledger=world.ledger, identity=CLIENT, server_key=b"\x00" * 32
        )
    with pytest.raises(ValueError, match="DTP address"):
        dtp.socket.create_connection(world.server.address, ledger=world.ledger)
    with pytest.raises(ValueError, match="together"):
        dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER, ledger=world.ledger)


def test_asyncio_connect_by_host_id(world: World) -> None:
    import asyncio

    import dtp.aio

    async def main() -> None:
        before = world.ledger.balance(CLIENT.sui_address)
        reader, writer = await dtp.aio.open_connection(
            world.address(), ledger=world.ledger, identity=CLIENT, deposit=5000, timeout=10
        )
        writer.write(b"hello from asyncio")
        assert await reader.readexactly(18) == b"hello from asyncio"
        assert writer.connection_id is not None and writer.escrow_id is not None
        tc = world.ledger.get_connection(writer.connection_id)
        assert tc.client == CLIENT.sui_address and tc.escrow == writer.escrow_id
        writer.close()
        await writer.wait_closed()
        assert world.ledger.balance(CLIENT.sui_address) == before - 5000
        # the same early checks as the blocking API: no money moves on a refusal
        with pytest.raises(ServiceNotFound):
            await dtp.aio.open_connection(
                f"dtp://{world.host_id}:9", ledger=world.ledger, identity=CLIENT
            )
        assert world.ledger.balance(CLIENT.sui_address) == before - 5000
        with pytest.raises(ValueError, match="ledger"):
            await dtp.aio.open_connection(world.address())

    asyncio.run(main())
    assert world.conserved()


def test_asyncio_connect_by_host_id_takes_the_readers_line_limit(world: World) -> None:
    """``limit=`` reaches the readers of a connection by host ID as it does a plain
    one's (tests/transport/test_aio_stream_contract.py)."""
    import asyncio

    import dtp.aio

    async def main() -> None:
        reader, writer = await dtp.aio.open_connection(
            world.address(),
            ledger=world.ledger,
            identity=CLIENT,
            deposit=5000,
            limit=10,
            timeout=10,
        )
        writer.write(b"0123456789ab\nok\n")  # (echoed)
        with pytest.raises(ValueError):  # 12 bytes before the newline, over 10
            await asyncio.wait_for(reader.readline(), 10)
        assert await asyncio.wait_for(reader.readline(), 10) == b"ok\n"
        writer.close()
        await writer.wait_closed()

    asyncio.run(main())
    assert world.conserved()


def test_asyncio_server_ledger_admission(tmp_path: Path) -> None:
    """dtp.aio.start_server(ledger=, host_id=, dtp_port=) admits only a funded Open
    connection of this client to this port; a raw connect naming none is refused."""
    import asyncio

    import dtp.aio

    ledger = LocalLedger(tmp_path / "ledger.db")
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "echo", SLA)
    ledger.faucet(CLIENT.sui_address, 100_000)
    seen: list[str | None] = []

    async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        seen.append(writer.peer_address)
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def main() -> None:
        server = await dtp.aio.start_server(
            handle,
            "127.0.0.1",
            0,
            identity=SERVER,
            ledger=LocalLedger(tmp_path / "ledger.db"),
            host_id=host_id,
            dtp_port=PORT,
        )
        async with server:
            endpoint = f"tcp://127.0.0.1:{server.address[1]}"
            await asyncio.to_thread(ledger.set_endpoints, SERVER, host_id, [endpoint])
            reader, writer = await dtp.aio.open_connection(
                f"dtp://{host_id}:{PORT}", ledger=ledger, identity=CLIENT, timeout=10
            )
            writer.write(b"admitted")
            assert await reader.readexactly(8) == b"admitted"
            writer.close()
            await writer.wait_closed()
            # the right server key but no ledger connection named: refused with the reason
            with pytest.raises(ConnectionRefused, match="connection"):
                await dtp.aio.open_connection(
                    *server.address, server_key=SERVER.noise_public, identity=CLIENT, timeout=10
                )
        assert seen == [CLIENT.sui_address]
        assert server.refused == 1

    asyncio.run(main())
    with pytest.raises(ValueError, match="together"):
        asyncio.run(dtp.aio.start_server(handle, "127.0.0.1", 0, identity=SERVER, ledger=ledger))


@pytest.mark.parametrize(
    "published", ["127.0.0.1", "127.0.0.1:99999", "tcp://127.0.0.1", "localhost"]
)
def test_an_endpoint_meant_as_tcp_that_does_not_parse_is_named_before_the_deposit(
    world: World, published: str
) -> None:
    world.ledger.set_endpoints(SERVER, world.host_id, [published])
    before = world.balances()
    with pytest.raises(NoCarrierEndpoint, match="carrier='ledger'") as info:
        dtp.socket.create_connection(
            world.address(), ledger=world.ledger, identity=CLIENT, deposit=5000, timeout=30
        )
    assert repr(published) in str(info.value)
    assert world.balances() == before


def test_endpoints_of_other_kinds_still_leave_the_ledger_carrier(world: World) -> None:
    world.ledger.set_endpoints(
        SERVER,
        world.host_id,
        [
            "udp:127.0.0.1:4000",
            "quic://127.0.0.1:1",
            "http://x:1",
            "/ip4/1.2.3.4/udp/9000/quic",
            "/dns4/node.example.com/tcp/443",
            "relay.example.com/ledger",
        ],
    )
    resolved = resolve_service(world.ledger, world.host_id, PORT, CLIENT.sui_address, 5000)
    assert resolved.endpoint is None  # the ledger carrier, as before
