"""Deleting what is over, on LocalLedger and on SuiLedger against the node stand-in
(docs/escrow.md §7, §12, §15): a settled connection's TransportControl and Escrow by its
client, a paid or refunded ResponseEscrow by its requester, a ticket holder's entry once
the event went on air, an ended and empty TicketSale by its organizer. After each, the
objects read as unknown; only the payer may delete, only once nothing is owed; MIST is
conserved; and on the stand-in the deleter's gas is net of the objects' storage rebate,
to the MIST."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pysui.sui.sui_grpc.suimsgs.sui.rpc.v2 as sui_prot
import pytest

from dtp.errors import (
    ConnectionStateError,
    NotAuthorized,
    ObjectNotFound,
    PaymentModelError,
    WrongObject,
)
from dtp.identity.keys import HostIdentity
from dtp.ledger._deletion import StorageRebate
from dtp.ledger._objects import HALF_CLOSE_TIMEOUT_MS, Sla
from dtp.ledger.interface import Ledger
from dtp.ledger.local import LocalLedger
from dtp.ledger.sui import SuiConfig, SuiLedger
from dtp.ledger.sui._calls_deletion import deletion_gas
from dtp.testing.receipts import ReceiptTerms
from dtp.testing.sui_node import SuiNodeStandIn
from dtp.testing.sui_node._execute import gas_rates
from dtp.testing.sui_node._objects import COIN_TYPE

FUNDS = 10**10
PORT = 7
SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=1_000)


@dataclass
class World:
    """One ledger with a host (the server's), a client and a stranger, funded."""

    ledger: Ledger
    node: SuiNodeStandIn | None
    server: HostIdentity
    client: HostIdentity
    stranger: HostIdentity
    host_id: str
    minted: int

    def set_clock(self, ms: int) -> None:
        if self.node is not None:
            self.node.set_clock(ms)
        else:
            assert isinstance(self.ledger, LocalLedger)
            self.ledger.set_clock(ms)

    def held(self, who: HostIdentity) -> int:
        """What ``who`` holds, its gas added back (the rules' balance)."""
        paid = self.node.gas_paid(who.sui_address) if self.node is not None else 0
        return self.ledger.balance(who.sui_address) + paid

    def audit(self) -> dict[str, int]:
        if self.node is not None:
            out = self.node.audit()
            out["balances"] += out.pop("gas")
            return out
        assert isinstance(self.ledger, LocalLedger)
        return self.ledger.audit()

    def conserved(self) -> None:
        audit = self.audit()
        assert audit["minted"] == self.minted
        assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]

    def open(self, deposit: int = 5_000) -> tuple[str, str]:
        cap = self.ledger.create_spending_cap(self.client, 10**9)
        opened = self.ledger.open_connection(self.client, self.host_id, PORT, cap, deposit)
        return opened.connection_id, opened.escrow_id


def _world(ledger: Ledger, node: SuiNodeStandIn | None) -> World:
    ids = [
        HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed + 100]) * 32)
        for seed in (21, 22, 23)
    ]
    for who in ids:
        if node is not None:
            node.faucet(who.sui_address, FUNDS)
        else:
            assert isinstance(ledger, LocalLedger)
            ledger.faucet(who.sui_address, FUNDS)
    server, client, stranger = ids
    host_id = ledger.create_host(server, bytes(range(1, 33)), [b"tcp://127.0.0.1:7000"])
    ledger.add_service(server, host_id, PORT, "raw", SLA)
    return World(ledger, node, server, client, stranger, host_id, 3 * FUNDS)


@pytest.fixture(params=["local", "sui"])
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    if request.param == "local":
        ledger = LocalLedger(":memory:", clock_ms=1_000)
        try:
            yield _world(ledger, None)
        finally:
            ledger.close()
        return
    with SuiNodeStandIn(clock_ms=1_000) as node:
        sui = SuiLedger(SuiConfig(node.url, node.package_id, timeout=30.0))
        try:
            yield _world(sui, node)
        finally:
            sui.close()


def _gone(ledger: Ledger, *object_ids: str) -> None:
    for object_id in object_ids:
        with pytest.raises(ObjectNotFound):
            ledger.get_object(object_id)


def _unchanged(world: World, *object_ids: str) -> Any:
    """The objects as read, but their versions (Sui bumps those of a failed
    transaction's mutable inputs)."""
    return [dataclasses.replace(world.ledger.get_object(i), version=0) for i in object_ids]


# -- connections ----------------------------------------------------------------------------------


