"""When the deposit runs out on a batch of requests, the client's last receipt signs
for as many of them as the deposit covers (it signed for none when not all fit: the
server was paid less than the deposit allowed)."""

from __future__ import annotations

from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.payments.metering import ClientMeter, MeteringConfig
from dtp.payments.receipts import fee
from tests.support.scopes import scope_of

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=1000)
CID = "0x" + "cd" * 32
CLIENT = HostIdentity.from_private_bytes(bytes([0x61]) * 32, bytes([0x62]) * 32)
QUIET = MeteringConfig(every_bytes=1 << 30, every_ms=0)


def test_requests_beyond_the_deposit_sign_as_many_as_it_covers() -> None:
    meter = ClientMeter(CLIENT, scope_of(CID), SLA, 1003, QUIET)
    last = meter.update(0, 0, 500)  # 2500 MIST of requests on a deposit of 1003
    assert meter.exhausted and last is not None
    assert last.total_requests == 200  # 1000 MIST: a 201st request would not fit
    assert last.total_bytes == 0  # the 3 MIST left cover no requests, nor bytes here
    assert last == meter.latest


def test_bytes_after_the_requests_fill_what_is_left() -> None:
    meter = ClientMeter(CLIENT, scope_of(CID), SLA, 1003, QUIET)
    last = meter.update(0, 1 << 20, 150)  # 750 MIST of requests, then 253 of bytes
    assert meter.exhausted and last is not None
    assert last.total_requests == 150
    assert last.total_amount == fee(SLA, last.total_bytes, 150) <= 1003
    assert last.total_bytes == (1003 - 750) * 1024 // 10  # all the bytes the rest covers


def test_after_earlier_usage_the_remainder_is_used() -> None:
    meter = ClientMeter(CLIENT, scope_of(CID), SLA, 1000, QUIET)
    assert meter.update(0, 10 * 1024, 10) is None  # 100 + 50 MIST, not due yet
    assert meter.flush(0) is not None
    last = meter.update(1, 10 * 1024, 1000)
    assert meter.exhausted and last is not None
    assert last.total_requests == 10 + (1000 - 150) // 5
    assert last.total_amount == 1000
