"""A client whose handshake completes as a paid server closes, admitted by the ledger: the
server closes and settles it at once -- nothing claimed, the deposit refunded whole --
through its own settlement path, which wait_released() waits for, rather than leave its
ledger connection Open, the deposit locked until the half-close timeout (10 minutes).

The race (close() between the client's admission and its dispatch) is made certain at
a seam: the admission's ledger read (LedgerAdmission._check) or the DTPServer's
reservation of the connection ID, each patched to do its real work and then wait until
close() has returned. A real LocalLedger file, a real ReceiptStore file, real
handshakes by host ID on 127.0.0.1."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import ConnectionRefused, DTPError
from dtp.hostid._admission import ConnectionLimits, LedgerAdmission, PeerInfo
from dtp.hostid.paid import PaidServer, PaidSocket, ServicePolicy
from dtp.hostid.paid._aio import PaidReader, PaidWriter
from dtp.ledger._objects import ConnectionState, Sla
from tests.paid.conftest import Driver
from tests.support.paid_twins import PaidWorld, hosted_ledgers, ident
from tests.support.settlements import settlement

PORT = 7
SERVER = ident(0x93)
CLIENT = ident(0x94)
DEPOSIT = 200_000
HELD = 600.0  # how long a patched seam would hold the race open without the test


class World(PaidWorld):
    def connect(self) -> dtp.socket.DTPSocket:
        return self.connect_as(CLIENT, PORT, DEPOSIT)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with hosted_ledgers(tmp_path, SERVER, CLIENT, PORT, Sla(10, 5, 5000)) as ledgers:
        yield World(*ledgers, tmp_path)


@dataclass
class Race:
    """A seam held until close() has returned: ``reached`` once the client got there,
    ``go`` lets it on."""

    reached: threading.Event = field(default_factory=threading.Event)
    go: threading.Event = field(default_factory=threading.Event)
    connection_ids: list[str] = field(default_factory=list)

    def hold(self, connection_id: str | None) -> None:
        assert connection_id is not None
        self.connection_ids.append(connection_id)
        self.reached.set()
        assert self.go.wait(HELD)


def hold_admission(monkeypatch: pytest.MonkeyPatch, race: Race) -> None:
    """The ledger read of every server-side admission does its work, then waits."""
    check = LedgerAdmission._check

    def slow_check(self: LedgerAdmission, peer: PeerInfo) -> str | None:
        verdict = check(self, peer)
        assert verdict is None  # (admitted: the client's connection is Open and funded)
        race.hold(peer.connection_id)
        return verdict

    monkeypatch.setattr(LedgerAdmission, "_check", slow_check)


def hold_reservation(server: PaidServer, race: Race) -> None:
    """The DTPServer's reservation of an admitted client's connection ID (the last step
    of its admission, before the handshake's reply) is made, then waits."""
    served = server.server._serving if server.server is not None else None
    assert served is not None
    reserve = served.reserve

    def slow_reserve(
        connection_id: str, client: str | None = None, limits: ConnectionLimits | None = None
    ) -> str | None:
        refusal = reserve(connection_id, client, limits)
        assert refusal is None
        race.hold(connection_id)
        return refusal

    served.reserve = slow_reserve  # type: ignore[method-assign]


def connect_in_thread(world: World) -> tuple[threading.Thread, list[Any]]:
    """Connect (and, connected, read) in a thread: what it ended with goes in the list
    (an error, or b"" / data)."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            with world.connect() as sock:
                outcome.append(sock.recv(10))
        except DTPError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def assert_refunded(world: World, connection_id: str, client_before: int, host_before: int) -> None:
    """The connection is closed and settled on the ledger, nothing claimed, the client
    refunded its whole deposit; every MIST minted is still accounted for."""
    ledger = world.ledger
    done = settlement(ledger, connection_id)
    assert done is not None and (done.claimed, done.refunded) == (0, DEPOSIT)
    if not done.deleted:  # (else its client deleted it once settled: its event says it)
        tc = ledger.get_connection(connection_id)
        assert tc.state != ConnectionState.OPEN
        escrow = ledger.get_escrow(tc.escrow)
        assert (escrow.deposited, escrow.balance) == (DEPOSIT, 0)
    assert ledger.balance(CLIENT.sui_address) == client_before
    assert ledger.balance(SERVER.sui_address) == host_before
    audit = ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]


def _unused(sock: PaidSocket) -> None:
    raise AssertionError("no connection is served in these tests")


async def _unused_aio(reader: PaidReader, writer: PaidWriter) -> None:
    raise AssertionError("no connection is served in these tests")


def _blocking_server(world: World) -> PaidServer:
    return dtp.socket.serve(
        world.host_id,
        PORT,
        _unused,
        ledger=world.server_ledger,
        identity=SERVER,
        receipts=world.tmp_path / "receipts.db",
        policy=ServicePolicy(),
    )


def _race_blocking(
    world: World, server: PaidServer, race: Race, check: Callable[[list[Any]], None]
) -> None:
    client_before = world.ledger.balance(CLIENT.sui_address)
    host_before = world.ledger.balance(SERVER.sui_address)
    try:
        thread, outcome = connect_in_thread(world)
        assert race.reached.wait(60)
        server.close()  # the client is admitted but not dispatched yet
        race.go.set()
        assert server.wait_released(60)
        thread.join(60)
        assert not thread.is_alive()
    finally:
        race.go.set()
        server.close()
    (cid,) = race.connection_ids
    assert_refunded(world, cid, client_before, host_before)
    assert [c for c, _ in server.settlements] == [cid]
    check(outcome)


def test_admitted_while_closing_is_refused_and_settled(
    world: World, monkeypatch: pytest.MonkeyPatch, driver: Driver
) -> None:
    """close() while the admission reads the ledger (in a worker thread, for the
    asyncio server): the client, admitted, is refused ("the server is closed") with its
    ledger connection settled, nothing claimed, and wait_released() waited for it."""
    race = Race()
    hold_admission(monkeypatch, race)
    client_before = world.ledger.balance(CLIENT.sui_address)
    host_before = world.ledger.balance(SERVER.sui_address)
    with driver.serve(
        world.host_id,
        PORT,
        (_unused, _unused_aio),
        ledger=world.server_ledger,
        identity=SERVER,
        receipts=world.tmp_path / "receipts.db",
        policy=ServicePolicy(),
    ) as server:
        try:
            thread, outcome = connect_in_thread(world)
            assert race.reached.wait(60)
            driver.close(server)  # the client is admitted but not dispatched yet
            race.go.set()
            assert driver.wait_released(server, 60)
            thread.join(60)
            assert not thread.is_alive()
        finally:
            race.go.set()
            driver.close(server)
    (cid,) = race.connection_ids
    assert_refunded(world, cid, client_before, host_before)
    assert [c for c, _ in server.settlements] == [cid]
    assert len(outcome) == 1 and isinstance(outcome[0], ConnectionRefused)
    assert "the server is closed" in str(outcome[0])


def test_blocking_reserved_while_closing_is_aborted_and_settled(world: World) -> None:
    """close() after the admission, before the handshake's reply: the DTPServer aborts
    the connection (it is closed); the paid server settles it as the engine goes."""
    race = Race()
    server = _blocking_server(world)
    hold_reservation(server, race)

    def closed(outcome: list[Any]) -> None:
        # a clean end of the connection, or its close seen already in the handshake:
        # never a hang (the thread ended), never data
        assert len(outcome) == 1
        assert outcome[0] == b"" or isinstance(outcome[0], DTPError)

    _race_blocking(world, server, race, closed)
