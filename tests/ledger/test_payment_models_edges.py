"""Adversarial checks of the payment models (docs/escrow.md §13-16) on LocalLedger over a
real SQLite file: the typed helpers refuse what no u64 argument could be, and the edges
of the rules (u64 overflow, the boundary epoch or millisecond, a change of host
authority) hold with MIST conserved and a refused call changing nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from dtp.errors import (
    ChainError,
    InvalidArgument,
    NotAuthorized,
    PaymentModelError,
)
from dtp.identity.keys import HostIdentity
from dtp.ledger._economics import BPS, sponsor_split
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.payments.receipts import Receipt
from tests.support.sponsor_lanes import pool_totals

U64_MAX = 2**64 - 1
SLA = Sla(10, 5, 100)


def ident(seed: int) -> HostIdentity:
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


PROVIDER, CLIENT, HEIR = ident(0x51), ident(0x52), ident(0x53)


class World:
    """A host with one service (port 7) owned by PROVIDER, a capped CLIENT, on a file."""

    def __init__(
        self, path: Path, client_funds: int = 100_000, provider_funds: int = 100_000
    ) -> None:
        self.ledger = LocalLedger(path, clock_ms=0)
        self.host = self.ledger.create_host(PROVIDER, b"\x05" * 32)
        self.ledger.add_service(PROVIDER, self.host, 7, "raw", SLA)
        self.ledger.faucet(PROVIDER.sui_address, provider_funds)
        self.ledger.faucet(CLIENT.sui_address, client_funds)
        self.cap = self.ledger.create_spending_cap(CLIENT, 10**9)

    def conserved(self) -> None:
        a = self.ledger.audit()
        assert a["minted"] == a["balances"] + a["escrows"] + a["broadcasts"], a

    def refused(self, exc: type[ChainError], name: str, call: Any, *args: Any) -> None:
        before = self.ledger.dump()
        with pytest.raises(exc) as info:
            call(*args)
        assert info.value.name == name, info.value
        assert self.ledger.dump() == before, "a refused call changed the ledger"
        self.conserved()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path / "ledger.sqlite")
    yield w
    w.ledger.close()


# -- typed helpers refuse what no Move call can be given -------------------------------------


@pytest.mark.parametrize("fee", [-1, -10_000, 2**64, 1.5, True, "100", None])
def test_sponsor_quote_refuses_a_fee_that_is_no_u64(world: World, fee: Any) -> None:
    pool = world.ledger.create_sponsor_pool(PROVIDER, world.host, 7, 5_000, max_pledge=10**9)
    quoted = world.ledger.get_sponsor_pool(pool)
    # before: -1 quoted (0, -1), 2**64 a split no u64 fee has, True (0, 0), 1.5 floats
    with pytest.raises(InvalidArgument, match="fee"):
        quoted.quote(fee)
    with pytest.raises(InvalidArgument, match="fee"):
        sponsor_split(fee, 5_000)


def test_sponsor_quote_at_the_u64_edge_matches_the_pledge_rule(world: World) -> None:
    pool = world.ledger.create_sponsor_pool(PROVIDER, world.host, 7, 3_333, max_pledge=10**9)
    client_part, provider_part = world.ledger.get_sponsor_pool(pool).quote(U64_MAX)
    assert provider_part == U64_MAX * 3_333 // BPS  # Move's u128 product, rounded down
    assert client_part + provider_part == U64_MAX
    assert sponsor_split(0, BPS) == (0, 0)
    assert sponsor_split(7, 0) == (7, 0)


@pytest.mark.parametrize("share", [-1, BPS + 1, 2**64, True])
def test_sponsor_split_refuses_a_share_outside_basis_points(share: Any) -> None:
    # before: a share of -1 or 10001 gave a negative part to one side
    with pytest.raises(InvalidArgument, match="share_bps"):
        sponsor_split(100, share)


@pytest.mark.parametrize("size", [-1, 2.5, True, None])
def test_retention_deposit_refuses_a_size_that_is_no_length(world: World, size: Any) -> None:
    terms_id = world.ledger.create_retention_terms(PROVIDER, world.host, 7, 1_000, 3)
    terms = world.ledger.get_retention_terms(terms_id)
    # before: -1 gave a deposit of -3 MIST and 2.5 one of 7.5
    with pytest.raises(InvalidArgument, match="size"):
        terms.deposit_for(size)
    assert terms.deposit_for(0) == 0
    assert terms.deposit_for(11) == 33


def test_a_ticket_sale_is_hashable_like_the_other_ledger_objects(world: World) -> None:
    sale_id = world.ledger.create_ticket_sale(PROVIDER, "show", 10, 1, 0, 1_000)
    world.ledger.buy_tickets(CLIENT, sale_id, 2)
    first, again = world.ledger.get_ticket_sale(sale_id), world.ledger.get_ticket_sale(sale_id)
    # before: hash() raised TypeError (the holders dict), unlike every other frozen object
    assert (
        len(
            {
                first,
                again,
                world.ledger.get_sponsor_pool(
                    world.ledger.create_sponsor_pool(PROVIDER, world.host, 7, 1, max_pledge=10**9)
                ),
            }
        )
        == 2
    )
    assert first == again and hash(first) == hash(again)
    assert first.holders == {CLIENT.sui_address: 2}
    world.ledger.buy_tickets(CLIENT, sale_id, 1)
    assert world.ledger.get_ticket_sale(sale_id) != first


# -- u64 edges ---------------------------------------------------------------------------------


def test_subscribing_or_renewing_past_the_last_epoch_aborts_and_changes_nothing(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    # the whole supply to the client: any u64 payment can be made
    w = World(tmp_path / "ledger.sqlite", client_funds=U64_MAX, provider_funds=0)
    ledger, host = w.ledger, w.host
    request.addfinalizer(ledger.close)
    offer = ledger.create_subscription_offer(PROVIDER, host, 7, 1, 1)
    ledger.advance_epoch()
    # start_epoch + epochs passes 2**64-1: Move aborts on the u64 sum, so must this
    w.refused(ChainError, "ArithmeticError", ledger.subscribe, CLIENT, offer, U64_MAX)
    sub = ledger.subscribe(CLIENT, offer, 1)  # epoch 1, expires 2
    w.refused(ChainError, "ArithmeticError", ledger.renew_subscription, CLIENT, sub, U64_MAX - 1)
    assert ledger.renew_subscription(CLIENT, sub, U64_MAX - 2) == U64_MAX  # the last one fits
    assert ledger.get_subscription(sub).funds == U64_MAX - 1
    assert ledger.balance(CLIENT.sui_address) == 1
    w.conserved()


# -- epoch and millisecond boundaries ----------------------------------------------------------


def test_withdrawal_in_the_epoch_of_purchase_keeps_only_that_epoch(world: World) -> None:
    ledger = world.ledger
    ledger.advance_epoch()
    ledger.advance_epoch()
    offer = ledger.create_subscription_offer(PROVIDER, world.host, 7, 40, 1)
    sub = ledger.subscribe(CLIENT, offer, 3)  # epochs 2, 3, 4
    ledger.withdraw_subscription_offer(PROVIDER, offer)
    world.refused(
        PaymentModelError, "EOfferWithdrawn", ledger.open_subscribed_connection, CLIENT, sub,
        world.cap,
    )  # fmt: skip
    assert ledger.refund_subscription(CLIENT, sub) == 80  # epochs 3 and 4 had not begun
    ledger.advance_epoch()
    ledger.advance_epoch()
    assert ledger.claim_subscription(PROVIDER, sub) == 40  # epoch 2 only, however late
    assert ledger.claim_subscription(PROVIDER, sub) == 0
    s = ledger.get_subscription(sub)
    assert (s.start_epoch, s.expires_epoch, s.claimed_epochs, s.funds) == (2, 3, 1, 0)
    world.conserved()


def test_expired_renewal_pays_the_gap_to_no_one(world: World) -> None:
    ledger = world.ledger
    offer = ledger.create_subscription_offer(PROVIDER, world.host, 7, 10, 2)
    sub = ledger.subscribe(CLIENT, offer, 2)  # epochs 0, 1
    assert ledger.claim_subscription(PROVIDER, sub) == 10  # epoch 0 began
    for _ in range(5):
        ledger.advance_epoch()
    before = ledger.balance(PROVIDER.sui_address)
    assert ledger.renew_subscription(CLIENT, sub, 4) == 9  # restarts at epoch 5
    assert ledger.balance(PROVIDER.sui_address) == before + 10  # epoch 1, paid at renewal
    s = ledger.get_subscription(sub)
    assert (s.start_epoch, s.claimed_epochs, s.funds) == (5, 0, 40)
    assert not s.is_live(4) and s.is_live(5) and s.is_live(8) and not s.is_live(9)
    world.conserved()


def test_ticket_deadline_is_the_last_millisecond_to_buy_and_air(world: World) -> None:
    ledger = world.ledger
    sale = ledger.create_ticket_sale(PROVIDER, "show", 25, 2, 3, 5_000)
    ledger.buy_tickets(CLIENT, sale, 1)
    ledger.set_clock(5_000)
    ledger.buy_tickets(CLIENT, sale, 1)  # at the deadline: still selling
    world.refused(ChainError, "ESoldOut", ledger.buy_tickets, CLIENT, sale, 2)
    world.refused(PaymentModelError, "ERefundNotOpen", ledger.refund_tickets, CLIENT, sale)
    assert ledger.go_on_air(PROVIDER, sale) == 50
    ledger.set_clock(5_001)
    world.refused(PaymentModelError, "ERefundNotOpen", ledger.refund_tickets, CLIENT, sale)
    assert ledger.get_ticket_sale(sale).funds == 0
    world.conserved()


def test_retained_record_is_deletable_from_its_exact_millisecond(world: World) -> None:
    ledger = world.ledger
    ledger.set_clock(1_000)
    terms = ledger.create_retention_terms(PROVIDER, world.host, 7, 2_500, 4)
    opened = ledger.open_connection(CLIENT, world.host, 7, world.cap, 100)
    pipe = ledger.create_pipe(CLIENT, opened.connection_id, 1)
    record = ledger.send_retained(CLIENT, pipe, terms, 0, b"abc")
    assert ledger.get_retained_record(record).delete_after_ms == 3_500
    ledger.confirm_consumed(PROVIDER, record)
    ledger.set_clock(3_499)
    world.refused(PaymentModelError, "ERetentionNotElapsed", ledger.delete_retained, CLIENT, record)
    ledger.set_clock(3_500)
    assert ledger.delete_retained(CLIENT, record) == 12
    world.conserved()


# -- authorization after the host changes hands ------------------------------------------------


def test_a_new_authority_cannot_take_the_old_providers_money(world: World) -> None:
    ledger = world.ledger
    offer = ledger.create_subscription_offer(PROVIDER, world.host, 7, 30, 1)
    sub = ledger.subscribe(CLIENT, offer, 2)
    pool = ledger.create_sponsor_pool(PROVIDER, world.host, 7, 10_000, max_pledge=10**9, lanes=2)
    ledger.fund_sponsor_pool(PROVIDER, pool, 1_000)  # 500 in each lane
    opened = ledger.open_sponsored_connection(CLIENT, pool, world.cap, 400)
    ledger.set_authority(PROVIDER, world.host, HEIR.sui_address)
    ledger.faucet(HEIR.sui_address, 1)
    # The offer's earnings and the pool stay their creator's: the heir neither claims nor
    # withdraws nor bounds the pledges, and the old authority makes no new ones.
    world.refused(NotAuthorized, "ENotProvider", ledger.claim_subscription, HEIR, sub)
    # The heir may withdraw the offer, which sells nothing for the host any more
    # (docs/escrow.md §13): the epoch begun stays the provider's, the other the holder's.
    ledger.withdraw_subscription_offer(HEIR, offer)
    assert ledger.refund_subscription(CLIENT, sub) == 30
    world.refused(NotAuthorized, "ENotProvider", ledger.withdraw_sponsor_pool, HEIR, pool, 1)
    world.refused(NotAuthorized, "ENotProvider", ledger.set_sponsor_max_pledge, HEIR, pool, 1)
    world.refused(
        NotAuthorized,
        "ENotProvider",
        partial(ledger.create_sponsor_pool, max_pledge=1),
        PROVIDER,
        world.host,
        7,
        1,
    )
    # Nor does the pool pay back the heir's fees: it sponsors no new connection
    # (docs/escrow.md §14), whatever it holds.
    world.refused(
        PaymentModelError,
        "EProviderChanged",
        ledger.open_sponsored_connection,
        CLIENT,
        pool,
        world.cap,
        400,
    )
    # A pledge made before the handover still binds the pool.
    world.refused(ChainError, "ENotParticipant", ledger.settle, HEIR, opened.connection_id)
    receipt = Receipt(ledger.receipt_scope(opened.connection_id), 0, 20, 100, 1).sign(CLIENT)
    ledger.settle_with_receipt(PROVIDER, opened.connection_id, receipt)
    assert ledger.reimburse(HEIR, pool, opened.connection_id) == 100
    assert pool_totals(ledger, pool) == (900, 0)
    # what is left is still the provider's, from both lanes: nothing stays locked in a
    # pool nobody uses
    ledger.withdraw_sponsor_pool(PROVIDER, pool, 900)
    assert pool_totals(ledger, pool) == (0, 0)
    assert ledger.claim_subscription(PROVIDER, sub) == 30
    # Once the host is back with its provider, the pool sponsors again.
    ledger.set_authority(HEIR, world.host, PROVIDER.sui_address)
    ledger.fund_sponsor_pool(PROVIDER, pool, 800)  # 400 in each lane
    ledger.open_sponsored_connection(CLIENT, pool, world.cap, 400)
    assert pool_totals(ledger, pool) == (800, 400)
    world.conserved()
