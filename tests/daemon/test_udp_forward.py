"""The daemon's UDP forward (dtp.daemon._udp_forward) when the ledger read that follows
a flow's connect fails: the connection just made must not stay open. On a LocalLedger
file; the host publishes no endpoint, so connections go over the ledger carrier.

A UDP forward half-closes each flow's ledger connection once it ended, as the TCP
forwarder does: its billing is the flow's own, so the connection's close did nothing on
the ledger, and where the daemon did not settle (killed, its claim refused) the client
could never settle either (EConnectionOpen), its deposit held (found by a second
reader)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

import dtp.aio
import dtp.socket
from dtp.daemon._config import Backend, ForwardConfig
from dtp.daemon._state import StatusBook
from dtp.daemon._udp_forward import UdpForward
from dtp.errors import ChainError, DTPError
from dtp.hostid._address import HostAddress
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import HALF_CLOSE_TIMEOUT_MS, ConnectionState, EventFilter, Sla
from dtp.ledger.local import LocalLedger
from tests.support.ledger_server import identity_from_seed
from tests.support.polling import wait_for

PORT = 7
SERVER = identity_from_seed(0x65)
CLIENT = identity_from_seed(0x66)


class _EscrowUnreadable:
    """The ledger, except that reading an escrow fails (a node that went away)."""

    def __init__(self, ledger: LocalLedger) -> None:
        self._ledger = ledger

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    def get_escrow(self, escrow_id: str) -> Any:
        raise ChainError("the node is unavailable", name="LedgerUnavailable", module="ledger")


def _bridges() -> list[threading.Thread]:
    return [
        t
        for t in threading.enumerate()
        if t.name.startswith("dtp-ledger-") and t.name != "dtp-ledger-listener"
    ]


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[tuple[LocalLedger, str]]:
    ledger = LocalLedger(tmp_path / "ledger.db")
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "udp", Sla(0, 0, 1000))
    ledger.faucet(CLIENT.sui_address, 1_000_000)
    try:
        yield ledger, host_id
    finally:
        ledger.close()


def test_a_flow_whose_escrow_cannot_be_read_closes_its_connection(
    ledger: tuple[LocalLedger, str], tmp_path: Path
) -> None:
    """The escrow read after the connect fails: the connection is closed, not left to
    the forwarder that never saw it, kept alive by its keepalives with its deposit
    locked."""
    book, host_id = ledger
    ended = threading.Event()
    accepted = threading.Event()

    def handler(sock: dtp.socket.DTPSocket) -> None:
        accepted.set()
        try:
            while sock.recv(1 << 16):
                pass
        except DTPError:
            pass
        finally:
            sock.close()
            ended.set()

    server_ledger = LocalLedger(book.path)
    server = dtp.socket.create_server(
        None, identity=SERVER, ledger=server_ledger, host_id=host_id, port=PORT
    )
    serving = threading.Thread(target=server.serve_forever, args=(handler,), daemon=True)
    serving.start()
    config = ForwardConfig(
        name="f",
        listen=Backend("127.0.0.1", 0),
        target=HostAddress.parse(f"dtp://{host_id}:{PORT}"),
        deposit=5000,
        protocol="udp",
    )
    forward = UdpForward(config, _EscrowUnreadable(book), CLIENT, StatusBook(tmp_path))  # type: ignore[arg-type]

    async def main() -> None:
        address = await forward.start()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(b"hello", address)
            assert await asyncio.to_thread(accepted.wait, 30)
            # the connection ends (its server's handler sees it go) without the
            # forwarder being closed
            assert await asyncio.to_thread(ended.wait, 10)
        assert forward.stats.errors == 1
        await forward.release()

    try:
        asyncio.run(main())
    finally:
        server.close()
        serving.join(5)
        assert wait_for(lambda: not _bridges(), 30)
        server_ledger.close()


def test_a_flow_whose_escrow_cannot_be_read_is_half_closed_on_the_ledger(
    ledger: tuple[LocalLedger, str], tmp_path: Path
) -> None:
    """The escrow read's failure path closes the connection, and the ledger half-close
    follows it there too (it is watched from the connect, not only once the read
    succeeded), so the client can settle (no EConnectionOpen, its deposit held).
    Settled afterwards, the deposit comes back whole: nothing was served."""
    book, host_id = ledger
    server_ledger = LocalLedger(book.path)
    server = dtp.socket.create_server(
        None, identity=SERVER, ledger=server_ledger, host_id=host_id, port=PORT
    )

    def handler(sock: dtp.socket.DTPSocket) -> None:
        with contextlib.suppress(DTPError):
            while sock.recv(1 << 16):
                pass
        sock.close()

    serving = threading.Thread(target=server.serve_forever, args=(handler,), daemon=True)
    serving.start()
    before = book.balance(CLIENT.sui_address)
    config = ForwardConfig(
        name="f",
        listen=Backend("127.0.0.1", 0),
        target=HostAddress.parse(f"dtp://{host_id}:{PORT}"),
        deposit=5000,
        protocol="udp",
    )
    forward = UdpForward(config, _EscrowUnreadable(book), CLIENT, StatusBook(tmp_path))  # type: ignore[arg-type]

    def opened() -> list[str]:
        events = book.read_events(filter=EventFilter(type="ConnectionOpened")).events
        return [str(e.fields["connection"]) for e in events]

    def half_closed_by_client(cid: str) -> bool:
        tc = book.get_connection(cid)
        return tc.state == ConnectionState.CLOSED or tc.half_closed_by == CLIENT.sui_address

    async def main() -> None:
        address = await forward.start()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(b"hello", address)
            assert await asyncio.to_thread(wait_for, lambda: len(opened()) == 1, 30)
            (cid,) = opened()
            assert await asyncio.to_thread(wait_for, lambda: half_closed_by_client(cid), 30)
        await forward.drain(5)
        assert forward.stats.errors == 1

    try:
        asyncio.run(main())
        (cid,) = opened()
        tc = book.get_connection(cid)
        assert tc.state in (ConnectionState.HALF_CLOSED, ConnectionState.CLOSED)
        if tc.state != ConnectionState.CLOSED:
            book.advance_clock(HALF_CLOSE_TIMEOUT_MS)  # (the server never settled)
            book.settle(CLIENT, cid)
        # the whole deposit back: no fee was earned, and none of it is held
        assert book.balance(CLIENT.sui_address) == before
        audit = book.audit()
        assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]
    finally:
        server.close()
        serving.join(5)
        assert wait_for(lambda: not _bridges(), 30)
        server_ledger.close()


def test_an_ended_flow_is_half_closed_on_the_ledger(tmp_path: Path) -> None:
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    server, client = HostIdentity.generate(), HostIdentity.generate()
    host = ledger.create_host(server, server.noise_public)
    ledger.add_service(server, host, 53, "dns", Sla(0, 1, 10))
    ledger.faucet(client.sui_address, 10**6)
    cap = ledger.create_spending_cap(client, 10**6)
    cid = ledger.open_connection(client, host, 53, cap, 100).connection_id
    config = ForwardConfig(
        "dns", Backend("127.0.0.1", 0), HostAddress.parse(f"dtp://{host}:53"), protocol="udp"
    )
    forward = UdpForward(config, ledger, client, StatusBook(tmp_path / "state"))

    async def wait_closed() -> None:
        return None  # (the flow's connection has ended)

    writer = cast(
        dtp.aio.DTPStreamWriter, types.SimpleNamespace(connection_id=cid, wait_closed=wait_closed)
    )
    try:
        assert ledger.get_connection(cid).state == ConnectionState.OPEN
        asyncio.run(forward._close_when_ended(writer))
        tc = ledger.get_connection(cid)
        assert tc.state == ConnectionState.HALF_CLOSED
        assert tc.half_closed_by == client.sui_address
        asyncio.run(forward._close_when_ended(writer))  # (once is enough: again, nothing)
    finally:
        ledger.close()
