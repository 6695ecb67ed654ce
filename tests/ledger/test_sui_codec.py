"""The Sui BCS codec and transaction builders: canonical ULEB128 on
decode, typed errors and exact widths on encode, base58-only object digests, and object
inputs that Sui would refuse (a gas coin twice, an object both owned and shared)."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from dtp.errors import ChainError, InvalidArgument
from dtp.ledger.sui import _codec as sui_codec
from dtp.ledger.sui import _tx as sui_tx
from dtp.ledger.sui._codec import EVENT_LAYOUTS, OBJECT_LAYOUTS, BcsDecodeError, decode, encode
from dtp.ledger.sui._tx import GasData, OwnedRef, SharedRef, TxContext

PACKAGE = "0x" + "d7" * 32
SENDER = "0x" + "16" * 32
GAS = OwnedRef("0x" + "9a" * 32, 7, "4vJ9JU1bJJE96FWSJKvHsmmFADCg4gpZQff4P3bkLKi")
GAS_2 = OwnedRef("0x" + "9b" * 32, 8, "8qbHbw2BbbTHBW1sbeqakYXVKRQM8Ne7pLK7m6CVfeR")
CTX = TxContext(PACKAGE, SENDER, GasData((GAS,), 1000, 10_000_000))
HOST = SharedRef("0x" + "a1" * 32, 11)
TERMS = SharedRef("0x" + "a2" * 32, 12)
PIPE = OwnedRef("0x" + "a6" * 32, 21, "11111111111111111111111111111111")
#: The TransportControl ``State`` enum layout.
STATE = dict(OBJECT_LAYOUTS["TransportControl"][1])["state"]


# -- decoding: BCS ULEB128 is canonical and at most 2**32-1 -------------------------------------


@pytest.mark.parametrize(
    ("layout", "data"),
    [
        (("vec", "u8"), b"\x80\x00"),  # 0 in two bytes
        ("bytes", b"\x81\x00a"),  # 1 in two bytes
        ("string", b"\x80\x80\x80\x80\x80\x00"),  # 0 in six bytes
        (STATE, b"\x80\x00"),  # variant 0 (Open) in two bytes
    ],
)
def test_decode_refuses_non_canonical_uleb128(layout: Any, data: bytes) -> None:
    # BCS has exactly one encoding per value; a decoder that takes another lets two byte
    # strings stand for one object, and Sui's own decoder refuses them
    with pytest.raises(BcsDecodeError, match="ULEB128"):
        decode(layout, data)


def test_decode_refuses_uleb128_over_u32() -> None:
    # 2**32 as a length: past BCS's bound, whatever follows
    with pytest.raises(BcsDecodeError, match="2\\*\\*32"):
        decode("bytes", b"\x80\x80\x80\x80\x10")


def test_decode_accepts_canonical_multibyte_uleb128() -> None:
    raw = b"x" * 200
    assert decode("bytes", b"\xc8\x01" + raw) == raw
    with pytest.raises(BcsDecodeError, match="ULEB128"):
        decode("bytes", b"\xc8\x81\x00" + raw)


def test_decode_refuses_duplicate_vecmap_keys() -> None:
    # a Move VecMap never holds a key twice; dict() would keep the last and drop a service
    with pytest.raises(BcsDecodeError, match="twice"):
        decode(("map", "u16", "u8"), b"\x02\x01\x00\x05\x01\x00\x06")
    assert decode(("map", "u16", "u8"), b"\x02\x01\x00\x05\x02\x00\x06") == {1: 5, 2: 6}


# -- encoding: exact widths and typed errors -----------------------------------------------------


def test_encode_address_needs_0x_and_at_most_32_bytes() -> None:
    full = "0x" + "a1" * 32
    assert encode("address", full) == bytes.fromhex("a1" * 32)
    assert encode("id", "0x6") == bytes(31) + b"\x06"
    # without the prefix the first two hex digits were dropped and the rest zero-padded
    with pytest.raises(ChainError):
        encode("address", "a1" * 32)
    # 33 bytes were written for a 32-byte field, shifting everything after it
    with pytest.raises(ChainError):
        encode("id", "0x" + "a1" * 33)
    with pytest.raises(ChainError):
        encode("address", "0xzz")


@pytest.mark.parametrize(
    ("layout", "value"),
    [("u64", -1), ("u8", 256), ("u16", 1 << 16), ("u64", 1 << 64), ("u64", 1.9), ("u64", "12")],
)
def test_encode_integer_out_of_range_or_not_int_is_invalid_argument(
    layout: str, value: Any
) -> None:
    # was OverflowError, or a float truncated / a str parsed and written
    with pytest.raises(InvalidArgument):
        encode(layout, value)


def test_encode_bool_takes_only_a_bool() -> None:
    assert encode("bool", True) == b"\x01"
    assert encode("bool", False) == b"\x00"
    with pytest.raises(InvalidArgument):
        encode("bool", "false")  # was written as true


def test_encode_bad_shapes_are_typed_errors() -> None:
    with pytest.raises(InvalidArgument):
        encode(STATE, {"kind": "Nope"})
    with pytest.raises(InvalidArgument):
        encode(EVENT_LAYOUTS[("host", "HostCreated")], {"host": "0x1"})
    with pytest.raises(InvalidArgument):
        sui_codec.encode_event("host", "NoSuchEvent", {})


# -- transactions --------------------------------------------------------------------------------


def test_object_digest_must_be_base58() -> None:
    # pysui falls back to base64 for a string that is not base58; Sui shows digests in
    # base58 only, so a base64 string is a mistake, not another spelling
    b64 = base64.b64encode(bytes(range(32))).decode()
    with pytest.raises(InvalidArgument, match="digest"):
        OwnedRef("0x1", 1, b64).to_bcs()
    assert OwnedRef("0x1", 1, GAS.digest).to_bcs().ObjectDigest.Digest  # base58 still fine


def test_gas_payment_items_must_be_owned_refs() -> None:
    ctx = TxContext(PACKAGE, SENDER, GasData(("0x" + "9a" * 32,), 1000, 10))  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match=r"(?i)gas coin"):
        sui_tx.create_spending_cap(ctx, 5)


def test_gas_coin_listed_twice_is_refused() -> None:
    # Sui refuses a mutable object used twice (MutableObjectUsedMoreThanOnce)
    ctx = TxContext(PACKAGE, SENDER, GasData((GAS, GAS_2, GAS), 1000, 10))
    with pytest.raises(InvalidArgument, match=r"(?i)gas coin"):
        sui_tx.create_spending_cap(ctx, 5)


def test_gas_coin_used_as_an_input_is_refused() -> None:
    with pytest.raises(InvalidArgument, match=r"(?i)gas coin"):
        sui_tx.pipe_send(CTX, GAS, 0, b"x")


def test_object_both_owned_and_shared_is_refused() -> None:
    # the second use silently became the first input (an owned ref where the Move call
    # wanted a shared object)
    pipe_as_terms = SharedRef(PIPE.object_id, 3)
    with pytest.raises(InvalidArgument, match="owned"):
        sui_tx.send_retained(CTX, PIPE, HOST, pipe_as_terms, 0, b"", 1)


def test_shared_object_with_two_initial_versions_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="initial shared version"):
        sui_tx.reimburse(CTX, HOST, SharedRef(HOST.object_id, 99), TERMS, TERMS)
    # the same ref twice is one input (mutable, since one use is)
    built = sui_tx.reimburse(CTX, TERMS, HOST, TERMS, HOST)
    assert built.count(bytes.fromhex("a1" * 32)) == 1


def test_encode_uleb128_bound() -> None:
    assert sui_tx.encode_uleb128(2**32 - 1) == b"\xff\xff\xff\xff\x0f"
    with pytest.raises(InvalidArgument):
        sui_tx.encode_uleb128(2**32)
