"""docs/protocol.md 8.2, the decoder's rules: strict for the listed keys (their msgpack
forms, ranges, sizes, each at most once), tolerant for every other key (one well-formed
msgpack object, whatever it holds); a server's parameters, remembered by their bytes,
read again as a fresh dict and checked again against the version offered."""

from __future__ import annotations

import msgpack
import pytest

from dtp.errors import HandshakeError
from dtp.protocol.connection import _parse_params

PARAMS = {"v": 1, "md": 1 << 20, "msd": 1 << 20, "ms": 8, "it": 60000}
BASE = msgpack.packb(PARAMS)


def _with(extra: bytes, pairs: int = 1) -> bytes:
    """BASE with ``pairs`` more (key, value) pairs, ``extra`` their bytes."""
    assert 0x80 <= BASE[0] <= 0x8F
    return bytes([BASE[0] + pairs]) + BASE[1:] + extra


@pytest.mark.parametrize(
    "value",
    [
        msgpack.packb({1: 2, b"k": [None]}),  # a nested map with non-str keys
        b"\xa2\xff\xfe",  # a str that is not UTF-8
        b"\xd7\xff\xff\xff\xff\xff" + bytes(4),  # timestamp 64 with nanoseconds past 10^9
        b"\xc7\x03\xff\x00\x00\x00",  # ext 8 of type -1, 3 bytes: no timestamp has that size
        b"\xd4\x05\x00",  # an extension type nobody defined
        msgpack.packb([[[[[[]]]]]] * 3),
        msgpack.packb(1.5),
        b"\xc0",
        b"\xcb" + bytes(8),  # a float 64
    ],
    ids=[
        "nested-int-keys",
        "bad-utf8",
        "bad-nanoseconds",
        "bad-timestamp",
        "unknown-ext",
        "nesting",
        "float",
        "nil",
        "f64",
    ],
)
def test_an_unknown_key_is_ignored_whatever_its_value(value: bytes) -> None:
    assert _parse_params(_with(b"\xa1x" + value)) == PARAMS


def test_a_key_that_is_not_utf8_is_just_unknown() -> None:
    assert _parse_params(_with(b"\xa2\xff\xfe\x01")) == PARAMS


def test_unknown_keys_may_repeat_but_known_ones_may_not() -> None:
    assert _parse_params(_with(b"\xa1x\x01\xa1x\x02", pairs=2)) == PARAMS
    with pytest.raises(HandshakeError, match="'ms' appears twice"):
        _parse_params(_with(b"\xa2ms\x08"))


@pytest.mark.parametrize(
    "value",
    [
        b"\xc1",  # the reserved type byte
        b"\x92\x01",  # an array of 2 with one item
        b"\xa3ab",  # a str cut short
        b"\xdd\xff\xff\xff\xff",  # an array claiming 2^32 - 1 items
        b"\xc7\x05\x01\x00",  # an ext cut short
        b"",  # no value at all
    ],
    ids=["c1", "short-array", "short-str", "huge-array", "short-ext", "missing"],
)
def test_an_unknown_value_must_still_be_one_msgpack_object(value: bytes) -> None:
    with pytest.raises(HandshakeError, match="malformed"):
        _parse_params(_with(b"\xa1x" + value))


@pytest.mark.parametrize(
    "encoded",
    [
        b"\x08",
        b"\xcc\x08",
        b"\xcd\x00\x08",
        b"\xce\x00\x00\x00\x08",
        b"\xd0\x08",
        b"\xd3" + bytes(7) + b"\x08",
    ],
    ids=["fixint", "u8", "u16", "u32", "i8", "i64"],
)
def test_integers_in_any_width(encoded: bytes) -> None:
    payload = msgpack.packb({**PARAMS, "ms": 0}).replace(b"\xa2ms\x00", b"\xa2ms" + encoded)
    assert _parse_params(payload)["ms"] == 8


@pytest.mark.parametrize(
    "encoded",
    [
        b"\xff",
        b"\xd0\xff",
        b"\xc3",
        b"\xca\x00\x00\x00\x00",
        b"\xc0",
        b"\xa18",
        b"\xcf\x40" + bytes(7),
    ],
    ids=["neg-fixint", "neg-i8", "true", "float", "nil", "str", "2^62"],
)
def test_a_known_integer_of_another_form_or_out_of_range_fails(encoded: bytes) -> None:
    payload = msgpack.packb({**PARAMS, "ms": 0}).replace(b"\xa2ms\x00", b"\xa2ms" + encoded)
    with pytest.raises(HandshakeError, match="'ms'"):
        _parse_params(payload)


def test_it_zero_is_valid() -> None:
    assert _parse_params(msgpack.packb({**PARAMS, "it": 0}))["it"] == 0


@pytest.mark.parametrize(
    "cid",
    [b"\xc4\x20" + bytes(32), b"\xc5\x00\x20" + bytes(32), b"\xc6\x00\x00\x00\x20" + bytes(32)],
    ids=["bin8", "bin16", "bin32"],
)
def test_bin_in_any_width_but_never_a_str(cid: bytes) -> None:
    assert _parse_params(_with(b"\xa3cid" + cid))["cid"] == bytes(32)
    with pytest.raises(HandshakeError, match="'cid'"):
        _parse_params(_with(b"\xa3cid\xd9\x20" + bytes(32)))


@pytest.mark.parametrize(
    "header", [b"\xde\x00\x05", b"\xdf\x00\x00\x00\x05"], ids=["map16", "map32"]
)
def test_the_map_in_any_width(header: bytes) -> None:
    assert _parse_params(header + BASE[1:]) == PARAMS


def test_a_servers_parameters_read_again_are_a_fresh_dict() -> None:
    # remembered by their bytes: what one reader does to its dict is not the next's
    first = _parse_params(BASE)
    first["v"] = 99
    first["cid"] = b"x"
    assert _parse_params(BASE) == PARAMS
    assert _parse_params(BASE, offered=1) == PARAMS


def test_a_servers_parameters_read_again_are_checked_against_the_version_offered() -> None:
    two = msgpack.packb({**PARAMS, "v": 2})
    assert _parse_params(two)["v"] == 2
    with pytest.raises(HandshakeError, match="version 2"):
        _parse_params(two, offered=1)  # (remembered for offered=2, refused here)
