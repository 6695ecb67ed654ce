"""The paid servers' connection limits (``dtp.socket.serve``, ``dtp.aio.serve``;
docs/escrow.md §2): the Host's ``max_connections_per_client`` and a service's
``max_connections``, counted over the DTP connections the server serves now (the ledger
counts none).

- A connection beyond a limit is refused at its handshake (``ConnectionLimitReached``)
  and, valid and funded on the ledger, settled at once: nothing claimed, the client's
  deposit back whole without waiting out the half-close timeout.
- A connection counts until it ends, not until its settlement (three transactions on
  Sui) is done: a client that closes and reconnects at once is served, while its first
  connection is still settling.

Each story runs on both servers (one test, parametrized over the driver): a real
LocalLedger file, real servers on 127.0.0.1, real metered clients connecting by host ID.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import ConnectionLimitReached
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import EventFilter, Sla
from dtp.ledger.local import LocalLedger
from tests.support.paid_twins import PaidWorld, echo_server, hosted_ledgers, ident, loop_in_thread
from tests.support.polling import wait_for
from tests.support.settlements import is_settled, settled_escrow, settlement

PORT = 7100
SLA = Sla(1, 1, 1000)
DEPOSIT = 100_000
SERVER = ident(0xA1)
ALICE, BOB, CAROL = ident(0xA2), ident(0xA3), ident(0xA4)
APIS = ["blocking", "asyncio"]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[PaidWorld]:
    with hosted_ledgers(tmp_path, SERVER, ALICE, PORT, SLA) as (ledger, server_ledger, host_id):
        for client in (BOB, CAROL):
            ledger.faucet(client.sui_address, 10_000_000)
        yield PaidWorld(ledger, server_ledger, host_id, tmp_path)


def served(world: PaidWorld, client: HostIdentity) -> dtp.socket.DTPSocket:
    """A new metered connection of ``client`` (``DEPOSIT`` in escrow), echoed."""
    sock = world.connect_as(client, PORT, DEPOSIT)
    sock.sendall(b"ping")
    assert sock.recv(4) == b"ping"
    return sock


def refused(world: PaidWorld, client: HostIdentity) -> tuple[str, ConnectionLimitReached]:
    """A new connection of ``client`` refused at a limit: (its ledger ID, the error)."""
    with pytest.raises(ConnectionLimitReached) as info:
        world.connect_as(client, PORT, DEPOSIT)
    opened, _ = world.ledger.events(filter=EventFilter(type="ConnectionOpened"))
    assert opened[-1]["client"] == client.sui_address
    return str(opened[-1]["connection"]), info.value


def refunded_whole(world: PaidWorld, cid: str) -> Callable[[], bool]:
    """Whether ``cid`` is settled with its whole deposit refunded."""

    def check() -> bool:
        # (read from its settlement's event once its client deleted it)
        done = settlement(world.ledger, cid)
        return done is not None and done.refunded == DEPOSIT

    return check


def settled(world: PaidWorld, cid: str) -> Callable[[], bool]:
    return lambda: is_settled(world.ledger, cid)


def last_opened(world: PaidWorld) -> str:
    opened, _ = world.ledger.events(filter=EventFilter(type="ConnectionOpened"))
    return str(opened[-1]["connection"])


@pytest.mark.parametrize("api", APIS)
@pytest.mark.parametrize("limit", ["per_client", "per_service"])
def test_a_connection_beyond_a_limit_is_refused_and_refunded_at_once(
    world: PaidWorld, api: str, limit: str
) -> None:
    """Per client (one each): Alice's second connection is refused, naming the limit,
    while Bob is served. Per service (two in all): Carol is refused while Alice and Bob
    are served. The refused connection is closed and settled by the server as it
    refuses it, nothing claimed; the connections served go on; once one of them ends
    (settled), the refused client is served."""
    if limit == "per_client":
        world.ledger.set_client_limits(SERVER, world.host_id, 1, 0, 0)
    else:
        world.ledger.update_service(SERVER, world.host_id, PORT, SLA, 2)
    with echo_server(
        api, world.server_ledger, world.host_id, port=PORT, identity=SERVER, policy=None
    ) as server:
        alice = served(world, ALICE)
        first = last_opened(world)
        bob = served(world, BOB)
        who = ALICE if limit == "per_client" else CAROL
        cid, error = refused(world, who)
        assert error.name == "EMaxConnections" and error.module == "host"
        if limit == "per_client":
            assert f"{ALICE.sui_address} already has 1 of 1 connections" in str(error)
        else:
            assert f"port {PORT} of host {world.host_id} serves 2 of 2 connections" in str(error)
        assert wait_for(refunded_whole(world, cid), timeout=10), "not refunded at once"
        assert settled_escrow(world.ledger, cid).claimed == 0  # (closed: settled)
        # nothing the admission read of the refused connection is kept
        assert not server.admission._admitted
        for sock in (alice, bob):  # served on
            sock.sendall(b"still")
            assert sock.recv(5) == b"still"
        alice.close()
        assert wait_for(settled(world, first), timeout=10)
        again = served(world, who)
        for sock in (again, bob):
            sock.close()


class HeldSettlements:
    """The server's ledger, whose settlements wait (:attr:`held` set) until :attr:`go`
    is set; everything else passes through to the real LocalLedger."""

    def __init__(self, ledger: LocalLedger) -> None:
        self._ledger = ledger
        self.held = threading.Event()
        self.go = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    def _held(self, name: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.held.set()
            assert self.go.wait(30), "never let go"
            return getattr(self._ledger, name)(*args, **kwargs)

        return call

    @property
    def settle(self) -> Callable[..., Any]:
        return self._held("settle")

    @property
    def settle_with_receipt(self) -> Callable[..., Any]:
        return self._held("settle_with_receipt")


@pytest.mark.parametrize("api", APIS)
def test_a_client_reconnecting_while_its_last_connection_settles_is_served(
    world: PaidWorld, api: str
) -> None:
    """One connection per client. Alice closes her connection and connects again at
    once, while the first one's settlement is held on its way (on Sui three
    transactions, seconds; minutes against a stalled node): the first no longer
    counts, and the second is served (it was refused as over the limit by the very
    connection she had closed, its deposit locked). Let go, the first settles.

    The first connection is an asyncio client's: its close waits for the server's end
    of the carrier (which comes once the server has settled) before it closes its own,
    so the server sees the carrier open all along."""
    world.ledger.set_client_limits(SERVER, world.host_id, 1, 0, 0)
    ledger = HeldSettlements(world.server_ledger)
    address = f"dtp://{world.host_id}:{PORT}"
    client_ledger = LocalLedger(world.tmp_path / "ledger.db")  # (the loop thread's)

    async def first_connection() -> dtp.aio.DTPStreamWriter:
        reader, writer = await dtp.aio.open_connection(
            address, ledger=client_ledger, identity=ALICE, deposit=DEPOSIT, timeout=30
        )
        writer.write(b"ping")
        await writer.drain()
        assert await reader.readexactly(4) == b"ping"
        return writer

    async def close(writer: dtp.aio.DTPStreamWriter) -> None:
        writer.close()
        await writer.wait_closed()

    with (
        loop_in_thread() as loop,
        echo_server(api, ledger, world.host_id, port=PORT, identity=SERVER, policy=None),
    ):
        try:
            first = asyncio.run_coroutine_threadsafe(first_connection(), loop).result(30)
            first_cid = last_opened(world)
            closing = asyncio.run_coroutine_threadsafe(close(first), loop)
            assert ledger.held.wait(10), "the first connection's settlement never began"
            assert not is_settled(world.ledger, first_cid)
            second = served(world, ALICE)
        finally:
            ledger.go.set()
        closing.result(30)
        assert wait_for(settled(world, first_cid), timeout=10)
        second.sendall(b"on")
        assert second.recv(2) == b"on"
        second.close()
    client_ledger.close()
