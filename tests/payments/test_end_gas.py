"""The decision at a connection's end, weighed against its gas (dtp.payments._ends,
docs/escrow.md §7.1): settle, wait for a batch, or leave it to the client -- sans I/O,
with the gas figures given. A server must never lose, by leaving an end, what it would
have earned net of gas: the property tests compare each plan with every batch that
could have been made of the ends waiting."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtp.errors import InvalidArgument
from dtp.ledger._gas import EndGas, GasSpent, end_kind
from dtp.ledger._objects import Sla
from dtp.ledger.receipt import Receipt, ReceiptScope, fee
from dtp.payments._ends import (
    BATCH_WINDOW,
    TYPICAL_BYTES,
    Deferred,
    EndBatch,
    EndChoice,
    EndRule,
    check_prices,
)

#: The stand-in's figures at its gas price of 1000 (tests/ledger/test_end_gas.py
#: measures them): a settlement with a receipt, one without, one more in a batch, a
#: half-close.
SUI = EndGas(3_328_000, 2_264_000, 2_328_000, 1_200_000)
FREE = EndGas.free()
CID = "0x" + "ab" * 32


def _cid(n: int) -> str:
    return "0x" + f"{n:064x}"


def _deferred(n: int, fee: int, due: float = 60.0) -> Deferred:
    scope = ReceiptScope(_cid(1 << 20), _cid(n + (1 << 16)), _cid(n))
    receipt = Receipt(scope, 1024, 1, fee, 1, b"\x00" * 64)
    return Deferred(_cid(n), receipt, fee, due)


# -- EndRule.choose --------------------------------------------------------------------------


@pytest.mark.parametrize("fee", [0, 1, 2_000_000, 10**12])
def test_a_ledger_without_gas_settles_every_end(fee: int) -> None:
    assert not FREE.charged
    assert EndRule().choose(fee, FREE) is EndChoice.SETTLE


@pytest.mark.parametrize(
    ("fee", "choice"),
    [
        (SUI.settle_claim, EndChoice.SETTLE),  # covers its own settlement: claimed at once
        (10**9, EndChoice.SETTLE),
        (SUI.settle_claim - 1, EndChoice.BATCH),  # covers a place in a batch only
        (SUI.batch_claim, EndChoice.BATCH),
        (SUI.batch_claim - 1, EndChoice.LEAVE),  # covers neither: left to the client
        (1, EndChoice.LEAVE),
        (0, EndChoice.LEAVE),  # nothing to claim (refused, free): no transaction
    ],
)
def test_on_sui_the_fee_against_the_gas_decides(fee: int, choice: EndChoice) -> None:
    assert EndRule().choose(fee, SUI) is choice


def test_without_a_batch_window_an_end_below_its_own_settlement_is_left() -> None:
    rule = EndRule(batch_window=0)
    assert rule.choose(SUI.settle_claim - 1, SUI) is EndChoice.LEAVE
    assert rule.choose(SUI.settle_claim, SUI) is EndChoice.SETTLE


@pytest.mark.parametrize("fee", [0, 1, SUI.settle_claim - 1])
def test_gas_unweighed_settles_every_end(fee: int) -> None:
    assert EndRule(weigh_gas=False).choose(fee, SUI) is EndChoice.SETTLE


@pytest.mark.parametrize(
    "options",
    [
        {"weigh_gas": 1},
        {"batch_window": -1},
        {"batch_window": float("nan")},
        {"batch_window": float("inf")},
        {"batch_window": True},
        {"batch_window": "60"},
    ],
)
def test_a_bad_rule_is_refused(options: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument):
        EndRule(**options)  # type: ignore[arg-type]


def test_the_defaults() -> None:
    rule = EndRule()
    assert rule.weigh_gas and rule.batch_window == BATCH_WINDOW == 60.0


# -- EndGas and GasSpent ---------------------------------------------------------------------


def test_a_batchs_gas_pays_one_settlement_and_what_each_further_one_adds() -> None:
    assert SUI.batch(0) == 0
    assert SUI.batch(1) == SUI.settle_claim
    assert SUI.batch(3) == SUI.settle_claim + 2 * SUI.batch_claim
    assert SUI.client_refund == SUI.client_close + SUI.settle_refund


def test_gas_is_sorted_by_what_the_transaction_did() -> None:
    assert end_kind("transport_control::settle_with_receipt") == "ends"
    assert end_kind("transport_control::settle_batch") == "ends"
    assert end_kind("transport_control::open") == "opens"
    assert end_kind("spending_cap::create") == "opens"
    assert end_kind("host::add_service") == "host"
    assert end_kind("split the gas coin") == "other"
    assert GasSpent(5, 2, {"ends": 5}).to_json() == {
        "total": 5,
        "transactions": 2,
        "by_kind": {"ends": 5},
    }


# -- EndBatch.plan ---------------------------------------------------------------------------


def test_a_batch_waits_until_its_fees_cover_its_gas() -> None:
    batch = EndBatch()
    fee = SUI.batch_claim + 500_000  # each above a place in a batch, below a settlement
    batch.add(_deferred(1, fee))
    assert not batch.plan(0.0, SUI)  # alone it does not pay: it waits
    assert len(batch) == 1
    batch.add(_deferred(2, fee))
    # two: 2 * 2.83 M against 3.33 M + 2.33 M
    plan = batch.plan(0.0, SUI)
    assert {e.connection_id for e in plan.settle} == {_cid(1), _cid(2)} and not plan.leave
    assert len(batch) == 0


def test_an_end_whose_window_ends_unbatched_is_left_and_the_others_wait() -> None:
    batch = EndBatch()
    fee = SUI.batch_claim + 1
    batch.add(_deferred(1, fee, due=10.0))
    batch.add(_deferred(2, fee, due=50.0))
    # two cover 2 * (2.33 M + 1) < 3.33 M + 2.33 M: no batch
    plan = batch.plan(20.0, SUI)
    assert [e.connection_id for e in plan.leave] == [_cid(1)] and not plan.settle
    assert _cid(2) in batch and _cid(1) not in batch
    plan = batch.plan(20.0, SUI, final=True)  # the server stops: all left
    assert [e.connection_id for e in plan.leave] == [_cid(2)]


def test_an_end_below_a_place_in_the_batch_never_joins_it() -> None:
    """The gas rose since it was put in: it would make the batch lose."""
    batch = EndBatch()
    batch.add(_deferred(1, SUI.settle_claim * 3))  # pays a batch on its own
    batch.add(_deferred(2, SUI.batch_claim - 1, due=100.0))
    plan = batch.plan(0.0, SUI)
    assert [e.connection_id for e in plan.settle] == [_cid(1)]
    assert _cid(2) in batch  # waits: left once its window ends
    assert [e.connection_id for e in batch.plan(100.0, SUI).leave] == [_cid(2)]


def test_a_batch_holds_at_most_max_batch_ends_the_most_valuable_first() -> None:
    batch = EndBatch(max_batch=3)
    for n in range(5):
        batch.add(_deferred(n, SUI.settle_claim + n))
    plan = batch.plan(0.0, SUI)
    assert [e.connection_id for e in plan.settle] == [_cid(4), _cid(3), _cid(2)]
    assert len(batch) == 2


def test_a_ledger_without_gas_settles_the_whole_batch() -> None:
    batch = EndBatch()
    batch.add(_deferred(1, 0))
    batch.add(_deferred(2, 5))
    assert len(batch.plan(0.0, FREE).settle) == 2


def test_one_entry_per_connection_and_discard() -> None:
    batch = EndBatch()
    batch.add(_deferred(1, 10))
    batch.add(_deferred(1, 20))
    assert len(batch) == 1 and batch.waiting()[0].fee == 20
    assert batch.next_due() == 60.0
    assert batch.discard(_cid(1)) is not None and _cid(1) not in batch
    assert batch.next_due() is None


_gas = st.builds(
    lambda claim, extra, refund, close: EndGas(claim, refund, min(claim, extra), close),
    st.integers(1, 10**7),
    st.integers(0, 10**7),
    st.integers(1, 10**7),
    st.integers(1, 10**7),
)


@given(
    gas=_gas,
    fees=st.lists(st.integers(0, 3 * 10**7), min_size=1, max_size=6),
    final=st.booleans(),
)
def test_a_plan_never_loses_what_a_batch_would_have_earned_net_of_gas(
    gas: EndGas, fees: list[int], final: bool
) -> None:
    """What is settled pays for its gas; and when ends are left, no batch of the ends
    waiting (any subset) would have earned anything net of its gas."""
    batch = EndBatch()
    for n, value in enumerate(fees):
        batch.add(_deferred(n, value, due=0.0))
    plan = batch.plan(1.0, gas, final=final)
    settled = [e.fee for e in plan.settle]
    if settled:
        assert sum(settled) >= gas.batch(len(settled))
    if plan.leave:
        # every subset of the ends, settled in one batch, would have lost money (or
        # earned nothing more than the settled batch already does)
        best_net = sum(settled) - gas.batch(len(settled)) if settled else 0
        for size in range(1, min(len(fees), 64) + 1):
            for subset in itertools.combinations(fees, size):
                assert sum(subset) - gas.batch(size) <= best_net
    # nothing is both, and every end is accounted for once it is due
    taken = [e.connection_id for e in (*plan.settle, *plan.leave)]
    assert len(taken) == len(set(taken)) == len(fees) - len(batch)
    assert len(batch) == 0  # (due at 0: each is settled or left)


# -- the prices against a typical connection -------------------------------------------------


def test_the_docs_example_price_does_not_cover_an_end_on_sui() -> None:
    """10 MIST/KiB: a typical connection (1 MiB, one request) pays 10 240 MIST against
    3.33 M of gas: a provider at that price earns less than its ends cost (6.85 M
    earned against 21.5 M of gas paid, for one)."""
    check = check_prices(Sla(10, 0, 1_000_000), SUI)
    assert check is not None and not check.covered
    assert check.typical_fee == 10_240
    assert check.bytes_needed == -(-SUI.settle_claim * 1024 // 10)  # 325 MiB
    assert fee(Sla(10, 0, 0), check.bytes_needed, 1) >= SUI.settle_claim
    assert fee(Sla(10, 0, 0), check.bytes_needed - 1024, 1) < SUI.settle_claim


def test_the_docs_new_prices_cover_an_end_on_sui() -> None:
    check = check_prices(Sla(1_000, 3_000_000, 10_000_000), SUI)
    assert check is not None and check.covered
    assert check.typical_fee == fee(Sla(1_000, 3_000_000, 0), TYPICAL_BYTES, 1) == 4_024_000


def test_a_price_per_request_alone_covers_every_end() -> None:
    check = check_prices(Sla(0, SUI.settle_claim, 0), SUI)
    assert check is not None and check.covered and check.bytes_needed == 0


def test_a_service_free_per_byte_and_cheap_per_request_needs_no_number_of_bytes() -> None:
    check = check_prices(Sla(0, 5, 0), SUI)
    assert check is not None and not check.covered and check.bytes_needed is None


def test_free_services_and_ledgers_without_gas_are_not_checked() -> None:
    assert check_prices(Sla(0, 0, 1_000), SUI) is None
    assert check_prices(Sla(10, 0, 1_000), FREE) is None
