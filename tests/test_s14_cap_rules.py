"""The spending cap's rules on LocalLedger (docs/escrow.md §4, §6): a connection's claims
are charged against the higher of the cap's limit now and the limit it had when the
connection opened, which the escrow records. So a lowering binds the connections opened
after it and never voids a receipt signed on one already open; a raise applies at once;
the epoch's total stays bounded by the highest limit an open connection was opened
under. Real SQLite files in tmp_path."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dtp.chain.local import LocalLedger
from dtp.chain.objects import HALF_CLOSE_TIMEOUT_MS, Sla, SpendingCap
from dtp.errors import ChainError, SpendingCapExceeded
from dtp.escrow import Receipt, fee
from tests.paid_twins import ident

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=1000)
SERVER, CLIENT = ident(0x73), ident(0x74)
PORT = 7


class World:
    """A host with service 7 and a funded client with a cap of 1000 per epoch."""

    def __init__(self, ledger: LocalLedger, cap_max: int = 1000) -> None:
        self.ledger = ledger
        self.host = ledger.create_host(SERVER, b"\x01" * 32, ["tcp://127.0.0.1:7000"])
        ledger.add_service(SERVER, self.host, PORT, "raw", SLA)
        ledger.faucet(CLIENT.sui_address, 1_000_000)
        self.cap = ledger.create_spending_cap(CLIENT, cap_max)
        self.nonces: dict[str, int] = {}

    def open(self, deposit: int = 5000) -> str:
        return self.ledger.open_connection(CLIENT, self.host, PORT, self.cap, deposit).connection_id

    def receipt(self, cid: str, kib: int) -> Receipt:
        """The client's next cumulative receipt for ``kib`` KiB (10 MIST each)."""
        nonce = self.nonces[cid] = self.nonces.get(cid, 0) + 1
        return Receipt(cid, kib * 1024, 0, fee(SLA, kib * 1024, 0), nonce).sign(CLIENT)

    def claim(self, cid: str, kib: int) -> int:
        escrow = self.ledger.get_connection(cid).escrow
        return self.ledger.claim(SERVER, escrow, self.receipt(cid, kib))

    def lower(self, limit: int) -> None:
        self.ledger.set_max_per_epoch(CLIENT, self.cap, limit)

    def spent(self) -> int:
        return self.ledger.get_cap(self.cap).spent


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[LocalLedger]:
    ledger = LocalLedger(tmp_path / "ledger.db", clock_ms=0)
    yield ledger
    ledger.close()


@pytest.fixture
def world(ledger: LocalLedger) -> World:
    return World(ledger)


def _refused(world: World, cid: str, kib: int) -> ChainError:
    before = world.ledger.dump()
    with pytest.raises(SpendingCapExceeded) as info:
        world.claim(cid, kib)
    assert world.ledger.dump() == before
    return info.value


def test_the_escrow_records_the_limit_the_connection_opened_under(world: World) -> None:
    first = world.open()
    world.lower(300)
    second = world.open()
    get = world.ledger.get_escrow
    assert get(world.ledger.get_connection(first).escrow).cap_max_per_epoch == 1000
    assert get(world.ledger.get_connection(second).escrow).cap_max_per_epoch == 300


def test_lowering_after_the_open_does_not_refuse_the_claim(world: World) -> None:
    cid = world.open()
    assert world.claim(cid, 20) == 200
    world.lower(0)  # the client voids nothing: the connection opened under 1000
    assert world.claim(cid, 100) == 800
    assert world.spent() == 1000
    _refused(world, cid, 101)  # but not beyond the limit it opened under


def test_lowering_then_settle_with_receipt_pays_the_server(world: World) -> None:
    ledger = world.ledger
    cid = world.open()
    world.lower(0)
    receipt = world.receipt(cid, 90)
    before = ledger.balance(SERVER.sui_address)
    settlement = ledger.settle_with_receipt(SERVER, cid, receipt)
    assert (settlement.paid, settlement.claimed, settlement.refunded) == (900, 900, 4100)
    assert ledger.balance(SERVER.sui_address) - before == 900


def test_the_client_cannot_take_back_what_the_lowering_would_have_voided(
    world: World,
) -> None:
    # the old hole step by step: lowered, half-closed, the server's claim must still pass
    # before the client's timeout lets it settle
    ledger = world.ledger
    cid = world.open()
    world.lower(0)
    ledger.close_connection(CLIENT, cid)
    assert world.claim(cid, 50) == 500
    ledger.advance_clock(HALF_CLOSE_TIMEOUT_MS)
    assert ledger.settle(CLIENT, cid).refunded == 4500


def test_a_lowering_binds_a_connection_opened_after_it(world: World) -> None:
    world.lower(300)
    cid = world.open()
    assert world.claim(cid, 20) == 200
    _refused(world, cid, 31)
    assert world.claim(cid, 30) == 100
    assert world.spent() == 300


def test_a_raise_applies_at_once_to_open_connections(world: World) -> None:
    cid = world.open()
    assert world.claim(cid, 12) == 120
    world.lower(1500)  # a raise
    assert world.claim(cid, 150) == 1380
    world.lower(500)  # and back below the limit at open: 1000 still holds for it
    _refused(world, cid, 151)


def test_the_epoch_total_stays_within_the_highest_limit_opened_under(world: World) -> None:
    a = world.open()
    world.lower(300)
    b = world.open()
    assert world.claim(b, 30) == 300  # b's own limit
    _refused(world, b, 31)
    assert world.claim(a, 70) == 700  # a's, with b's claims counted
    _refused(world, a, 71)
    assert world.spent() == 1000


def test_the_limit_at_open_holds_in_later_epochs(world: World) -> None:
    ledger = world.ledger
    cid = world.open()
    assert world.claim(cid, 100) == 1000
    world.lower(0)
    _refused(world, cid, 101)  # this epoch is spent
    ledger.advance_epoch()
    assert world.claim(cid, 200) == 1000  # the next one has 1000 again for it
    cap = ledger.get_cap(world.cap)
    assert (cap.epoch, cap.spent, cap.max_per_epoch) == (1, 1000, 0)
    fresh = world.open()
    _refused(world, fresh, 1)  # a connection opened now: 0, and 1000 spent


def test_a_zero_claim_after_a_lowering_below_spent(world: World) -> None:
    # docs §4: charging 0 aborts when the limit is below what was spent -- the limit
    # being the higher of the cap's and the one the connection opened under
    cid = world.open()
    assert world.claim(cid, 50) == 500
    world.lower(100)
    assert world.claim(cid, 50) == 0
    late = world.open()
    _refused(world, late, 0)


def test_claims_stay_replay_safe(world: World) -> None:
    cid = world.open()
    first = world.receipt(cid, 10)
    escrow = world.ledger.get_connection(cid).escrow
    assert world.ledger.claim(SERVER, escrow, first) == 100
    world.lower(0)
    with pytest.raises(ChainError) as info:
        world.ledger.claim(SERVER, escrow, first)
    assert info.value.name == "EReplayedReceipt"


def test_spending_cap_remaining_and_secured() -> None:
    cap = SpendingCap("0x1", 1, "0x2", max_per_epoch=300, spent=200, epoch=4)
    assert cap.remaining(4) == 100
    assert cap.remaining(4, opened_under=1000) == 800
    assert cap.remaining(5, opened_under=1000) == 1000
    assert cap.remaining(4, opened_under=100) == 100
    assert cap.secured(4, 1000) == 800 and cap.secured(4, 100) == 0
    assert cap.secured(5, 100) == 100
