"""The spending cap (docs/escrow.md §4) on LocalLedger and, through SuiLedger, on the Sui
node stand-in: an open or a top-up needs ``claimed this epoch + outstanding + amount <=
max_per_epoch``, so no epoch's claims exceed the cap however many epochs the deposits
were paid in; claims charge the cap nothing and are never refused for it (no spending of
the client elsewhere, no lowering can make a provider's claim fail); a reservation of 0
always fits; the escrow reports its claims at its next top-up or its settlement, counted
in the epoch they were made in; the settlement releases the refund."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dtp.errors import ReplayedReceipt, SpendingCapExceeded
from dtp.ledger._objects import Sla, SpendingCap
from dtp.ledger.local import LocalLedger
from dtp.payments.receipts import Receipt, fee
from dtp.testing.sui_node import SuiNodeStandIn
from tests.ledger.scenario_runner import ACTORS, LocalWorld, World

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=1000)
SERVER, CLIENT = ACTORS["server"], ACTORS["client"]


class Place:
    """A host with one service (port 7) and a client with 100 000 MIST and a cap, on a
    World (LocalLedger, or SuiLedger on the stand-in with balances net of gas)."""

    def __init__(self, world: World, cap_limit: int) -> None:
        self.world = world
        self.ledger = world.ledger
        self.host = self.ledger.create_host(SERVER, b"\x01" * 32)
        self.ledger.add_service(SERVER, self.host, 7, "raw", SLA)
        world.fund(CLIENT.sui_address, 100_000)
        self.cap = self.ledger.create_spending_cap(CLIENT, cap_limit)

    def open(self, deposit: int = 1000) -> tuple[str, str]:
        opened = self.ledger.open_connection(CLIENT, self.host, 7, self.cap, deposit)
        return opened.connection_id, opened.escrow_id

    def cap_now(self) -> SpendingCap:
        return self.ledger.get_cap(self.cap)

    def counts(self) -> tuple[int, int]:
        """(claims counted in the current epoch, outstanding)."""
        cap, epoch = self.cap_now(), self.ledger.epoch()
        return (cap.claimed if cap.epoch == epoch else 0), cap.outstanding

    def remaining(self) -> int:
        return self.cap_now().remaining(self.ledger.epoch())

    def receipt(self, conn: str, kib: int, requests: int, nonce: int) -> Receipt:
        amount = fee(SLA, kib * 1024, requests)
        return Receipt(self.ledger.receipt_scope(conn), kib * 1024, requests, amount, nonce).sign(
            CLIENT
        )

    def refused(self, call: Any, *args: Any, **kwargs: Any) -> SpendingCapExceeded:
        before = self.world.snapshot()
        with pytest.raises(SpendingCapExceeded) as info:
            call(*args, **kwargs)
        assert info.value.qualified_name == "spending_cap::ESpendingCapExceeded"
        assert self.world.snapshot() == before, "a refused call changed the ledger"
        return info.value


@pytest.fixture(params=["local", "standin"])
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    if request.param == "local":
        yield LocalWorld()
        return
    from tests.ledger.test_sui_on_standin import SuiWorld

    with SuiNodeStandIn(clock_ms=0) as node:
        yield SuiWorld(node)


@pytest.fixture
def place(world: World) -> Place:
    return Place(world, cap_limit=2000)


def test_the_open_reserves_the_whole_deposit(place: Place) -> None:
    _, escrow = place.open(1200)
    e = place.ledger.get_escrow(escrow)
    assert (e.reserved, e.claim_epoch, e.claimed_in_epoch) == (1200, 0, 0)
    assert place.counts() == (0, 1200)
    assert place.remaining() == 800


def test_a_cap_at_its_limit_refuses_a_new_open_and_a_top_up(place: Place) -> None:
    _, escrow = place.open(1000)
    balance = place.world.balance(CLIENT.sui_address)
    place.refused(place.open, 1001)  # 1000 + 1001 > 2000
    assert place.world.balance(CLIENT.sui_address) == balance  # nothing moved
    place.ledger.top_up(CLIENT, escrow, 400)
    place.refused(place.ledger.top_up, CLIENT, escrow, 601)  # 1400 + 601 > 2000
    place.ledger.top_up(CLIENT, escrow, 600)  # what is left still fits
    assert place.counts() == (0, 2000)


def test_deposits_of_many_epochs_cannot_all_be_claimed_in_one(world: World) -> None:
    # The old rule counted a deposit only in the epoch it was paid in: a client could pay
    # the limit in every epoch and a server claim all of it in one. Now what is
    # outstanding stays counted until it is claimed or refunded.
    place = Place(world, cap_limit=1000)
    conn, escrow = place.open(1000)
    for _ in range(3):
        world.next_epoch()
        place.refused(place.ledger.top_up, CLIENT, escrow, 1)
        place.refused(place.open, 1000)
    assert place.ledger.claim(SERVER, escrow, place.receipt(conn, 100, 0, 1)) == 1000
    assert place.ledger.get_escrow(escrow).deposited == 1000  # all one epoch could take


def test_a_client_served_every_epoch_tops_up_every_epoch(world: World) -> None:
    # ...while a deposit claimed in an epoch leaves the count with it: a client whose
    # deposit is used up each epoch tops the same amount up in the next.
    place = Place(world, cap_limit=1000)
    conn, escrow = place.open(1000)
    for n in range(1, 4):
        receipt = place.receipt(conn, 100 * n, 0, n)
        assert place.ledger.claim(SERVER, escrow, receipt) == 1000
        world.next_epoch()
        place.ledger.top_up(CLIENT, escrow, 1000)  # the claim was last epoch's
        assert place.counts() == (0, 1000)
        assert place.remaining() == 0
    e = place.ledger.get_escrow(escrow)
    assert (e.deposited, e.claimed, e.reserved) == (4000, 3000, 1000)


def test_a_client_spending_its_cap_elsewhere_cannot_fail_the_claim(place: Place) -> None:
    conn, escrow = place.open(1000)
    # the client uses the rest of the cap on another connection, then lowers the cap
    # to nothing: the first connection's deposit stays claimable
    place.open(1000)
    place.ledger.set_max_per_epoch(CLIENT, place.cap, 0)
    assert place.ledger.claim(SERVER, escrow, place.receipt(conn, 40, 2, 1)) == 410
    settled = place.ledger.settle_with_receipt(SERVER, conn, place.receipt(conn, 90, 2, 2))
    assert (settled.paid, settled.claimed, settled.refunded) == (500, 910, 90)
    # the claims count in this epoch, the refund left the cap: 910 + 1000 > 0
    assert place.counts() == (910, 1000)
    assert place.remaining() == 0


def test_claims_charge_nothing_and_stay_replay_safe(place: Place) -> None:
    conn, escrow = place.open(1000)
    receipt = place.receipt(conn, 10, 4, 1)
    assert place.ledger.claim(SERVER, escrow, receipt) == 120
    assert place.counts() == (0, 1000)  # the claim waits in the escrow for its report
    e = place.ledger.get_escrow(escrow)
    assert (e.reserved, e.claim_epoch, e.claimed_in_epoch) == (1000, 0, 120)
    with pytest.raises(ReplayedReceipt):
        place.ledger.claim(SERVER, escrow, receipt)
    # a receipt paying nothing more claims 0, cap or no cap
    place.ledger.set_max_per_epoch(CLIENT, place.cap, 0)
    assert place.ledger.claim(SERVER, escrow, place.receipt(conn, 10, 4, 2)) == 0


def test_a_top_up_counts_the_claims_first(place: Place) -> None:
    conn, escrow = place.open(1000)
    place.ledger.claim(SERVER, escrow, place.receipt(conn, 10, 4, 1))  # 120, epoch 0
    place.world.next_epoch()
    place.ledger.claim(SERVER, escrow, place.receipt(conn, 50, 10, 2))  # 430 more, epoch 1
    place.ledger.top_up(CLIENT, escrow, 100)
    # epoch 0's 120 left the count, epoch 1's 430 joined it; 450 + 100 stay outstanding
    assert place.counts() == (430, 550)
    assert place.ledger.get_escrow(escrow).reserved == 550
    counted = [e for e in place.ledger.events()[0] if e.name == "SpendingCapClaimsCounted"]
    assert [(e["epoch"], e["amount"], e["in_epoch"]) for e in counted] == [(1, 550, 430)]
    assert (counted[0]["claimed"], counted[0]["outstanding"]) == (430, 450)


def test_a_settled_connection_releases_its_refund(place: Place) -> None:
    conn, escrow = place.open(2000)
    place.ledger.claim(SERVER, escrow, place.receipt(conn, 40, 2, 1))  # 410
    assert place.ledger.settle(SERVER, conn).refunded == 1590
    assert place.counts() == (410, 0)  # what was claimed counts in this epoch
    assert place.ledger.get_escrow(escrow).reserved == 0
    released = [e for e in place.ledger.events()[0] if e.name == "SpendingCapReleased"]
    assert [(e["amount"], e["claimed"], e["outstanding"]) for e in released] == [(1590, 410, 0)]
    place.open(1590)  # the room came back
    assert place.remaining() == 0


def test_a_settlement_in_a_later_epoch_counts_nothing_old(place: Place) -> None:
    conn, escrow = place.open(2000)
    place.ledger.claim(SERVER, escrow, place.receipt(conn, 40, 2, 1))  # 410 in epoch 0
    place.world.next_epoch()
    assert place.ledger.settle(SERVER, conn).refunded == 1590
    assert place.counts() == (0, 0)  # epoch 0's claim is gone with epoch 0
    assert place.ledger.get_escrow(escrow).reserved == 0
    place.open(2000)
    assert place.remaining() == 0


def test_a_lowering_binds_the_next_positive_reservation_only(place: Place) -> None:
    conn, escrow = place.open(1000)
    place.ledger.set_max_per_epoch(CLIENT, place.cap, 1200)
    place.refused(place.open, 1000)  # 1000 + 1000 > 1200
    place.refused(place.ledger.top_up, CLIENT, escrow, 201)
    # the open connection is unaffected: its whole deposit is claimable
    assert place.ledger.claim(SERVER, escrow, place.receipt(conn, 90, 20, 1)) == 1000


def test_a_reservation_of_zero_always_fits(place: Place) -> None:
    _, escrow = place.open(2000)
    place.ledger.set_max_per_epoch(CLIENT, place.cap, 500)  # below what is outstanding
    place.ledger.top_up(CLIENT, escrow, 0)
    offer = place.ledger.create_subscription_offer(SERVER, place.host, 7, 10, 1)
    sub = place.ledger.subscribe(CLIENT, offer, 1)
    subscribed = place.ledger.open_subscribed_connection(CLIENT, sub, place.cap)
    assert place.ledger.get_escrow(subscribed.escrow_id).reserved == 0
    place.world.next_epoch()
    place.ledger.set_max_per_epoch(CLIENT, place.cap, 0)
    place.ledger.top_up(CLIENT, escrow, 0)
    assert place.counts() == (0, 2000)
    assert place.remaining() == 0


def test_spending_cap_used_and_remaining() -> None:
    cap = SpendingCap("0x" + "01" * 32, 1, CLIENT.sui_address, 1000, 300, 100, 3)
    assert (cap.used(3), cap.remaining(3)) == (400, 600)
    # a new epoch forgets the claims counted, not what is outstanding
    assert (cap.used(4), cap.remaining(4)) == (100, 900)
    lowered = SpendingCap("0x" + "01" * 32, 2, CLIENT.sui_address, 300, 300, 100, 3)
    assert lowered.remaining(3) == 0
    assert lowered.remaining(4) == 200


# -- a LocalLedger file from before outstanding deposits were counted -----------------------


def _rewrite(path: Path, object_id: str, change: Any) -> None:
    import sqlite3

    with sqlite3.connect(path) as db:
        (text,) = db.execute("SELECT data FROM objects WHERE id = ?", (object_id,)).fetchone()
        data = json.loads(text)
        change(data)
        db.execute("UPDATE objects SET data = ? WHERE id = ?", (json.dumps(data), object_id))


def test_a_cap_and_escrow_stored_before_the_counts_still_work(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    with LocalLedger(path, clock_ms=0) as ledger:
        place = Place(LocalWorldOn(ledger), cap_limit=2000)
        conn, escrow = place.open(1000)
        cap = place.cap

    def old_cap(d: dict[str, Any]) -> None:
        d["spent"] = d.pop("outstanding") + d.pop("claimed")

    def old_escrow(d: dict[str, Any]) -> None:
        d["reserved_epoch"] = d.pop("claim_epoch")
        del d["claimed_in_epoch"]

    _rewrite(path, cap, old_cap)
    _rewrite(path, escrow, old_escrow)
    with LocalLedger(path, clock_ms=0) as ledger:
        # read as the old rule had it: 1000 reserved in epoch 0, nothing outstanding
        assert (ledger.get_cap(cap).claimed, ledger.get_cap(cap).outstanding) == (1000, 0)
        assert ledger.get_escrow(escrow).reserved == 0
        receipt = Receipt(ledger.receipt_scope(conn), 10_240, 4, 120, 1).sign(CLIENT)
        assert ledger.settle_with_receipt(SERVER, conn, receipt).refunded == 880
        assert ledger.get_cap(cap).remaining(0) == 1000  # the old reservation stays
        ledger.advance_epoch()
        assert ledger.get_cap(cap).remaining(1) == 2000
        ledger.open_connection(CLIENT, ledger.get_connection(conn).host, 7, cap, 2000)
        assert ledger.get_cap(cap).outstanding == 2000
        audit = ledger.audit()
        assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]


class LocalWorldOn(LocalWorld):
    """LocalWorld on a given LocalLedger (a file)."""

    def __init__(self, ledger: LocalLedger) -> None:
        self.ledger = ledger
