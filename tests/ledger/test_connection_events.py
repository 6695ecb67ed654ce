"""dtp.ledger._connections: finding a client's or a host's connections through their
``ConnectionOpened`` events, and what a receipt can still claim.

The scan runs on LocalLedger and on the Sui node (tests/support/sui_network.py, the stand-in
unless a real node is configured) while unrelated transactions land between its reads,
as on a live network: it ends at the ledger's end as the scan found it, and counts the
events it read, not those it asked for.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dtp.errors import InvalidReceipt
from dtp.identity.keys import HostIdentity
from dtp.ledger._connections import OPENED, claimable_with, find_connections
from dtp.ledger._objects import Escrow, EventFilter, EventRead, Sla
from dtp.ledger.interface import Ledger
from dtp.ledger.local import LocalLedger
from dtp.payments.receipts import Receipt
from tests.support.scopes import scope_of
from tests.support.sui_network import SuiNetwork

SUI = 1_000_000_000
SLA = Sla(0, 100, 1_000)
DEPOSIT = 10_000


# -- claimable_with ------------------------------------------------------------------------


def _escrow(deposited: int, claimed: int = 0, latest_nonce: int = 0) -> Escrow:
    return Escrow(
        id="0x" + "e1" * 32,
        version=3,
        connection="0x" + "c1" * 32,
        client="0x" + "0c" * 32,
        client_public_key=bytes(32),
        server="0x" + "05" * 32,
        spending_cap="0x" + "ca" * 32,
        sla=SLA,
        balance=deposited - claimed,
        deposited=deposited,
        claimed=claimed,
        refunded=0,
        latest_nonce=latest_nonce,
        settled=False,
    )


def _receipt(amount: int, nonce: int) -> Receipt:
    return Receipt(scope_of("0x" + "c1" * 32), 0, amount // 100, amount, nonce)


def test_a_receipt_claims_what_it_adds_to_the_claims() -> None:
    escrow = _escrow(1_000, claimed=300, latest_nonce=2)
    assert claimable_with(_receipt(700, 3), escrow) == 400
    assert claimable_with(_receipt(1_000, 3), escrow) == 700  # the whole deposit
    assert claimable_with(_receipt(200, 3), escrow) == 0  # less than claimed: nothing more
    assert claimable_with(_receipt(700, 2), escrow) == 0  # a nonce the escrow has seen
    assert claimable_with(None, escrow) == 0


def test_a_receipt_beyond_the_deposit_claims_nothing() -> None:
    """The ledger refuses it whole (EReceiptExceedsDeposit): it is not capped at the
    deposit."""
    escrow = _escrow(1_000, claimed=300, latest_nonce=2)
    assert claimable_with(_receipt(1_001, 3), escrow) == 0


def test_a_receipt_beyond_the_deposit_is_refused_on_the_ledger(tmp_path: Path) -> None:
    """What the rule above follows: the chain pays nothing for such a receipt."""
    ledger = LocalLedger(tmp_path / "l.sqlite")
    server, client = HostIdentity.generate(), HostIdentity.generate()
    host = ledger.create_host(server, server.noise_public)
    ledger.add_service(server, host, 7, "raw", SLA)
    ledger.faucet(client.sui_address, SUI)
    cap = ledger.create_spending_cap(client, SUI)
    opened = ledger.open_connection(client, host, 7, cap, DEPOSIT)
    receipt = Receipt(ledger.receipt_scope(opened.connection_id), 0, 101, 10_100, 1).sign(
        client
    )  # 100 MIST a request
    escrow = ledger.get_escrow(opened.escrow_id)
    assert claimable_with(receipt, escrow) == 0
    with pytest.raises(InvalidReceipt) as info:
        ledger.claim(server, opened.escrow_id, receipt)
    assert info.value.name == "EReceiptExceedsDeposit"
    ledger.close()


# -- find_connections --------------------------------------------------------------------------


class Busy:
    """A ledger on which an unrelated transaction lands after every read of events (a
    live network's other users): a spending cap of someone else's is created."""

    def __init__(self, ledger: Ledger, bystander: HostIdentity) -> None:
        self.ledger, self.bystander = ledger, bystander
        self.reads = 0

    def _land(self) -> None:
        self.reads += 1
        self.ledger.create_spending_cap(self.bystander, self.reads)

    def read_events(
        self, cursor: str | None = None, filter: EventFilter | None = None, limit: int = 1000
    ) -> EventRead:
        got = self.ledger.read_events(cursor, filter, limit)
        self._land()
        return got

    def events(
        self, cursor: str | None = None, filter: EventFilter | None = None, limit: int = 1000
    ) -> Any:
        got = self.ledger.events(cursor, filter, limit)
        self._land()
        return got

    def __getattr__(self, name: str) -> Any:
        return getattr(self.ledger, name)


class Place:
    """A host with a paid service, a client with a cap, and a bystander, funded."""

    def __init__(self, ledger: Ledger, fund: Any) -> None:
        self.ledger = ledger
        self.server, self.client = HostIdentity.generate(), HostIdentity.generate()
        self.bystander = HostIdentity.generate()
        for who in (self.server, self.client, self.bystander):
            fund(who.sui_address, SUI)
        self.host = ledger.create_host(self.server, self.server.noise_public, [])
        ledger.add_service(self.server, self.host, 7, "raw", SLA)
        self.cap = ledger.create_spending_cap(self.client, SUI)

    def open(self) -> str:
        return self.ledger.open_connection(
            self.client, self.host, 7, self.cap, DEPOSIT
        ).connection_id

    def busy(self) -> Busy:
        return Busy(self.ledger, self.bystander)


@pytest.fixture(params=["local", "sui"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Place]:
    if request.param == "sui":
        network: SuiNetwork = request.getfixturevalue("sui_network")
        yield Place(network.ledger(), network.fund)
        return
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    try:
        yield Place(ledger, ledger.faucet)
    finally:
        ledger.close()


def test_a_scan_ends_while_unrelated_transactions_land(place: Place) -> None:
    """One open and a busy ledger, whose cursor never stops moving: the scan is
    complete, and read one event."""
    opened = place.open()
    busy = place.busy()
    scan = find_connections(busy, client=place.client.sui_address, limit=3_000)  # type: ignore[arg-type]
    assert [r.connection.id for r in scan.reports] == [opened]
    assert scan.complete and scan.events_read == 1
    assert busy.reads >= 1
    host_scan = find_connections(busy, host=place.host)  # type: ignore[arg-type]
    assert [r.connection.id for r in host_scan.reports] == [opened]
    assert host_scan.complete and host_scan.events_read == 1


def test_a_scan_at_its_limit_looks_once_more_for_an_event_left(place: Place) -> None:
    first, second = place.open(), place.open()
    busy = place.busy()
    exact = find_connections(busy, client=place.client.sui_address, limit=2)  # type: ignore[arg-type]
    assert [r.connection.id for r in exact.reports] == [first, second]
    assert exact.complete and exact.events_read == 2  # nothing followed: complete
    third = place.open()
    cut = find_connections(busy, client=place.client.sui_address, limit=2)  # type: ignore[arg-type]
    assert [r.connection.id for r in cut.reports] == [first, second]
    assert not cut.complete and cut.events_read == 2
    whole = find_connections(busy, client=place.client.sui_address, limit=3)  # type: ignore[arg-type]
    assert [r.connection.id for r in whole.reports] == [first, second, third]
    assert whole.complete and whole.events_read == 3


def test_another_hosts_opens_are_not_counted(place: Place) -> None:
    """A host's scan reads the opens of every host (a Sui node filters on the type only)
    but counts those of its own."""
    mine = place.open()
    host = place.ledger.create_host(place.server, place.server.noise_public, [])
    place.ledger.add_service(place.server, host, 7, "raw", SLA)
    for _ in range(2):
        place.ledger.open_connection(place.client, host, 7, place.cap, DEPOSIT)
    scan = find_connections(place.busy(), host=place.host, limit=1)  # type: ignore[arg-type]
    assert [r.connection.id for r in scan.reports] == [mine]
    assert scan.complete and scan.events_read == 1


def test_read_events_says_where_the_end_is(place: Place) -> None:
    """Both ledgers: a read short of its limit is at the end, a full one may not be."""
    place.open()
    place.open()
    wanted = EventFilter(type=OPENED, sender=place.client.sui_address)
    first = place.ledger.read_events(None, wanted, 1)
    assert len(first.events) == 1 and not first.at_end
    rest = place.ledger.read_events(first.cursor, wanted, 5)
    assert len(rest.events) == 1 and rest.at_end
    assert place.ledger.events(first.cursor, wanted, 5)[0] == rest.events


def test_an_open_reports_its_sla_and_deposit_on_every_ledger(place: Place) -> None:
    """``open_connection`` returns the SLA and deposit of its ConnectionOpened event on
    Sui as on LocalLedger (on Sui they were None, so a client metering the connection
    had to read them back)."""
    opened = place.ledger.open_connection(place.client, place.host, 7, place.cap, DEPOSIT)
    assert (opened.sla, opened.deposit) == (SLA, DEPOSIT)
    tc = place.ledger.get_connection(opened.connection_id)
    assert tc.escrow == opened.escrow_id
