"""Where a client's refunds are tested: a server's raw service on a LocalLedger file
(its clock moved by hand) or on the Sui node stand-in (gas charged), a funded client,
and the client's connections opened as a connect opens them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from dtp.errors import ObjectNotFound
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import ConnectionState, EventFilter, Sla
from dtp.ledger.interface import Ledger
from dtp.ledger.local import LocalLedger
from dtp.ledger.sui import SuiConfig, SuiLedger
from dtp.testing.sui_node import SuiNodeStandIn

SLA = Sla(price_per_kib=10, price_per_request=0, min_deposit=1_000)
DEPOSIT = 10_000_000
PORT = 80


@dataclass
class Place:
    ledger: Ledger
    """The client's."""
    node: SuiNodeStandIn | None
    server: HostIdentity
    client: HostIdentity
    host: str
    server_ledger: Ledger

    def open(
        self, deposit: int = DEPOSIT, journal: Callable[[str, str | None], None] | None = None
    ) -> str:
        """A connection of the client's, Open; told to ``journal`` (an ``on_open``) as a
        connect tells it: the spending cap before the deposit moves, then the ID."""
        cap = self.ledger.create_spending_cap(self.client, deposit)
        if journal is not None:
            journal(cap, None)
        cid = self.ledger.open_connection(self.client, self.host, PORT, cap, deposit).connection_id
        if journal is not None:
            journal(cap, cid)
        return cid

    def open_sponsored(self, share_bps: int, funds: int, deposit: int = DEPOSIT) -> tuple[str, str]:
        """A sponsored connection of the client's, Open, through a one-lane pool the
        server made with ``share_bps`` and funded with ``funds``: (connection, lane)."""
        pool = self.server_ledger.create_sponsor_pool(
            self.server, self.host, PORT, share_bps, max_pledge=deposit, lanes=1
        )
        self.server_ledger.fund_sponsor_pool(self.server, pool, funds)
        cap = self.ledger.create_spending_cap(self.client, deposit)
        opened = self.ledger.open_sponsored_connection(self.client, pool, cap, deposit)
        lane = self.ledger.get_sponsor_pool(pool).lanes[0]
        return opened.connection_id, lane

    def advance(self, ms: int) -> None:
        if self.node is not None:
            self.node.advance_clock(ms)
        else:
            assert isinstance(self.ledger, LocalLedger)
            self.ledger.advance_clock(ms)

    def state(self, cid: str) -> ConnectionState:
        return self.ledger.get_connection(cid).state

    def settled_refund(self, cid: str) -> int | None:
        """What the settlement of ``cid`` refunded, from its ``ConnectionSettled`` event
        (None: not settled): read so, it outlives the connection's objects, which its
        client deletes once settled."""
        events, _ = self.ledger.events(None, EventFilter(type="ConnectionSettled", object_id=cid))
        return int(events[-1]["refunded"]) if events else None

    def gone(self, *object_ids: str) -> bool:
        """Whether every one of ``object_ids`` is deleted (reads as unknown)."""
        for object_id in object_ids:
            try:
                self.ledger.get_object(object_id)
            except ObjectNotFound:
                continue
            return False
        return True


@contextmanager
def refund_place(kind: str, tmp_path: Path, *, frozen: bool = False) -> Iterator[Place]:
    """A :class:`Place` on ``kind``: ``"local"`` (a LocalLedger file; its clock
    ``frozen``, else running) or ``"sui"`` (the stand-in, its clock running)."""
    server, client = HostIdentity.generate(), HostIdentity.generate()
    if kind == "local":
        ledger = LocalLedger(tmp_path / "ledger.db")
        try:
            if frozen:
                ledger.set_clock(1_700_000_000_000, allow_backwards=True)
            for who in (server, client):
                ledger.faucet(who.sui_address, 10**10)
            host = ledger.create_host(server, server.noise_public)
            ledger.add_service(server, host, PORT, "raw", SLA)
            yield Place(ledger, None, server, client, host, ledger)
        finally:
            ledger.close()
        return
    with SuiNodeStandIn(clock_ms=1_000_000) as node:
        for who in (server, client):
            node.faucet(who.sui_address, 10**10)
        server_ledger = SuiLedger(SuiConfig(node.url, node.package_id))
        sui = SuiLedger(SuiConfig(node.url, node.package_id))
        try:
            host = server_ledger.create_host(server, server.noise_public)
            server_ledger.add_service(server, host, PORT, "raw", SLA)
            yield Place(sui, node, server, client, host, server_ledger)
        finally:
            sui.close()
            server_ledger.close()
        node.state.check()
