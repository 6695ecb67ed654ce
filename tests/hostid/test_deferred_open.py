"""Connecting by host ID with the open landing during the handshake: the client signs
the open first, names the connection its digest will create, and executes the open
while the server works on the first handshake message; the server's admission gives a
connection still landing a moment, and refuses one that never lands.

Connecting by host ID: the client's meter is set up (its ledger reads) while the
server works on the first handshake message; a failure there fails the connect and
half-closes the connection on the ledger, like any other failure after the open."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from typing import Any

import pytest

import dtp.socket
from dtp.errors import ConnectionRefused, InvalidTransaction, NotAuthorized, ObjectNotFound
from dtp.hostid._admission import LedgerAdmission, PeerInfo
from dtp.ledger._objects import ConnectionState, EventFilter
from dtp.ledger.interface import PendingOpen
from dtp.ledger.local import LocalLedger
from tests.hostid.host_id_world import (
    APIS,
    CLIENT,
    MALLORY,
    PORT,
    World,
    connect_raw,
    echo_by_host_id,
    world,
)

__all__ = ["world"]  # the fixture, used by name below


def test_a_pending_open_announces_the_ids_it_creates(world: World) -> None:
    cap = world.ledger.create_spending_cap(CLIENT, 10**6)
    pending = world.ledger.prepare_open_connection(CLIENT, world.host_id, PORT, cap, 5000)
    assert isinstance(pending, PendingOpen) and pending.opened is None
    before = world.ledger.dump()
    # nothing happened on the ledger yet
    assert world.ledger.dump() == before
    opened = pending.execute()
    assert (opened.connection_id, opened.escrow_id) == (pending.connection_id, pending.escrow_id)
    assert pending.execute() is opened  # once
    tc = world.ledger.get_connection(pending.connection_id)
    assert tc.escrow == pending.escrow_id and tc.state == ConnectionState.OPEN
    assert world.conserved()


def test_a_failed_pending_open_changes_nothing(world: World) -> None:
    cap = world.ledger.create_spending_cap(MALLORY, 10**6)  # not the client's cap
    pending = world.ledger.prepare_open_connection(CLIENT, world.host_id, PORT, cap, 5000)
    before = world.ledger.dump()
    with pytest.raises(NotAuthorized):
        pending.execute()
    assert pending.opened is None and world.ledger.dump() == before
    # a second try is a typed error naming the first failure (a bare RuntimeError was)
    with pytest.raises(InvalidTransaction, match=r"failed .*NotAuthorized.*prepare a new one"):
        pending.execute()


def test_admission_waits_for_a_connection_still_landing(world: World) -> None:
    cap = world.ledger.create_spending_cap(CLIENT, 10**6)
    pending = world.ledger.prepare_open_connection(CLIENT, world.host_id, PORT, cap, 5000)
    admission = LedgerAdmission(world.ledger, world.host_id, PORT)
    lands = threading.Timer(0.05, pending.execute)
    start = time.monotonic()  # (before the timer starts: it cannot land sooner than 0.05 s on)
    lands.start()
    peer = PeerInfo(CLIENT.sui_address, pending.connection_id, PORT)
    assert admission(peer) is None
    assert 0.04 < time.monotonic() - start < admission.OPEN_GRACE
    lands.join(5)
    # one that never lands is refused once the grace is over
    start = time.monotonic()
    stranger = PeerInfo(CLIENT.sui_address, "0x" + "cd" * 32, PORT)
    assert "unknown connection" in (admission(stranger) or "")
    assert time.monotonic() - start >= admission.OPEN_GRACE


def test_rpc_payments_wait_for_a_connection_still_landing(world: World) -> None:
    """An RPC server's per-request fees (ledger_payments) read the connection when its
    first stream starts, which may be before the client's open has landed: it is given
    the admission's grace too, and one that never lands is refused per request."""
    from dtp.messaging import errors as E
    from dtp.messaging.rpc import RequestPayments, ledger_payments

    cap = world.ledger.create_spending_cap(CLIENT, 10**6)
    pending = world.ledger.prepare_open_connection(CLIENT, world.host_id, PORT, cap, 5000)
    source = ledger_payments(world.ledger)
    lands = threading.Timer(0.05, pending.execute)
    start = time.monotonic()  # (before the timer starts: it cannot land sooner than 0.05 s on)
    lands.start()
    payments = source(pending.connection_id)
    assert 0.04 < time.monotonic() - start < LedgerAdmission.OPEN_GRACE
    lands.join(5)
    assert isinstance(payments, RequestPayments)
    assert payments.connection_id == pending.connection_id and payments.deposited == 5000
    never = world.ledger.prepare_open_connection(CLIENT, world.host_id, PORT, cap, 5000)
    start = time.monotonic()
    with pytest.raises(E.PaymentRequired, match=never.connection_id):
        source(never.connection_id)
    assert time.monotonic() - start >= LedgerAdmission.OPEN_GRACE


