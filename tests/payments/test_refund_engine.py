"""The decisions of a client's refunds, sans I/O (dtp/payments/_refund_engine.py): each
ledger state's step, the gas weighed against the escrow's balance, the connections in
use left alone, and when the next look comes -- the ledger's clock and the caller's
passed in, no ledger. What the SDK's collector and the daemon's task do with them is
tests/payments/test_refunds.py's and tests/daemon/test_refunds.py's."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from dtp.errors import InvalidArgument
from dtp.ledger._gas import EndGas
from dtp.ledger._objects import HALF_CLOSE_TIMEOUT_MS, Sla, TransportControl
from dtp.ledger.local import LocalLedger
from dtp.payments._refund_book import Opened
from dtp.payments._refund_engine import (
    LOOK_SOON,
    OPEN_LEASE,
    SETTLE_MARGIN_MS,
    RefundAction,
    RefundEngine,
    next_look,
    refund_cost,
    refund_step,
    worth_gas,
)
from tests.support.paid_inprocess import ident

SERVER, CLIENT = ident(0x54), ident(0x55)
START_MS = 1_700_000_000_000
#: The stand-in's figures at its gas price of 1000 (tests/payments/test_end_gas.py).
SUI = EndGas(3_328_000, 2_264_000, 2_328_000, 1_200_000)
FREE = EndGas.free()


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[LocalLedger]:
    """A LocalLedger file whose clock the test holds (frozen), with SERVER's service on
    port 80, for CLIENT's connections (:func:`connection`)."""
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    ledger.set_clock(START_MS, allow_backwards=True)
    ledger.faucet(CLIENT.sui_address, 10_000_000)
    host = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host, 80, "raw", Sla(10, 5, 1000))
    HOSTS[id(ledger)] = host
    try:
        yield ledger
    finally:
        ledger.close()


HOSTS: dict[int, str] = {}


def connection(ledger: LocalLedger) -> str:
    """A new connection of CLIENT's, Open."""
    cap = ledger.create_spending_cap(CLIENT, 50_000)
    return ledger.open_connection(CLIENT, HOSTS[id(ledger)], 80, cap, 50_000).connection_id


def entry(
    key: int, cap: str | None = None, cid: str | None = None, due: int | None = None
) -> Opened:
    return Opened(key, cap, cid, "", 0.0, due)


CAP = "0x" + "c1" * 32
CID = "0x" + "a1" * 32


# -- each state's step ------------------------------------------------------------------------


def test_each_state_gets_its_step(ledger: LocalLedger) -> None:
    cid = connection(ledger)
    now = ledger.clock_ms()
    assert refund_step(ledger.get_connection(cid), now).action is RefundAction.HALF_CLOSE
    ledger.close_connection(CLIENT, cid)
    tc = ledger.get_connection(cid)
    waiting = refund_step(tc, now)
    assert waiting.action is RefundAction.WAIT
    assert waiting.at_ms == now + HALF_CLOSE_TIMEOUT_MS
    assert refund_step(tc, now + HALF_CLOSE_TIMEOUT_MS - 1).action is RefundAction.WAIT
    assert refund_step(tc, now + HALF_CLOSE_TIMEOUT_MS).action is RefundAction.SETTLE
    ledger.settle(SERVER, cid)  # the server's settlement
    assert refund_step(ledger.get_connection(cid), now).action is RefundAction.FORGET
    assert refund_step(None, now).action is RefundAction.FORGET  # never landed


def half_closed(ledger: LocalLedger) -> TransportControl:
    cid = connection(ledger)
    ledger.close_connection(CLIENT, cid)
    return ledger.get_connection(cid)


def test_on_a_ledger_that_charges_gas_the_settlement_waits_a_margin(ledger: LocalLedger) -> None:
    """A settlement refused as early costs its gas on Sui: sent a second past the
    timeout there; at once where a refusal is free."""
    tc = half_closed(ledger)
    due = ledger.clock_ms() + HALF_CLOSE_TIMEOUT_MS
    engine = RefundEngine(interval=30, retry=30)
    assert engine.step(tc, due, FREE).action is RefundAction.SETTLE
    assert engine.step(tc, due, SUI).action is RefundAction.WAIT
    assert engine.step(tc, due + SETTLE_MARGIN_MS, SUI).action is RefundAction.SETTLE


