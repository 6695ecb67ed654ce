"""The spending cap reserves a connection's deposit when it is paid in (docs/escrow.md §4),
on LocalLedger: an open or a top-up past the cap's room this epoch is refused with nothing
moved; claims charge the cap nothing, so no spending of the client elsewhere (another
connection, a lowering) can make a provider's claim fail; settlement gives back the part
refunded, within the epoch it was reserved in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from dtp.chain.local import LocalLedger
from dtp.chain.objects import Sla, SpendingCap
from dtp.errors import ReplayedReceipt, SpendingCapExceeded
from dtp.escrow import Receipt, fee
from dtp.keys import HostIdentity

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=1000)


def ident(seed: int) -> HostIdentity:
    return HostIdentity.from_private_bytes(bytes([seed]) * 32, bytes([seed]) * 32)


SERVER, CLIENT = ident(0x33), ident(0x11)


class World:
    """A host with one service (port 7) and a client with 100 000 MIST and a cap."""

    def __init__(self, path: Path, cap_limit: int) -> None:
        self.ledger = LocalLedger(path, clock_ms=0)
        self.host = self.ledger.create_host(SERVER, b"\x01" * 32)
        self.ledger.add_service(SERVER, self.host, 7, "raw", SLA)
        self.ledger.faucet(CLIENT.sui_address, 100_000)
        self.cap = self.ledger.create_spending_cap(CLIENT, cap_limit)

    def open(self, deposit: int = 1000) -> tuple[str, str]:
        opened = self.ledger.open_connection(CLIENT, self.host, 7, self.cap, deposit)
        return opened.connection_id, opened.escrow_id

    def spent(self) -> int:
        cap = self.ledger.get_cap(self.cap)
        return cap.spent if cap.epoch == self.ledger.epoch() else 0

    def receipt(self, conn: str, kib: int, requests: int, nonce: int) -> Receipt:
        amount = fee(SLA, kib * 1024, requests)
        return Receipt(self.ledger.receipt_scope(conn), kib * 1024, requests, amount, nonce).sign(
            CLIENT
        )

    def refused(self, call: Any, *args: Any, **kwargs: Any) -> SpendingCapExceeded:
        before = self.ledger.dump()
        with pytest.raises(SpendingCapExceeded) as info:
            call(*args, **kwargs)
        assert info.value.qualified_name == "spending_cap::ESpendingCapExceeded"
        assert self.ledger.dump() == before, "a refused call changed the ledger"
        return info.value

    def conserved(self) -> bool:
        a = self.ledger.audit()
        return bool(a["minted"] == a["balances"] + a["escrows"] + a["broadcasts"])


@pytest.fixture
def world(tmp_path: Path) -> World:
    return World(tmp_path / "ledger.sqlite", cap_limit=2000)


def test_the_open_reserves_the_whole_deposit(world: World) -> None:
    _, escrow = world.open(1200)
    e = world.ledger.get_escrow(escrow)
    assert (e.reserved_epoch, e.reserved) == (0, 1200)
    assert world.spent() == 1200
    assert world.ledger.get_cap(world.cap).remaining(world.ledger.epoch()) == 800


def test_a_cap_at_its_limit_refuses_a_new_open(world: World) -> None:
    world.open(1000)
    balance = world.ledger.balance(CLIENT.sui_address)
    world.refused(world.open, 1001)  # 1000 + 1001 > 2000
    assert world.ledger.balance(CLIENT.sui_address) == balance  # nothing moved
    world.open(1000)  # what is left still opens
    assert world.spent() == 2000


def test_a_cap_at_its_limit_refuses_a_top_up(world: World) -> None:
    _, escrow = world.open(1500)
    world.ledger.top_up(CLIENT, escrow, 400)
    assert world.ledger.get_escrow(escrow).reserved == 1900
    world.refused(world.ledger.top_up, CLIENT, escrow, 101)
    assert world.ledger.get_escrow(escrow).deposited == 1900


def test_a_client_spending_its_cap_elsewhere_cannot_fail_the_claim(world: World) -> None:
    conn, escrow = world.open(1000)
    # the client uses the rest of the epoch on another connection, then lowers the cap
    # to nothing: the first connection's deposit stays reserved, and claimable
    world.open(1000)
    world.ledger.set_max_per_epoch(CLIENT, world.cap, 0)
    assert world.ledger.claim(SERVER, escrow, world.receipt(conn, 40, 2, 1)) == 410
    settled = world.ledger.settle_with_receipt(SERVER, conn, world.receipt(conn, 90, 2, 2))
    assert (settled.paid, settled.claimed, settled.refunded) == (500, 910, 90)
    assert world.conserved()


def test_claims_charge_nothing_and_stay_replay_safe(world: World) -> None:
    conn, escrow = world.open(1000)
    receipt = world.receipt(conn, 10, 4, 1)
    assert world.ledger.claim(SERVER, escrow, receipt) == 120
    assert world.spent() == 1000  # the reservation, not the claim
    with pytest.raises(ReplayedReceipt):
        world.ledger.claim(SERVER, escrow, receipt)
    # a receipt paying nothing more claims 0, cap or no cap
    world.ledger.set_max_per_epoch(CLIENT, world.cap, 0)
    assert world.ledger.claim(SERVER, escrow, world.receipt(conn, 10, 4, 2)) == 0


def test_a_settled_connection_releases_its_refund_within_the_epoch(world: World) -> None:
    conn, escrow = world.open(2000)
    world.ledger.claim(SERVER, escrow, world.receipt(conn, 40, 2, 1))  # 410
    assert world.ledger.settle(SERVER, conn).refunded == 1590
    assert world.spent() == 410  # what was claimed stays spent
    assert world.ledger.get_escrow(escrow).reserved == 410
    released = [e for e in world.ledger.events()[0] if e.name == "SpendingCapReleased"]
    assert [(e["amount"], e["spent"]) for e in released] == [(1590, 410)]
    world.open(1590)  # the room came back
    assert world.spent() == 2000


def test_a_settlement_in_a_later_epoch_releases_nothing(world: World) -> None:
    conn, escrow = world.open(2000)
    world.ledger.advance_epoch()
    assert world.ledger.settle(SERVER, conn).refunded == 2000
    assert world.spent() == 0  # the new epoch's count, never below 0
    assert world.ledger.get_escrow(escrow).reserved == 2000
    world.open(2000)
    assert world.spent() == 2000


def test_a_top_up_in_a_new_epoch_is_reserved_there(world: World) -> None:
    conn, escrow = world.open(2000)
    world.ledger.advance_epoch()
    world.ledger.top_up(CLIENT, escrow, 300)
    e = world.ledger.get_escrow(escrow)
    assert (e.reserved_epoch, e.reserved) == (1, 300)
    assert world.spent() == 300
    # 2300 refunded: only this epoch's 300 come back to this epoch's room
    assert world.ledger.settle(SERVER, conn).refunded == 2300
    assert world.spent() == 0
    assert world.conserved()


def test_a_lowering_binds_the_next_open_only(world: World) -> None:
    conn, escrow = world.open(1000)
    world.ledger.set_max_per_epoch(CLIENT, world.cap, 1200)
    world.refused(world.open, 1000)  # 1000 + 1000 > 1200
    # the open connection is unaffected: its whole deposit is claimable
    assert world.ledger.claim(SERVER, escrow, world.receipt(conn, 90, 20, 1)) == 1000


def test_a_subscribed_open_reserves_its_deposit_of_zero(world: World) -> None:
    offer = world.ledger.create_subscription_offer(SERVER, world.host, 7, 10, 1)
    sub = world.ledger.subscribe(CLIENT, offer, 1)
    world.ledger.open_subscribed_connection(CLIENT, sub, world.cap)
    assert world.spent() == 0
    # a lowering below what the epoch reserved refuses even a reservation of 0
    world.open(1000)
    world.ledger.set_max_per_epoch(CLIENT, world.cap, 500)
    world.refused(world.ledger.open_subscribed_connection, CLIENT, sub, world.cap)


def test_spending_cap_remaining() -> None:
    cap = SpendingCap("0x" + "01" * 32, 1, CLIENT.sui_address, 1000, 400, 3)
    assert cap.remaining(3) == 600
    assert cap.remaining(4) == 1000  # a new epoch starts from nothing
    lowered = SpendingCap("0x" + "01" * 32, 2, CLIENT.sui_address, 300, 400, 3)
    assert lowered.remaining(3) == 0
