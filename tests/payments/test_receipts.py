"""dtp.payments.receipts: the receipt vector of docs/escrow.md, fees, encoding, check_receipt,
Meter."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtp.errors import (
    InsufficientFunds,
    InvalidReceipt,
    MalformedReceipt,
    ReplayedReceipt,
    UnsupportedReceiptVersion,
)
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.payments.receipts import (
    RECEIPT_ENCODED_SIZE,
    RECEIPT_MESSAGE_SIZE,
    Meter,
    Receipt,
    ReceiptScope,
    check_receipt,
    fee,
    receipt_message,
)

PACKAGE = "0x" + bytes(range(32)).hex()
ESCROW = "0x" + "0" * 59 + "decaf"
CONN = "0x" + "0" * 58 + "c0ffee"
SCOPE = ReceiptScope(PACKAGE, ESCROW, CONN)
CLIENT = HostIdentity.from_private_bytes(b"\x11" * 32, b"\x11" * 32)
MALLORY = HostIdentity.from_private_bytes(b"\x22" * 32, b"\x22" * 32)
SLA = Sla(10, 5, 1000)

# docs/escrow.md §6 (tests/ledger/test_receipt_vectors.py checks them independently)
VECTOR_MESSAGE = bytes.fromhex(
    "0e4454502d524543454950542d5632"
    "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
    "00000000000000000000000000000000000000000000000000000000000decaf"
    "0000000000000000000000000000000000000000000000000000000000c0ffee"
    "0028000000000000040000000000000078000000000000000100000000000000"
)
VECTOR_SIGNATURE = bytes.fromhex(
    "abadb20ddecb20546b78e1de435492796e0dbaa38cd25e3249f49465e89d217e"
    "f1f3f9fa364b9f0ba773e38e345eed5f99b1c0f80d7052a7210e8d4347677803"
)


def test_receipt_vector() -> None:
    assert CLIENT.ed25519_public.hex() == (
        "d04ab232742bb4ab3a1368bd4615e4e6d0224ab71a016baf8520a332c9778737"
    )
    message = receipt_message(SCOPE, 10240, 4, 120, 1)
    assert len(message) == RECEIPT_MESSAGE_SIZE == 143
    assert message == VECTOR_MESSAGE
    receipt = Receipt(SCOPE, 10240, 4, 120, 1).sign(CLIENT)
    assert receipt.signature == VECTOR_SIGNATURE
    assert receipt.verify(CLIENT.ed25519_public)
    assert not receipt.verify(MALLORY.ed25519_public)
    assert (receipt.package, receipt.escrow_id, receipt.connection_id) == (PACKAGE, ESCROW, CONN)


def test_scope_ids_are_normalized() -> None:
    short = ReceiptScope("0x" + bytes(range(32)).hex().upper(), "0xDECAF", " 0xc0ffee ")
    assert short == SCOPE
    assert receipt_message(short, 10240, 4, 120, 1) == VECTOR_MESSAGE
    with pytest.raises(ValueError):
        ReceiptScope(PACKAGE, ESCROW, "c0ffee")  # (InvalidObjectId, a ValueError)


@pytest.mark.parametrize(
    "other",
    [
        ReceiptScope("0x1", ESCROW, CONN),
        ReceiptScope(PACKAGE, "0x1", CONN),
        ReceiptScope(PACKAGE, ESCROW, "0x1"),
    ],
)
def test_each_part_of_the_scope_changes_the_message(other: ReceiptScope) -> None:
    assert receipt_message(other, 10240, 4, 120, 1) != VECTOR_MESSAGE
    signed = Receipt(SCOPE, 10240, 4, 120, 1).sign(CLIENT)
    moved = Receipt(other, 10240, 4, 120, 1, signed.signature)
    assert not moved.verify(CLIENT.ed25519_public)


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
        receipt_message(SCOPE, -1, 0, 0, 1)
    with pytest.raises(ValueError):
        receipt_message(SCOPE, 0, 0, 2**64, 1)
    with pytest.raises(ValueError):
        receipt_message(SCOPE, 0, 0, 0, 2**64)
    with pytest.raises(TypeError):
        receipt_message(CONN, 0, 0, 0, 1)  # type: ignore[arg-type]


def test_nonce_zero_is_no_receipt() -> None:
    """Nonces start at 1 (an escrow's latest nonce is 0 before any claim, and a claim
    needs one above it): a receipt with nonce 0 could never be claimed, so none is
    signed, encoded or decoded, and a checker refuses it as the ledger does."""
    with pytest.raises(ValueError, match="never claimable"):
        receipt_message(SCOPE, 0, 0, 0, 0)
    with pytest.raises(ValueError):
        Receipt(SCOPE, 0, 0, 0, 0).sign(CLIENT)
    with pytest.raises(ValueError):
        Receipt(SCOPE, 0, 0, 0, 0, bytes(64)).encode()
    raw = bytearray(Receipt(SCOPE, 0, 0, 0, 1).sign(CLIENT).encode())
    raw[1 + 96 + 24 : 1 + 96 + 32] = bytes(8)  # the nonce, set to 0
    with pytest.raises(MalformedReceipt, match="nonce"):
        Receipt.decode(bytes(raw))
    unsigned = Receipt(SCOPE, 0, 0, 0, 0, bytes(64))
    kw = {"scope": SCOPE, "sla": SLA, "public_key": CLIENT.ed25519_public, "deposited": 1000}
    with pytest.raises(ReplayedReceipt):
        check_receipt(unsigned, **kw)  # type: ignore[arg-type]


@given(
    st.binary(min_size=96, max_size=96),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.integers(1, 2**64 - 1),
)
def test_encoding_round_trip(ids: bytes, b: int, r: int, a: int, n: int) -> None:
    scope = ReceiptScope(*("0x" + ids[i : i + 32].hex() for i in (0, 32, 64)))
    receipt = Receipt(scope, b, r, a, n, bytes(range(64)))
    raw = receipt.encode()
    assert len(raw) == RECEIPT_ENCODED_SIZE == 193 <= 1024
    assert raw[0] == 2 and raw[1:97] == ids
    assert raw[97:129] == struct.pack("<QQQQ", b, r, a, n) and raw[129:] == bytes(range(64))
    assert Receipt.decode(raw) == receipt
    assert Receipt.decode(memoryview(raw)) == receipt


def test_malformed_encodings() -> None:
    raw = Receipt(SCOPE, 1, 2, 3, 4).sign(CLIENT).encode()
    for bad in (b"", raw[:-1], raw + b"\0"):
        with pytest.raises(MalformedReceipt) as info:
            Receipt.decode(bad)
        assert isinstance(info.value, InvalidReceipt)
        assert not isinstance(info.value, UnsupportedReceiptVersion)
    with pytest.raises(ValueError):
        Receipt(SCOPE, 1, 2, 3, 4).encode()  # unsigned


V1_ENCODING = bytes.fromhex(
    "01"  # version 1: connection || totals || nonce || signature, 129 bytes
    "0000000000000000000000000000000000000000000000000000000000c0ffee"
    "0028000000000000040000000000000078000000000000000100000000000000"
    "90f31b93e37001ea82da2dbbeac138ea145f215761021ff89a7e4e50faf52bd6"
    "d923c35a2d7683b2ee4cf809aea4937e86b2814bca3bd50879352f618f8b5002"
)


@pytest.mark.parametrize("version", [1, 0, 3, 255])
def test_another_format_version_is_refused_as_such(version: int) -> None:
    """A peer of another release sends receipts of another version (a version-1 one:
    129 bytes, bound to the connection alone): refused by its version byte, whatever
    its size, with an error that says so (an InvalidReceipt, as any bad receipt)."""
    raw = V1_ENCODING if version == 1 else bytes([version]) + bytes(RECEIPT_ENCODED_SIZE - 1)
    assert len(V1_ENCODING) == 129
    for data in (raw, raw[:1], raw + bytes(100)):
        with pytest.raises(UnsupportedReceiptVersion) as info:
            Receipt.decode(data)
        assert info.value.version == version and info.value.expected == 2
        assert isinstance(info.value, MalformedReceipt)
        assert info.value.name == "UnsupportedReceiptVersion"
        assert f"version {version} is not supported" in str(info.value)


def test_check_receipt_rules() -> None:
    key = CLIENT.ed25519_public
    good = Receipt(SCOPE, 10240, 4, 120, 1).sign(CLIENT)
    kw = {"scope": SCOPE, "sla": SLA, "public_key": key, "deposited": 1000}
    assert check_receipt(good, **kw) == 120  # type: ignore[arg-type]
    assert check_receipt(good, **kw, claimed=100) == 20  # type: ignore[arg-type]
    cases = [
        (good, {"latest_nonce": 1}, "EReplayedReceipt"),
        (Receipt(SCOPE, 10240, 4, 120, 1).sign(MALLORY), {}, "EBadSignature"),
        (Receipt(SCOPE, 10240, 4, 121, 1).sign(CLIENT), {}, "EAmountMismatch"),
        (Receipt(SCOPE, 204800, 0, 2000, 1).sign(CLIENT), {}, "EReceiptExceedsDeposit"),
        (good, {"claimed": 121}, "EReceiptNotCumulative"),
    ]
    for receipt, extra, name in cases:
        with pytest.raises(InvalidReceipt) as info:
            check_receipt(receipt, **kw, **extra)  # type: ignore[arg-type]
        assert info.value.name == name
    with pytest.raises(ReplayedReceipt):
        check_receipt(good, **kw, latest_nonce=5)  # type: ignore[arg-type]


@pytest.mark.parametrize("part", ["package", "escrow_id", "connection_id"])
def test_check_receipt_refuses_a_receipt_of_another_scope(part: str) -> None:
    """A receipt signed for another package, escrow or connection fails as
    ``EBadSignature``, as on chain: whether it names its own scope (and is signed for it)
    or names the expected one (and is not)."""
    fields = {"package": PACKAGE, "escrow_id": ESCROW, "connection_id": CONN}
    other = ReceiptScope(**{**fields, part: "0x" + "11" * 32})
    kw = {"sla": SLA, "public_key": CLIENT.ed25519_public, "deposited": 1000}
    signed_for_other = Receipt(other, 10240, 4, 120, 1).sign(CLIENT)
    with pytest.raises(InvalidReceipt, match="receipt for connection") as info:
        check_receipt(signed_for_other, scope=SCOPE, **kw)  # type: ignore[arg-type]
    assert info.value.name == "EBadSignature"
    relabelled = Receipt(SCOPE, 10240, 4, 120, 1, signed_for_other.signature)
    with pytest.raises(InvalidReceipt, match="does not verify") as info:
        check_receipt(relabelled, scope=SCOPE, **kw)  # type: ignore[arg-type]
    assert info.value.name == "EBadSignature"
    assert check_receipt(signed_for_other, scope=other, **kw) == 120  # type: ignore[arg-type]


def test_meter_cadence_and_nonces() -> None:
    meter = Meter(CLIENT, SCOPE, SLA, 1000, every_bytes=4096, every_requests=3, every_ms=0)
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
    meter = Meter(CLIENT, SCOPE, SLA, 1000, every_bytes=0, every_ms=1000, now_ms=0)
    assert meter.record(10, nbytes=10) is None
    assert meter.poll(999) is None
    receipt = meter.poll(1000)
    assert receipt is not None and receipt.total_bytes == 10
    assert meter.poll(5000) is None  # nothing unpaid


def test_meter_never_exceeds_deposit() -> None:
    meter = Meter(CLIENT, SCOPE, SLA, 1000, every_bytes=1)
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
    meter = Meter(CLIENT, SCOPE, SLA, 20_000, every_bytes=2048, every_requests=2, every_ms=300)
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
