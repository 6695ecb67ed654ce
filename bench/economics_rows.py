"""Benchmark rows for the payment models (docs/escrow.md §13-16) on LocalLedger: what a
subscription or a sponsor pool adds to a connection's life on the ledger, each compared
with the plain per-byte connection doing the same steps in the same run.

Registered in bench/workloads.py; each returns a :class:`bench.workload.Workload`.
"""

from __future__ import annotations

from collections.abc import Callable

from bench.workload import Workload
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.payments.receipts import Receipt, ReceiptScope

__all__ = ["sponsored_cycle", "subscribed_open_close"]

_SLA = Sla(10, 5, 1000)


class _World:
    """An in-memory ledger with a host serving port 7 and a funded client with a cap."""

    def __init__(self) -> None:
        self.ledger = LocalLedger(":memory:", clock_ms=0)
        self.server, self.client = HostIdentity.generate(), HostIdentity.generate()
        self.host = self.ledger.create_host(self.server, b"\x01" * 32)
        self.ledger.add_service(self.server, self.host, 7, "raw", _SLA)
        self.cap = self.ledger.create_spending_cap(self.client, 10**15)
        self.ledger.faucet(self.client.sui_address, 10**15)
        self.ledger.faucet(self.server.sui_address, 10**15)

    def close_both(self, connection_id: str) -> None:
        self.ledger.close_connection(self.client, connection_id)
        self.ledger.close_connection(self.server, connection_id)

    def plain_open(self) -> str:
        return self.ledger.open_connection(self.client, self.host, 7, self.cap, 1000).connection_id


def subscribed_open_close() -> Workload:
    """Open + close (both sides) of an unmetered connection under a subscription; peer: the
    same cycle of a plain metered connection (same ledger kind, same run)."""
    ours_world, peer_world = _World(), _World()
    w = ours_world
    offer = w.ledger.create_subscription_offer(w.server, w.host, 7, 100, 1)
    sub = w.ledger.subscribe(w.client, offer, 1)

    def ours() -> object:
        opened = w.ledger.open_subscribed_connection(w.client, sub, w.cap)
        w.close_both(opened.connection_id)
        return None

    def peer() -> object:
        peer_world.close_both(peer_world.plain_open())
        return None

    return Workload(
        "subscribed_open_close",
        "cycles/s",
        1,
        ours,
        peer,
        bar=None,
        note="report only: subscription::open_connection + 2 closes vs transport_control::open"
        " + 2 closes, LocalLedger :memory:",
        close=_closer(ours_world, peer_world),
    )


def sponsored_cycle() -> Workload:
    """A sponsored connection's whole life: open (pledge), claim a receipt, close, settle,
    reimburse; peer: the same plain connection without the pool (no reimburse)."""
    ours_world, peer_world = _World(), _World()
    w = ours_world
    pool = w.ledger.create_sponsor_pool(w.server, w.host, 7, 5_000, max_pledge=10**9)
    w.ledger.fund_sponsor_pool(w.server, pool, 10**14)

    def life(world: _World, connection_id: str, escrow_id: str) -> None:
        scope = ReceiptScope(world.ledger.package_id, escrow_id, connection_id)
        receipt = Receipt(scope, 10_240, 4, 120, 1).sign(world.client)
        world.ledger.claim(world.server, escrow_id, receipt)
        world.close_both(connection_id)
        world.ledger.settle(world.server, connection_id)

    def ours() -> object:
        opened = w.ledger.open_sponsored_connection(w.client, pool, w.cap, 1000)
        life(w, opened.connection_id, opened.escrow_id)
        w.ledger.reimburse(w.client, pool, opened.connection_id)
        return None

    def peer() -> object:
        l = peer_world.ledger  # noqa: E741
        opened = l.open_connection(peer_world.client, peer_world.host, 7, peer_world.cap, 1000)
        life(peer_world, opened.connection_id, opened.escrow_id)
        return None

    return Workload(
        "sponsored_cycle",
        "connections/s",
        1,
        ours,
        peer,
        bar=None,
        note="report only: sponsored open+claim+close+settle+reimburse vs the plain connection"
        " without the pool, LocalLedger :memory:",
        close=_closer(ours_world, peer_world),
    )


def _closer(*worlds: _World) -> Callable[[], None]:
    def close() -> None:
        for world in worlds:
            world.ledger.close()

    return close
