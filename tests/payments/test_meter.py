"""Meter: usage and amounts that are not non-negative ints are refused before anything
is counted, and a refused record leaves the meter as it was and usable."""

from __future__ import annotations

from typing import Any

import pytest

from dtp.errors import InsufficientFunds, InvalidArgument
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.payments.receipts import U64_MAX, Meter, fee
from tests.support.scopes import scope_of

CLIENT = HostIdentity.from_private_bytes(bytes([3]) * 32, bytes([4]) * 32)
CONNECTION = "0x" + "ab" * 32
SLA = Sla(10, 5, 1000)
NOT_COUNTS: list[Any] = [1.5, float("nan"), float("inf"), -1, True, "5", None, 10.0]


def meter(deposit: int = 1000, **cadence: int) -> Meter:
    return Meter(CLIENT, scope_of(CONNECTION), SLA, deposit, **cadence)


def state(m: Meter) -> tuple[Any, ...]:
    return (m.total_bytes, m.total_requests, m.deposit, m.latest, m._next_nonce)


@pytest.mark.parametrize("bad", NOT_COUNTS, ids=repr)
def test_bad_usage_is_refused_and_counts_nothing(bad: Any) -> None:
    m = meter(every_bytes=1)
    m.record(0, 100, 1)
    before = state(m)
    for args in ((bad, 0), (0, bad)):
        with pytest.raises(InvalidArgument, match="must be a non-negative integer"):
            m.record(0, *args)
        assert state(m) == before
    # the meter still works: the next receipt follows the last one
    receipt = m.record(0, 10)
    assert receipt is not None
    assert (receipt.total_bytes, receipt.total_requests, receipt.nonce) == (110, 1, 2)
    assert receipt.total_amount == fee(SLA, 110, 1)
    assert m.flush(0) is None


def test_a_float_no_longer_breaks_the_meter() -> None:
    # the reported case: record(0, 1.5) set total_bytes to 1.5 and every later
    # record and flush raised
    m = meter(every_bytes=1)
    with pytest.raises(InvalidArgument):
        m.record(0, 1.5)
    assert m.total_bytes == 0
    assert m.record(0, 10) is not None


def test_nan_does_not_skip_the_deposit_check() -> None:
    m = meter(every_bytes=0)
    with pytest.raises(InvalidArgument):
        m.record(0, float("nan"))
    with pytest.raises(InsufficientFunds):  # was accepted after a NaN
        m.record(0, 10**9)
    assert (m.total_bytes, m.total_amount) == (0, 0)


@pytest.mark.parametrize("bad", [0.5, -1, True, "1", float("nan")], ids=repr)
def test_top_up_takes_a_non_negative_int(bad: Any) -> None:
    m = meter()
    with pytest.raises(InvalidArgument):
        m.top_up(bad)
    assert m.deposit == 1000 and isinstance(m.deposit, int)
    m.top_up(24)
    assert m.deposit == 1024


@pytest.mark.parametrize(
    "setting", ["deposit", "every_bytes", "every_requests", "every_ms", "start_nonce"]
)
@pytest.mark.parametrize("bad", [1.5, -1, True, "1"], ids=repr)
def test_settings_are_non_negative_ints(setting: str, bad: Any) -> None:
    kwargs: dict[str, Any] = {"deposit": 1000, setting: bad}
    deposit = kwargs.pop("deposit")
    with pytest.raises(InvalidArgument):
        Meter(CLIENT, scope_of(CONNECTION), SLA, deposit, **kwargs)
    with pytest.raises(InvalidArgument):
        Meter(CLIENT, scope_of(CONNECTION), SLA, 1000, start_nonce=0)


def test_a_fee_beyond_u64_is_refused_before_it_is_counted() -> None:
    # a deposit beyond u64 (no escrow holds one, but nothing stopped it) let the fee
    # pass u64; the receipt could then not be built after the usage was counted
    m = Meter(CLIENT, scope_of(CONNECTION), Sla(2**20, 0, 0), 2**80, every_bytes=1)
    with pytest.raises(InvalidArgument, match="beyond u64"):
        m.record(0, U64_MAX)
    assert m.total_bytes == 0
    assert m.record(0, 1024) is not None