def test_the_client_deletes_a_connection_its_server_settled(world: World) -> None:
    ledger, client = world.ledger, world.client
    cid, eid = world.open()
    terms = ReceiptTerms.of(ledger, cid, client)
    settlement = ledger.settle_with_receipt(world.server, cid, terms.receipt(10_240, 4))
    assert (settlement.paid, settlement.refunded) == (120, 4_880)
    before = world.held(client)
    ledger.destroy_connection(client, cid)
    _gone(ledger, cid, eid)
    with pytest.raises(ObjectNotFound):
        ledger.get_connection(cid)
    assert ledger.connection_view(cid, world.host_id) is None
    assert world.held(client) == before  # (no MIST moves; on Sui the rebate is gas)
    deleted = [e for e in ledger.events()[0] if e.name == "ConnectionDeleted"]
    assert [(e["connection"], e["escrow"], e["client"]) for e in deleted] == [
        (cid, eid, client.sui_address)
    ]
    world.conserved()


def test_only_the_client_deletes_and_only_once_settled(world: World) -> None:
    ledger = world.ledger
    cid, eid = world.open()
    ledger.close_connection(world.client, cid)
    with pytest.raises(ConnectionStateError) as refused:
        ledger.destroy_connection(world.client, cid)
    assert refused.value.name == "ENotSettled"
    ledger.settle(world.server, cid)
    before = _unchanged(world, cid, eid)
    for who in (world.server, world.stranger):
        with pytest.raises(NotAuthorized) as refused_who:
            ledger.destroy_connection(who, cid)
        assert refused_who.value.name == "ENotClient"
    other, other_escrow = world.open()
    ledger.settle(world.server, other)
    with pytest.raises(Exception) as wrong:
        ledger.destroy_connection(world.client, cid, escrow_id=other_escrow)
    assert getattr(wrong.value, "name", None) == "EWrongEscrow"
    after = _unchanged(world, cid, eid)
    assert after == before
    world.conserved()


def test_the_clients_own_settlement_deletes_in_the_same_step(world: World) -> None:
    ledger, client = world.ledger, world.client
    cid, eid = world.open(deposit=3_000)
    ledger.close_connection(client, cid)
    world.set_clock(1_000 + HALF_CLOSE_TIMEOUT_MS + 1)
    before = world.held(client)
    settlement = ledger.settle_and_destroy(client, cid)
    assert (settlement.claimed, settlement.refunded) == (0, 3_000)
    _gone(ledger, cid, eid)
    assert world.held(client) == before + 3_000
    world.conserved()


# -- sponsored connections ---------------------------------------------------------------------


def _sponsored(world: World, share_bps: int, deposit: int = 5_000) -> tuple[str, str, str]:
    """A sponsored connection of the client's through a one-lane pool of the server's,
    funded with 10,000: (connection, escrow, lane)."""
    ledger = world.ledger
    pool = ledger.create_sponsor_pool(
        world.server, world.host_id, PORT, share_bps, max_pledge=10**9, lanes=1
    )
    ledger.fund_sponsor_pool(world.server, pool, 10_000)
    cap = ledger.create_spending_cap(world.client, 10**9)
    opened = ledger.open_sponsored_connection(world.client, pool, cap, deposit)
    return opened.connection_id, opened.escrow_id, ledger.get_sponsor_pool(pool).lanes[0]


@pytest.mark.parametrize("settled_by", ["server", "client"])
def test_a_sponsored_connection_is_reimbursed_as_it_is_deleted(
    world: World, settled_by: str
) -> None:
    # the lane's pledge is released and the client paid its share, to the MIST, whoever
    # settled: the server (then the client deletes) or the client (in the same step)
    ledger, client = world.ledger, world.client
    cid, eid, lane = _sponsored(world, share_bps=2_500)
    assert ledger.get_connection(cid).sponsor == lane
    assert ledger.get_sponsor_lane(lane).reserved == 1_250  # (a quarter of the deposit)
    receipt = ReceiptTerms.of(ledger, cid, client).receipt(51_200, 10)  # 550 MIST
    before = world.held(client)
    if settled_by == "server":
        ledger.settle_with_receipt(world.server, cid, receipt)
        assert ledger.reimburse_and_destroy(client, cid) == 137  # floor(550 / 4)
    else:
        ledger.claim(world.server, eid, receipt)
        ledger.close_connection(client, cid)
        world.set_clock(1_000 + HALF_CLOSE_TIMEOUT_MS + 1)
        assert ledger.settle_and_destroy(client, cid).refunded == 4_450
    _gone(ledger, cid, eid)
    after = ledger.get_sponsor_lane(lane)
    assert (after.funds, after.reserved, after.pledges) == (10_000 - 137, 0, 0)
    # (held counts the gas back: the refund and the reimbursement, exactly)
    assert world.held(client) == before + 4_450 + 137
    names = [
        e.name for e in ledger.events()[0] if e.name in ("SponsorReimbursed", "ConnectionDeleted")
    ]
    assert names == ["SponsorReimbursed", "ConnectionDeleted"]
    world.conserved()