@pytest.mark.parametrize("api", APIS)
def test_connect_opens_during_the_handshake(
    world: World, monkeypatch: pytest.MonkeyPatch, api: str
) -> None:
    """Both drivers execute the open while the server works on the first handshake
    message; the connection is Open with its escrow, and money is conserved. dtp.aio's
    open executes once that message is out (connection_made sends it), not before."""
    from dtp.transport.asyncio._protocol import Protocol

    order: list[str] = []
    made, execute = Protocol.connection_made, PendingOpen.execute

    def connection_made(self: Protocol, transport: asyncio.BaseTransport) -> None:
        made(self, transport)
        order.append("first message out")

    def recorded_execute(self: PendingOpen) -> object:
        order.append("open")
        return execute(self)

    if api == "asyncio":
        monkeypatch.setattr(Protocol, "connection_made", connection_made)
        monkeypatch.setattr(PendingOpen, "execute", recorded_execute)
    cap = world.ledger.create_spending_cap(CLIENT, 10**6)

    def is_open(cid: str, escrow: str | None) -> None:
        tc = world.ledger.get_connection(cid)
        assert tc.state == ConnectionState.OPEN and tc.escrow == escrow

    echo_by_host_id(api, world, cap, b"deferred", is_open)
    if api == "asyncio":
        assert order == ["first message out", "open"]
    assert world.conserved()


def test_an_open_that_lands_late_on_a_busy_ledger_is_still_admitted(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The open lands 0.6 s after the client executes it (a busy ledger): the server
    waits for it and serves the connection. With a grace of 0.25 s it refused it as
    unknown, and the client's deposit sat out the half-close timeout."""
    prepare = world.ledger.prepare_open_connection

    def slow_prepare(*args: object, **kw: object) -> PendingOpen:
        pending = prepare(*args, **kw)  # type: ignore[arg-type]
        run = pending._run
        assert run is not None

        def late() -> object:
            time.sleep(0.6)
            return run()

        pending._run = late  # type: ignore[assignment]
        return pending

    monkeypatch.setattr(world.ledger, "prepare_open_connection", slow_prepare)
    cap = world.ledger.create_spending_cap(CLIENT, 10**6)
    with dtp.socket.create_connection(
        world.address(), timeout=10, ledger=world.ledger, identity=CLIENT, cap_id=cap
    ) as sock:
        sock.sendall(b"late")
        assert sock.recv(10) == b"late"
    assert world.conserved()


@pytest.mark.parametrize("api", APIS)
def test_an_open_failing_during_the_handshake_fails_the_connect(world: World, api: str) -> None:
    cap = world.ledger.create_spending_cap(MALLORY, 10**6)  # the ledger refuses it
    with pytest.raises(NotAuthorized):
        echo_by_host_id(api, world, cap, b"never")
    opened, _ = world.ledger.events(filter=EventFilter(type="ConnectionOpened"))
    assert opened == []  # nothing was opened, so nothing to half-close
    closed, _ = world.ledger.events(filter=EventFilter(type="ConnectionHalfClosed"))
    assert closed == []
    assert world.conserved()
    # the server goes on serving
    good = world.ledger.create_spending_cap(CLIENT, 10**6)
    echo_by_host_id(api, world, good, b"ok")
    with pytest.raises(ConnectionRefused, match="unknown connection"):
        connect_raw(world, CLIENT, "0x" + "ab" * 32, PORT)


class EscrowUnreadable:
    """A ledger whose Escrows cannot be read, and whose open does not report the SLA and
    deposit (as a ledger may not): the meter has to read them (everything else passes
    through)."""

    def __init__(self, ledger: LocalLedger) -> None:
        self._ledger = ledger

    def get_escrow(self, escrow_id: str) -> Any:
        raise ObjectNotFound(f"escrow {escrow_id} is unreadable here")

    def open_connection(self, *args: Any, **kwargs: Any) -> Any:
        opened = self._ledger.open_connection(*args, **kwargs)
        return dataclasses.replace(opened, sla=None, deposit=None)

    def prepare_open_connection(self, *args: Any, **kwargs: Any) -> None:
        return None  # nor tells the connection ID ahead: the open is made at once

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)


def test_metered_connection_pays_and_half_closes(world: World) -> None:
    with dtp.socket.create_connection(
        world.address(), timeout=10, ledger=world.ledger, identity=CLIENT, deposit=5000
    ) as sock:
        payment = sock._engine.hook
        assert payment is not None and payment.connection_id == sock.connection_id
        sock.sendall(b"metered")
        assert sock.recv(100) == b"metered"
        cid = sock.connection_id
    assert payment.receipts_sent >= 1  # the final receipt went out before CLOSE
    assert cid is not None
    tc = world.ledger.get_connection(cid)
    assert tc.state == ConnectionState.HALF_CLOSED and tc.half_closed_by == CLIENT.sui_address
    assert world.conserved()


def test_meter_setup_failure_fails_the_connect_and_half_closes(world: World) -> None:
    ledger = EscrowUnreadable(world.ledger)
    with pytest.raises(ObjectNotFound, match="unreadable"):
        dtp.socket.create_connection(
            world.address(),
            timeout=10,
            ledger=ledger,  # type: ignore[arg-type]
            identity=CLIENT,
            deposit=5000,
        )
    (opened,) = world.ledger.events(filter=EventFilter(type="ConnectionOpened"))[0]
    tc = world.ledger.get_connection(opened["connection"])
    assert tc.client == CLIENT.sui_address
    # abandoned like a refused connect: our half-close, so the deposit comes back later
    assert tc.state == ConnectionState.HALF_CLOSED
    assert tc.half_closed_by == CLIENT.sui_address
    assert world.conserved()
