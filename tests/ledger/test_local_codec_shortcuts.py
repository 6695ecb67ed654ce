"""The shortcuts LocalLedger takes on every transaction (stored numbers read in their
own form, JSON scanned and encoded without the stdlib's wrappers, arguments checked and
encoded by their exact types) give what the general path gives, and refuse what it
refuses, for the texts and values that take the general path."""

from __future__ import annotations

import json
import os

import pytest

from dtp.errors import InvalidArgument
from dtp.ledger.local import rules
from dtp.ledger.local._tx import Address, Tx, encode_tx
from dtp.ledger.local.rules._common import DamagedData, from_json, parse_stored_int, to_json


class _Int(int):
    pass


class _Bytes(bytes):
    pass


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("0", 0),
        ("-0", 0),  # not str() of a number, still decimal digits
        ("007", 7),
        ("-12", -12),
        ("9" * 20, int("9" * 20)),
        ("-" + "9" * 20, -int("9" * 20)),
        ("1" + "0" * 20, None),  # 21 digits
        ("", None),
        ("-", None),
        (" 5", None),
        ("5 ", None),
        ("+5", None),
        ("5_0", None),
        ("\u0661\u0662", None),  # digits int() takes, the ledger never writes
        ("1e3", None),
        ("9" * 5000, None),  # past int()'s digit limit: a ValueError, not an answer
    ],
)
def test_stored_numbers_in_and_out_of_the_ledgers_own_form(text: str, number: int | None) -> None:
    assert parse_stored_int(text) == number
    if number is None:
        with pytest.raises(DamagedData):
            rules.stored_int(text)
    else:
        assert rules.stored_int(text) == number


@pytest.mark.parametrize(
    "text",
    ['{"a":1}', ' {"a":1}', '{"a":1} ', '\n{"a":1}\t', '{"a" : 1}', '{"b":{"$b":"00ff"}}'],
)
def test_stored_json_with_or_without_space_around_it(text: str) -> None:
    expected = json.loads(text)
    if "$b" in text:
        expected = {"b": b"\x00\xff"}
    assert from_json(text) == expected


@pytest.mark.parametrize("text", ['{"a":1}x', '{"a":1} 2', "", " ", "{", '{"$b":"0"}', "[1,]"])
def test_stored_json_that_does_not_parse(text: str) -> None:
    with pytest.raises(DamagedData, match="stored data does not parse"):
        from_json(text)


def test_object_data_json_is_canonical() -> None:
    data = {
        "z": [1, b"\x00\x01", None, True],
        "a": {"k\u00e9": "\u00e9\u2603", "n": -(2**70)},
        "m": {"$b": "not bytes"},
    }
    text = to_json(data)
    assert text == json.dumps(
        data,
        sort_keys=True,
        separators=(",", ":"),
        default=lambda b: {"$b": b.hex()},
    )
    assert text.isascii()
    with pytest.raises(TypeError, match="cannot store"):
        to_json({"a": {1, 2}})


def test_argument_checks_of_exact_types_and_of_others() -> None:
    cid, eid, cap = (Address("0x" + os.urandom(32).hex()) for _ in range(3))
    receipt = (100, 1, 2, 3, b"\x07" * 64)
    checked = rules.check_args(
        "transport_control", "settle_with_receipt", (cid, eid, cap, *receipt)
    )
    assert checked == [str(cid), str(eid), str(cap), *receipt]
    assert [type(a) for a in checked[:3]] == [str, str, str]
    assert rules.check_args("transport_control", "settle", (cid, eid, cap)) == checked[:3]
    # an int subclass within the bound passes, as the checks one by one take it
    assert rules.check_args("spending_cap", "create", (_Int(5),)) == [5]
    # (a negative one too, of either kind: Move's unsigned integers have none)
    for bad in (2**64, -1, _Int(-1), b"5", cid):
        with pytest.raises(InvalidArgument, match="argument 0 of spending_cap::create"):
            rules.check_args("spending_cap", "create", (bad,))
    with pytest.raises(InvalidArgument, match="must be an address or object ID"):
        rules.check_args("transport_control", "settle", (cid, str(eid), cap))


def test_transaction_bytes_of_subclasses_and_long_values_are_the_plain_ones() -> None:
    sender = "0x" + "ab" * 32

    def encoded(*args: object) -> bytes:
        return encode_tx(Tx(sender, 9, "m" * 130, "f", tuple(args)))  # type: ignore[arg-type]

    assert encoded(_Int(5)) == encoded(5)
    assert encoded(_Bytes(b"xy")) == encoded(b"xy")
    long = encoded(b"z" * 128)
    # a 128-byte value takes a two-byte length, as a 130-byte name does
    assert long.endswith(b"\x01\x01\x80\x01" + b"z" * 128)
    assert b"\x82\x01" + b"m" * 130 in long
    with pytest.raises(TypeError, match="booleans"):
        encoded(True)
    with pytest.raises(OverflowError):
        encoded(-1)
