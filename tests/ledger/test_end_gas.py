"""What a connection's end costs in gas, what an address paid, and batched settlements
(dtp.ledger._gas, SuiLedger's GasBook and settle_batch), on the Sui node stand-in --
which charges gas by an exact formula (dtp/testing/sui_node/_execute.py) and counts
what each address paid -- and on a LocalLedger, which charges none."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from dtp.errors import ConnectionStateError, InvalidArgument
from dtp.identity.keys import HostIdentity
from dtp.ledger._gas import EndGas
from dtp.ledger._objects import ConnectionState, Sla
from dtp.ledger.interface import Ledger, SettleItem
from dtp.ledger.local import LocalLedger
from dtp.ledger.receipt import Receipt, fee
from dtp.ledger.sui import SuiConfig, SuiLedger
from dtp.testing.sui_node import SuiNodeStandIn

SLA = Sla(price_per_kib=10, price_per_request=0, min_deposit=1_000_000)
DEPOSIT = 5_000_000
PORT = 7000


@dataclass
class Place:
    ledger: Ledger
    provider: HostIdentity
    host: str
    node: SuiNodeStandIn | None

    def client(self) -> tuple[HostIdentity, Ledger]:
        identity = HostIdentity.generate()
        if self.node is not None:
            self.node.faucet(identity.sui_address, 10**10)
            return identity, SuiLedger(SuiConfig(self.node.url, self.node.package_id))
        assert isinstance(self.ledger, LocalLedger)
        self.ledger.faucet(identity.sui_address, 10**10)
        return identity, self.ledger

    def opened(self, kib: int = 100) -> tuple[str, Receipt]:
        """A connection of a new client, and a receipt of it for ``kib`` KiB."""
        client, ledger = self.client()
        cap = ledger.create_spending_cap(client, DEPOSIT)
        opened = ledger.open_connection(client, self.host, PORT, cap, DEPOSIT)
        cid = opened.connection_id
        amount = fee(SLA, kib * 1024, 0)
        return cid, Receipt(ledger.receipt_scope(cid), kib * 1024, 0, amount, 1).sign(client)


@pytest.fixture(params=["sui", "local"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Place]:
    provider = HostIdentity.generate()
    if request.param == "local":
        ledger: Ledger = LocalLedger(tmp_path / "ledger.db")
        assert isinstance(ledger, LocalLedger)
        ledger.faucet(provider.sui_address, 10**10)
        host = ledger.create_host(provider, provider.noise_public)
        ledger.add_service(provider, host, PORT, "raw", SLA)
        yield Place(ledger, provider, host, None)
        ledger.close()
        return
    with SuiNodeStandIn(clock_ms=0) as node:
        node.faucet(provider.sui_address, 10**10)
        ledger = SuiLedger(SuiConfig(node.url, node.package_id))
        host = ledger.create_host(provider, provider.noise_public)
        ledger.add_service(provider, host, PORT, "raw", SLA)
        yield Place(ledger, provider, host, node)
        ledger.close()
        node.state.check()


def test_the_gas_an_address_paid_is_what_the_node_charged(place: Place) -> None:
    """Every transaction's net gas, sorted by kind (the host's set-up, the ends)."""
    cid, receipt = place.opened()
    place.ledger.settle_with_receipt(place.provider, cid, receipt)
    spent = place.ledger.gas_spent(place.provider.sui_address)
    if place.node is None:
        assert spent.total == spent.transactions == 0  # (no gas)
        return
    assert spent.total == place.node.gas_paid(place.provider.sui_address) > 0
    assert spent.transactions == 3  # the host, its service, the settlement
    assert set(spent.by_kind) == {"host", "ends"}
    assert spent.by_kind["ends"] == place.ledger.last_outcome.gas_cost  # type: ignore[attr-defined]


@pytest.mark.parametrize("place", ["sui"], indirect=True)  # (a LocalLedger charges none)
def test_a_failed_transaction_is_paid_for_too(place: Place) -> None:
    assert place.node is not None
    cid, _ = place.opened()
    place.ledger.settle(place.provider, cid)
    before = place.ledger.gas_spent(place.provider.sui_address).total
    with pytest.raises(ConnectionStateError):
        place.ledger.settle(place.provider, cid)  # EAlreadySettled, executed and charged
    after = place.ledger.gas_spent(place.provider.sui_address)
    assert after.total > before
    assert after.total == place.node.gas_paid(place.provider.sui_address)


def test_an_end_is_estimated_before_any_and_measured_after(place: Place) -> None:
    gas = place.ledger.end_gas()
    if place.node is None:
        assert gas == EndGas.free() and not gas.charged
        return
    # before any end: the model, at the network's gas price (the stand-in's 1000)
    assert not gas.observed and gas.charged
    cid, receipt = place.opened()
    place.ledger.settle_with_receipt(place.provider, cid, receipt)
    paid = place.ledger.last_outcome.gas_cost  # type: ignore[attr-defined]
    # the model is the stand-in's charging formula: within a fraction of a percent
    assert abs(gas.settle_claim - paid) < paid // 100
    measured = place.ledger.end_gas()
    assert measured.settle_claim == paid
    other, _ = place.opened()
    place.ledger.settle(place.provider, other)  # nothing claimed: the whole deposit back
    refund = place.ledger.last_outcome.gas_cost  # type: ignore[attr-defined]
    assert abs(gas.settle_refund - refund) < refund // 100
    assert place.ledger.end_gas().settle_refund == refund < paid  # one coin fewer


def test_a_claim_alone_is_estimated_before_any_and_measured_after(place: Place) -> None:
    """What a claim made while its connection lives costs (docs/escrow.md §7.1): one
    coin to the server, the escrow rewritten -- as a settlement that claims nothing."""
    gas = place.ledger.end_gas()
    if place.node is None:
        assert gas.claim == 0
        return
    assert gas.claim < gas.settle_refund  # (the model: one coin, the escrow alone rewritten)
    cid, receipt = place.opened()
    escrow_id = place.ledger.get_connection(cid).escrow
    assert place.ledger.claim(place.provider, escrow_id, receipt) == receipt.total_amount
    paid = place.ledger.last_outcome.gas_cost  # type: ignore[attr-defined]
    assert abs(gas.claim - paid) < paid // 100
    assert place.ledger.end_gas().claim == paid
    assert place.ledger.end_gas().settle_claim == gas.settle_claim  # (not mixed up)


def test_a_batch_settles_several_connections_in_one_transaction(place: Place) -> None:
    ends = [place.opened(kib) for kib in (100, 200, 300)]
    solo, solo_receipt = place.opened(50)
    place.ledger.settle_with_receipt(place.provider, solo, solo_receipt)
    one = place.ledger.gas_spent(place.provider.sui_address)
    settled = place.ledger.settle_batch(
        place.provider, [SettleItem(cid, receipt) for cid, receipt in ends]
    )
    after = place.ledger.gas_spent(place.provider.sui_address)
    for (cid, receipt), settlement in zip(ends, settled, strict=True):
        assert settlement.paid == settlement.claimed == receipt.total_amount
        assert settlement.refunded == DEPOSIT - receipt.total_amount
        tc = place.ledger.get_connection(cid)
        assert tc.settled and tc.state == ConnectionState.CLOSED
    if place.node is None:
        return
    assert after.transactions == one.transactions + 1  # one transaction for the three
    solo_gas = place.ledger.end_gas().settle_claim
    batch_gas = after.total - one.total
    assert batch_gas < 3 * solo_gas  # (the server's payment is one coin)
    # what one more settlement adds to a batch is measured from it
    assert place.ledger.end_gas().batch_claim == (batch_gas - solo_gas) // 2


def test_a_batch_is_all_or_nothing(place: Place) -> None:
    (first, r1), (second, r2) = place.opened(), place.opened()
    place.ledger.settle(place.provider, second)  # settled meanwhile
    items = [SettleItem(first, r1), SettleItem(second, r2)]
    with pytest.raises(ConnectionStateError):
        place.ledger.settle_batch(place.provider, items)
    if place.node is not None:
        # (one transaction: the first's settlement undone with the second's)
        assert not place.ledger.get_connection(first).settled
        assert place.ledger.get_escrow(place.ledger.get_connection(first).escrow).claimed == 0
    # (a LocalLedger settles one after the other: the first went through)


def test_a_batch_refuses_a_connection_twice_and_bad_items_before_any_transaction(
    place: Place,
) -> None:
    cid, receipt = place.opened()
    before = place.ledger.gas_spent(place.provider.sui_address)
    if place.node is not None:
        with pytest.raises(InvalidArgument, match="twice"):
            place.ledger.settle_batch(
                place.provider,
                [SettleItem(cid, receipt), SettleItem(cid.upper().replace("0X", "0x"))],
            )
    with pytest.raises(InvalidArgument):
        place.ledger.settle_batch(place.provider, [cid])  # type: ignore[list-item]
    with pytest.raises(InvalidArgument):
        place.ledger.settle_batch(place.provider, "not a list")  # type: ignore[arg-type]
    assert place.ledger.gas_spent(place.provider.sui_address) == before
    assert place.ledger.settle_batch(place.provider, []) == []
    assert not place.ledger.get_connection(cid).settled
