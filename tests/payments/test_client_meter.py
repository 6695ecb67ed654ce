"""The client meter counts usage only where counting can change something: at the byte
cadence's next receipt, at the first byte the deposit does not cover, on a new request,
or when the time cadence comes due. It counted in steps of a sixteenth of the cadence,
running the meter (a fee, a deposit check) 16 times per receipt."""

from __future__ import annotations

from typing import Any

from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.payments.metering import ClientMeter, MeteringConfig
from dtp.payments.receipts import fee
from tests.support.scopes import scope_of

CLIENT = HostIdentity.from_private_bytes(bytes([0x75]) * 32, bytes([0x75]) * 32)
CID = "0x" + "cd" * 32
SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=1 << 30)


def _counting(meter: ClientMeter) -> list[int]:
    """The byte counts the meter's Meter.record is called with, from now on."""
    calls: list[int] = []
    record = meter.meter.record

    def counted(now_ms: int, nbytes: int = 0, requests: int = 0) -> Any:
        calls.append(nbytes)
        return record(now_ms, nbytes, requests)

    meter.meter.record = counted  # type: ignore[method-assign]
    return calls


def test_quiet_until_is_the_next_receipt_by_bytes() -> None:
    every = 256 << 10
    meter = ClientMeter(
        CLIENT, scope_of(CID), SLA, 1 << 40, MeteringConfig(every_bytes=every, every_ms=0)
    )
    assert meter.update(0, 10, 1) is None  # the request: counted, no receipt due
    assert meter.quiet_until() == (every, None)
    calls = _counting(meter)
    receipts = []
    for total in range(64 << 10, (1 << 20) + 1, 64 << 10):  # 1 MiB in 64 KiB writes
        receipt = meter.update(1, total, 1)
        if receipt is not None:
            receipts.append(receipt.total_bytes)
    # a receipt at each 256 KiB, and the meter ran only for those four
    assert receipts == [every, 2 * every, 3 * every, 4 * every]
    assert len(calls) == 4
    assert meter.quiet_until() == (5 * every, None)


def test_quiet_until_stops_at_the_first_byte_the_deposit_does_not_cover() -> None:
    deposit = 1005  # one request (5) and 100 KiB (1000) at 10 MIST/KiB
    meter = ClientMeter(
        CLIENT, scope_of(CID), SLA, deposit, MeteringConfig(every_bytes=1 << 30, every_ms=0)
    )
    assert meter.update(0, 0, 1) is None
    covered = 100 * 1024
    assert meter.quiet_until()[0] == covered + 1
    assert meter.update(1, covered, 1) is None and not meter.exhausted
    last = meter.update(2, covered + 1, 1)  # one byte past: signed up to the deposit
    assert meter.exhausted
    assert last is not None and last.total_bytes == covered
    assert last.total_amount == fee(SLA, covered, 1) == deposit


def test_a_flush_covers_usage_given_below_the_bound() -> None:
    meter = ClientMeter(
        CLIENT, scope_of(CID), SLA, 1 << 40, MeteringConfig(every_bytes=1 << 20, every_ms=0)
    )
    assert meter.update(0, 1000, 1) is None
    assert meter.update(1, 5000, 1) is None  # below the bound: not counted yet
    receipt = meter.flush(2)
    assert receipt is not None and (receipt.total_bytes, receipt.total_requests) == (5000, 1)
    assert meter.flush(3) is None