def test_a_plain_destroy_of_a_sponsored_connection_is_refused(world: World) -> None:
    ledger, client = world.ledger, world.client
    cid, eid, lane = _sponsored(world, share_bps=10_000)
    ledger.settle(world.server, cid)
    before = _unchanged(world, cid, eid), ledger.get_sponsor_lane(lane)
    with pytest.raises(ConnectionStateError) as refused:
        ledger.destroy_connection(client, cid)
    assert refused.value.name == "ESponsored"
    after = _unchanged(world, cid, eid), ledger.get_sponsor_lane(lane)
    assert after == before
    assert ledger.get_sponsor_lane(lane).reserved == 5_000
    # (the server settled at once, nothing claimed: nothing is reimbursed, all released)
    assert ledger.reimburse_and_destroy(client, cid) == 0
    assert ledger.get_sponsor_lane(lane).reserved == 0
    world.conserved()


def test_only_a_sponsored_connection_is_deleted_through_a_lane(world: World) -> None:
    ledger, client = world.ledger, world.client
    plain, _ = world.open()
    ledger.settle(world.server, plain)
    with pytest.raises(WrongObject) as refused:
        ledger.reimburse_and_destroy(client, plain)
    assert refused.value.name == "ENotSponsored"
    cid, _, lane = _sponsored(world, share_bps=10_000)
    ledger.settle(world.server, cid)
    with pytest.raises(NotAuthorized) as server:
        ledger.reimburse_and_destroy(world.server, cid)
    assert server.value.name == "ENotClient"
    assert ledger.get_sponsor_lane(lane).pledges == 1
    ledger.destroy_connection(client, plain)  # (a plain one is destroy's)
    world.conserved()


# -- the rebate, to the MIST, on the stand-in ---------------------------------------------------


@pytest.fixture
def node_world() -> Iterator[World]:
    with SuiNodeStandIn(clock_ms=1_000) as node:
        sui = SuiLedger(SuiConfig(node.url, node.package_id, timeout=30.0))
        try:
            yield _world(sui, node)
        finally:
            sui.close()


def _gas_used(node: SuiNodeStandIn, digest: str) -> Any:
    done = node.state.transaction(digest)
    assert done is not None
    return sui_prot.ExecutedTransaction.parse(done[1]).effects.gas_used


