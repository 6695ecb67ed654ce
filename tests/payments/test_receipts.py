"""dtp.escrow: the receipt vector of docs/escrow.md, fees, encoding, check_receipt, Meter."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtp.chain.objects import Sla
from dtp.errors import InsufficientFunds, InvalidReceipt, MalformedReceipt, ReplayedReceipt
from dtp.escrow import (
    RECEIPT_ENCODED_SIZE,
    Meter,
    Receipt,
    check_receipt,
    fee,
    receipt_message,
)
from dtp.keys import HostIdentity

CONN = "0x" + "0" * 58 + "c0ffee"
CLIENT = HostIdentity.from_private_bytes(b"\x11" * 32, b"\x11" * 32)
MALLORY = HostIdentity.from_private_bytes(b"\x22" * 32, b"\x22" * 32)
SLA = Sla(10, 5, 1000)

VECTOR_MESSAGE = bytes.fromhex(
    "0e4454502d524543454950542d5631"
    "0000000000000000000000000000000000000000000000000000000000c0ffee"
    "0028000000000000040000000000000078000000000000000100000000000000"
)
VECTOR_SIGNATURE = bytes.fromhex(
    "90f31b93e37001ea82da2dbbeac138ea145f215761021ff89a7e4e50faf52bd6"
    "d923c35a2d7683b2ee4cf809aea4937e86b2814bca3bd50879352f618f8b5002"
)


def test_receipt_vector() -> None:
    assert CLIENT.ed25519_public.hex() == (
        "d04ab232742bb4ab3a1368bd4615e4e6d0224ab71a016baf8520a332c9778737"
    )
    message = receipt_message(CONN, 10240, 4, 120, 1)
    assert len(message) == 79
    assert message == VECTOR_MESSAGE
    receipt = Receipt(CONN, 10240, 4, 120, 1).sign(CLIENT)
    assert receipt.signature == VECTOR_SIGNATURE
    assert receipt.verify(CLIENT.ed25519_public)
    assert not receipt.verify(MALLORY.ed25519_public)
    assert receipt_message(bytes.fromhex(CONN[2:]), 10240, 4, 120, 1) == VECTOR_MESSAGE


@pytest.mark.parametrize(
    ("nbytes", "requests", "expected"),
    [(0, 0, 0), (1, 0, 1), (1024, 0, 10), (1025, 1, 16), (10240, 4, 120), (51200, 10, 550)],
)
def test_fee_examples(nbytes: int, requests: int, expected: int) -> None:
    assert fee(SLA, nbytes, requests) == expected


@given(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_fee_is_exact(nbytes: int, requests: int, price: int) -> None:
    sla = Sla(price, price, 0)
    byte_part = -(-nbytes * price // 1024)
    assert fee(sla, nbytes, requests) == byte_part + requests * price


def test_message_rejects_out_of_range() -> None:
    with pytest.raises(ValueError):
        receipt_message(CONN, -1, 0, 0, 1)
    with pytest.raises(ValueError):
        receipt_message(CONN, 0, 0, 2**64, 1)
    with pytest.raises(ValueError):
        receipt_message("c0ffee", 0, 0, 0, 1)


@given(
    st.binary(min_size=32, max_size=32),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
)
def test_encoding_round_trip(conn: bytes, b: int, r: int, a: int, n: int) -> None:
    receipt = Receipt("0x" + conn.hex(), b, r, a, n, bytes(range(64)))
    raw = receipt.encode()
    assert len(raw) == RECEIPT_ENCODED_SIZE <= 1024
    assert Receipt.decode(raw) == receipt
    assert Receipt.decode(memoryview(raw)) == receipt


def test_malformed_encodings() -> None:
    raw = Receipt(CONN, 1, 2, 3, 4).sign(CLIENT).encode()
    for bad in (b"", raw[:-1], raw + b"\0", b"\x02" + raw[1:]):
        with pytest.raises(MalformedReceipt) as info:
            Receipt.decode(bad)
        assert isinstance(info.value, InvalidReceipt)
    with pytest.raises(ValueError):
        Receipt(CONN, 1, 2, 3, 4).encode()  # unsigned


def test_check_receipt_rules() -> None:
    key = CLIENT.ed25519_public
    good = Receipt(CONN, 10240, 4, 120, 1).sign(CLIENT)
    kw = {"connection_id": CONN, "sla": SLA, "public_key": key, "deposited": 1000}
    assert check_receipt(good, **kw) == 120  # type: ignore[arg-type]
    assert check_receipt(good, **kw, claimed=100) == 20  # type: ignore[arg-type]
    cases = [
        (good, {"latest_nonce": 1}, "EReplayedReceipt"),
        (Receipt(CONN, 10240, 4, 120, 1).sign(MALLORY), {}, "EBadSignature"),
        (Receipt(CONN, 10240, 4, 121, 1).sign(CLIENT), {}, "EAmountMismatch"),
        (Receipt(CONN, 204800, 0, 2000, 1).sign(CLIENT), {}, "EReceiptExceedsDeposit"),
        (good, {"claimed": 121}, "EReceiptNotCumulative"),
    ]
    for receipt, extra, name in cases:
        with pytest.raises(InvalidReceipt) as info:
            check_receipt(receipt, **kw, **extra)  # type: ignore[arg-type]
        assert info.value.name == name
    with pytest.raises(ReplayedReceipt):
        check_receipt(good, **kw, latest_nonce=5)  # type: ignore[arg-type]
    other = "0x" + "11" * 32
    with pytest.raises(InvalidReceipt, match="does not verify"):
        check_receipt(good, **{**kw, "connection_id": other})  # type: ignore[arg-type]


def test_meter_cadence_and_nonces() -> None:
    meter = Meter(CLIENT, CONN, SLA, 1000, every_bytes=4096, every_requests=3, every_ms=0)
    assert meter.record(0, nbytes=1000) is None
    assert meter.record(1, nbytes=3096) is not None  # 4096 bytes reached
    first = meter.latest
    assert first is not None and first.nonce == 1 and first.total_amount == fee(SLA, 4096, 0)
    assert meter.record(2, requests=2) is None
    second = meter.record(3, requests=1)
    assert second is not None and second.nonce == 2 and second.total_requests == 3
    assert second.total_amount == fee(SLA, 4096, 3) and second.verify(CLIENT.ed25519_public)
    assert meter.flush(4) is None  # nothing new
    meter.record(5, nbytes=1)
    third = meter.flush(6)
    assert third is not None and third.nonce == 3 and third.total_bytes == 4097


def test_meter_time_cadence() -> None:
    meter = Meter(CLIENT, CONN, SLA, 1000, every_bytes=0, every_ms=1000, now_ms=0)
    assert meter.record(10, nbytes=10) is None
    assert meter.poll(999) is None
    receipt = meter.poll(1000)
    assert receipt is not None and receipt.total_bytes == 10
    assert meter.poll(5000) is None  # nothing unpaid


def test_meter_never_exceeds_deposit() -> None:
    meter = Meter(CLIENT, CONN, SLA, 1000, every_bytes=1)
    assert meter.affordable_bytes() == 102400
    meter.record(0, nbytes=102400)
    with pytest.raises(InsufficientFunds):
        meter.record(1, nbytes=1)
    assert meter.total_bytes == 102400 and meter.remaining == 0
    meter.top_up(5)
    assert meter.deposit == 1005
    assert meter.record(2, requests=1) is None  # no request cadence set
    receipt = meter.flush(3)
    assert receipt is not None and receipt.total_amount == 1005 <= meter.deposit


@given(
    st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 3), st.integers(0, 500)), max_size=40)
)
def test_meter_properties(usage: list[tuple[int, int, int]]) -> None:
    meter = Meter(CLIENT, CONN, SLA, 20_000, every_bytes=2048, every_requests=2, every_ms=300)
    now = 0
    receipts = []
    for nbytes, requests, dt in usage:
        now += dt
        try:
            receipt = meter.record(now, nbytes, requests)
        except InsufficientFunds:
            continue
        if receipt is not None:
            receipts.append(receipt)
    last = meter.flush(now)
    if last is not None:
        receipts.append(last)
    nonces = [r.nonce for r in receipts]
    assert nonces == list(range(1, len(receipts) + 1))
    amounts = [r.total_amount for r in receipts]
    assert amounts == sorted(amounts) and all(a <= 20_000 for a in amounts)
    for r in receipts:
        assert r.total_amount == fee(SLA, r.total_bytes, r.total_requests)
    if receipts:
        assert (receipts[-1].total_bytes, receipts[-1].total_requests) == (
            meter.total_bytes,
            meter.total_requests,
        )
