"""Connecting by host ID: the client's meter is set up (its ledger reads) while the
server works on the first handshake message; a failure there fails the connect and
half-closes the connection on the ledger, like any other failure after the open."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

import dtp.socket
from dtp.chain.local import LocalLedger
from dtp.chain.objects import ConnectionState, EventFilter
from dtp.errors import ObjectNotFound
from tests.test_hostid import CLIENT, World, world

__all__ = ["world"]  # the fixture, used by name below


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
        payment = sock._engine.payment
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