def test_what_gives_back_less_than_its_gas_is_skipped(ledger: LocalLedger) -> None:
    """An Open connection costs its half-close and its settlement; a due one, its
    settlement; below that balance, left on the ledger."""
    engine = RefundEngine(interval=30, retry=30)
    opened = ledger.get_connection(connection(ledger))
    step = engine.step(opened, ledger.clock_ms(), SUI)
    assert (step.action, step.cost) == (RefundAction.HALF_CLOSE, SUI.client_refund)
    assert worth_gas(step, SUI.client_refund).action is RefundAction.HALF_CLOSE
    skipped = worth_gas(step, SUI.client_refund - 1)
    assert (skipped.action, skipped.balance) == (RefundAction.SKIP, SUI.client_refund - 1)
    tc = half_closed(ledger)
    later = ledger.clock_ms() + HALF_CLOSE_TIMEOUT_MS + SETTLE_MARGIN_MS
    step = engine.step(tc, later, SUI)
    assert (step.action, step.cost) == (RefundAction.SETTLE, SUI.settle_refund)
    assert worth_gas(step, SUI.settle_refund - 1).action is RefundAction.SKIP
    # no gas, or gas not weighed: nothing to weigh
    assert engine.step(tc, later, FREE).cost == 0
    unweighed = RefundEngine(interval=30, retry=30, weigh_gas=False)
    assert worth_gas(unweighed.step(tc, later, SUI), 0).action is RefundAction.SETTLE


def test_the_cost_of_a_refund_is_counted_from_its_step_on() -> None:
    """What the client's end (ClientPayment.finish) and the looks weigh alike: an Open
    connection's half-close and settlement, a due one's settlement, nothing else, and
    nothing where no gas is charged."""
    assert refund_cost(RefundAction.HALF_CLOSE, SUI) == SUI.client_close + SUI.settle_refund
    assert refund_cost(RefundAction.SETTLE, SUI) == SUI.settle_refund
    for action in (RefundAction.WAIT, RefundAction.FORGET, RefundAction.SKIP):
        assert refund_cost(action, SUI) == 0
    assert refund_cost(RefundAction.HALF_CLOSE, FREE) == 0


# -- in use, failures, the next look -----------------------------------------------------------


def test_a_connection_in_use_is_left_alone_until_released() -> None:
    engine = RefundEngine(interval=30, retry=30)
    live, idle = entry(1, CAP, CID), entry(2, cid="0x" + "a2" * 32)
    engine.use(live, 0.0)
    assert engine.to_look([live, idle], 1e9) == [idle]  # (whatever the time)
    engine.release([CID])  # by either of its IDs
    assert engine.to_look([live, idle], 0.0) == [live, idle]


def test_an_open_known_by_its_cap_alone_is_in_use_for_a_lease() -> None:
    """Its open lands and tells its ID well within the lease, or it failed: past it,
    the look finds out which."""
    engine = RefundEngine(interval=30, retry=30)
    landing = entry(1, CAP)
    engine.use(landing, 100.0)
    assert engine.to_look([landing], 100.0 + OPEN_LEASE - 1) == []
    assert engine.leased(100.0)
    # the next look is due when the lease ends, if nothing comes sooner
    assert engine.wait([landing], 0, 100.0 + OPEN_LEASE - 10) == 10.0
    assert engine.to_look([landing], 100.0 + OPEN_LEASE) == [landing]
    landed = replace(landing, connection_id=CID)
    engine.use(landed, 100.0)  # the ID came: in use until released
    assert engine.to_look([landed], 1e12) == []


def test_a_connection_its_keeper_holds_on_to_is_in_use_for_its_lease() -> None:
    """A forward holds the connection a failed connect left for its next try: in use
    until the lease it gave ends (each try renews it), then looked at; the next look
    is due at the lease's end."""
    engine = RefundEngine(interval=30, retry=30)
    held = entry(1, CAP, CID)
    engine.use(held, 100.0, until=400.0)
    assert engine.to_look([held], 399.0) == [] and engine.leased(399.0)
    assert engine.wait([held], 0, 390.0) == 10.0
    engine.use(held, 390.0, until=690.0)  # the next try renewed it
    assert engine.to_look([held], 400.0) == []
    assert engine.to_look([held], 690.0) == [held]