def test_the_deleting_client_is_credited_the_storage_rebate(node_world: World) -> None:
    world, node = node_world, node_world.node
    assert node is not None and isinstance(world.ledger, SuiLedger)
    ledger, client = world.ledger, world.client
    cid, eid = world.open()
    ledger.settle(world.server, cid)
    rows = [node.state.object(i) for i in (cid, eid)]
    assert all(r is not None for r in rows)
    bps = gas_rates()["rebate_bps"]
    objects_rebate = sum(r.storage_rebate * bps // 10_000 for r in rows if r is not None)
    estimate = ledger.storage_rebate([cid, eid])
    assert estimate.rebate == objects_rebate
    price = 1_000
    assert estimate.gas == deletion_gas(price) and estimate.worth
    gas_coins = node.state.owned(client.sui_address, COIN_TYPE, "", 1000)
    held_before = ledger.balance(client.sui_address)
    paid_before = node.gas_paid(client.sui_address)
    ledger.destroy_connection(client, cid)
    outcome = ledger.last_outcome
    assert outcome is not None
    used = _gas_used(node, outcome.digest)
    # the rebate: the deleted objects' (99 % of the storage they paid) and the gas coin's
    # own old version's, nothing else
    coin_rebate = used.storage_rebate - objects_rebate
    coin_rows = {c.id: c for c in gas_coins}
    assert coin_rebate in {c.storage_rebate * bps // 10_000 for c in coin_rows.values()}
    assert used.computation_cost == price * gas_rates()["units_per_command"]
    net = used.computation_cost + used.storage_cost - used.storage_rebate
    assert net == outcome.gas_cost < 0  # the client gained: the rebate beat the gas
    assert ledger.balance(client.sui_address) == held_before - net
    assert node.gas_paid(client.sui_address) == paid_before + net
    assert -net == estimate.rebate - estimate.gas
    world.conserved()


def test_settle_and_destroy_is_one_transaction_on_sui(node_world: World) -> None:
    world, node = node_world, node_world.node
    assert node is not None and isinstance(world.ledger, SuiLedger)
    ledger, client = world.ledger, world.client
    cid, eid = world.open(deposit=2_000)
    ledger.close_connection(client, cid)
    node.set_clock(1_000 + HALF_CLOSE_TIMEOUT_MS + 1)
    ledger.settle_and_destroy(client, cid)
    outcome = ledger.last_outcome
    assert outcome is not None
    names = [e.name for e in outcome.events]
    assert names[-2:] == ["ConnectionSettled", "ConnectionDeleted"]
    assert node.state.object(cid) is None and node.state.object(eid) is None
    world.conserved()


# -- response escrows -----------------------------------------------------------------------------


def test_the_requester_deletes_its_response_escrow_once_closed(world: World) -> None:
    ledger, client = world.ledger, world.client
    refunded = ledger.response_escrow_deposit(client, world.server.sui_address, b"r1", 300, 5_000)
    delivered = ledger.response_escrow_deposit(client, world.server.sui_address, b"r2", 400, 5_000)
    with pytest.raises(ConnectionStateError) as still_open:
        ledger.destroy_response_escrow(client, delivered)
    assert still_open.value.name == "EEscrowOpen"
    assert ledger.response_escrow_deliver(world.server, delivered, b"answer") == 400
    with pytest.raises(NotAuthorized):
        ledger.destroy_response_escrow(world.server, delivered)
    ledger.destroy_response_escrow(client, delivered)
    world.set_clock(5_001)
    assert ledger.refund_and_destroy_response_escrow(client, refunded) == 300
    for escrow_id in (refunded, delivered):
        with pytest.raises(ObjectNotFound):
            ledger.get_response_escrow(escrow_id)
    names = [e.name for e in ledger.events()[0] if e.module == "response_escrow"]
    assert names.count("ResponseEscrowDeleted") == 2
    world.conserved()


# -- ticket sales ----------------------------------------------------------------------------------


def test_holders_leave_and_the_organizer_deletes_an_aired_sale(world: World) -> None:
    ledger = world.ledger
    organizer, buyer, other = world.server, world.client, world.stranger
    sale = ledger.create_ticket_sale(organizer, "show", 50, 1, 0, 10_000)
    ledger.buy_tickets(buyer, sale, 2)
    ledger.buy_tickets(other, sale, 1)
    with pytest.raises(PaymentModelError) as live:
        ledger.leave_ticket_sale(buyer, sale)
    assert live.value.name == "ENotOnAir"
    with pytest.raises(PaymentModelError) as not_over:
        ledger.destroy_ticket_sale(organizer, sale)
    assert not_over.value.name == "ESaleNotOver"
    assert ledger.go_on_air(organizer, sale) == 150
    assert ledger.leave_ticket_sale(buyer, sale) == 2
    after = ledger.get_ticket_sale(sale)
    assert buyer.sui_address not in after.holders and after.sold == 3
    with pytest.raises(PaymentModelError) as held:
        ledger.destroy_ticket_sale(organizer, sale)
    assert held.value.name == "ETicketsHeld"
    assert ledger.leave_ticket_sale(other, sale) == 1
    with pytest.raises(NotAuthorized):
        ledger.destroy_ticket_sale(buyer, sale)
    ledger.destroy_ticket_sale(organizer, sale)
    with pytest.raises(ObjectNotFound):
        ledger.get_ticket_sale(sale)
    world.conserved()


def test_a_missed_sale_is_deleted_once_every_buyer_is_refunded(world: World) -> None:
    ledger = world.ledger
    sale = ledger.create_ticket_sale(world.server, "show", 50, 5, 0, 10_000)
    ledger.buy_tickets(world.client, sale, 1)
    world.set_clock(10_001)
    with pytest.raises(PaymentModelError):
        ledger.destroy_ticket_sale(world.server, sale)
    assert ledger.refund_tickets(world.client, sale) == 50
    ledger.destroy_ticket_sale(world.server, sale)
    with pytest.raises(ObjectNotFound):
        ledger.get_ticket_sale(sale)
    world.conserved()


def test_a_ledger_without_gas_always_finds_a_deletion_worth_it() -> None:
    free = StorageRebate.free()
    assert free.worth and free.net == 0
    assert not StorageRebate(100, 200).worth and StorageRebate(201, 200).worth