def test_a_failed_step_waits_its_retry() -> None:
    engine = RefundEngine(interval=30, retry=5)
    due = entry(1, cid=CID, due=START_MS)
    engine.failed(due, 100.0)
    assert engine.to_look([due], 104.0) == []
    assert engine.wait([due], START_MS, 101.0) == 4.0
    assert engine.to_look([due], 105.0) == [due]
    engine.failed(due, 200.0)
    engine.succeeded(due)
    assert engine.to_look([due], 200.0) == [due]


def test_the_next_look_comes_at_the_first_deadline_or_the_interval() -> None:
    assert next_look([], 1000, 30.0) == 30.0
    assert next_look([1000 + 4_000, 1000 + 90_000], 1000, 30.0) == 4.0
    assert next_look([500], 1000, 30.0) == LOOK_SOON  # passed: soon, not in a tight loop


def test_the_engine_waits_for_the_earliest_idle_deadline() -> None:
    engine = RefundEngine(interval=30, retry=30)
    now_ms = START_MS
    soon, later = entry(1, cid=CID, due=now_ms + 4_000), entry(2, cid=CAP, due=now_ms + 9_000)
    assert engine.wait([later], now_ms, 0.0) == 9.0
    assert engine.wait([soon, later], now_ms, 0.0) == 4.0
    engine.use(soon, 0.0)
    assert engine.wait([soon, later], now_ms, 0.0) == 9.0  # (in use: no deadline)
    assert engine.wait([entry(3, cid="0x" + "a3" * 32)], now_ms, 0.0) == LOOK_SOON  # not read
    assert engine.wait([], now_ms, 0.0) == 30.0
    engine.charged = True  # (the margin, on a ledger with gas)
    assert engine.wait([later], now_ms, 0.0) == 10.0


def test_a_ledger_that_cannot_be_read_is_said_once_and_given_up_after_a_while() -> None:
    engine = RefundEngine(interval=30, retry=5, give_up=60)
    first = engine.look_failed(OSError("down"), 0.0)
    assert first.first and not first.gave_up
    assert engine.wait([entry(1, cid=CID)], None, 0.0) == 5.0  # (the retry, not at once)
    again = engine.look_failed(OSError("down"), 30.0)
    assert not again.first and not again.gave_up
    assert engine.look_failed(OSError("down"), 61.0).gave_up
    assert engine.look_succeeded() is not None
    assert engine.look_succeeded() is None  # (recovered once)
    assert not RefundEngine(interval=30, retry=5).look_failed(OSError(), 1e9).gave_up


@pytest.mark.parametrize(
    "options",
    [
        {"interval": 0},
        {"interval": -1.0},
        {"interval": float("nan")},
        {"retry": float("inf")},
        {"retry": True},
        {"weigh_gas": 1},
        {"give_up": 0},
        {"give_up": "1h"},
    ],
)
def test_a_bad_engine_is_refused(options: dict[str, object]) -> None:
    args: dict[str, object] = {"interval": 30.0, "retry": 30.0, **options}
    with pytest.raises(InvalidArgument):
        RefundEngine(**args)  # type: ignore[arg-type]


def test_a_settled_connection_is_deleted_when_its_rebate_beats_the_gas() -> None:
    """docs/escrow.md §7.1: deleted when the rebate is worth more than the deleting
    transaction's gas (on Sui), always on a ledger that charges none, or gas not
    weighed."""
    from dtp.ledger._deletion import StorageRebate
    from dtp.payments._refund_engine import worth_deleting

    assert worth_deleting(StorageRebate(5_469_948, 1_010_640))
    assert not worth_deleting(StorageRebate(900_000, 1_010_640))
    assert not worth_deleting(StorageRebate(1_010_640, 1_010_640))  # (nothing gained)
    assert worth_deleting(StorageRebate(900_000, 1_010_640), weigh_gas=False)
    assert worth_deleting(StorageRebate.free())
