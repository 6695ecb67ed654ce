"""The Python <-> Gun value mapping (dtp.graph.values, docs/graph.md "Values"), without
Node.js: the texts JavaScript writes are spelled out here (ECMA-262 Number::toString,
JSON.stringify), and test_gun_equivalence.py checks many more against Node itself."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtp.errors import LocalProtocolError, RemoteProtocolError
from dtp.graph import Graph, GraphValueError, link
from dtp.graph.values import (
    decode_value,
    encode_value,
    gun_value,
    is_gun_value,
    js_number,
    value_text,
)


@pytest.mark.parametrize(
    ("number", "text"),
    [
        (0, "0"),
        (-0.0, "0"),
        (1, "1"),
        (1.0, "1"),
        (-1.5, "-1.5"),
        (0.1, "0.1"),
        (1e-6, "0.000001"),  # positional down to 1e-6 ...
        (1.5e-6, "0.0000015"),
        (9.99e-7, "9.99e-7"),  # ... and below it in exponent notation
        (1e-7, "1e-7"),
        (1.2345e-7, "1.2345e-7"),
        (5e-324, "5e-324"),
        (1e15, "1000000000000000"),
        (1e16, "10000000000000000"),  # Python's repr: 1e+16
        (1.5e16, "15000000000000000"),
        (2**53, "9007199254740992"),
        (2**60, "1152921504606847000"),  # the shortest digits, padded with zeros: not
        (2**60 + 2**8, "1152921504606847200"),  # 2**60 + 2**8 = 1152921504606847232
        (1e20, "100000000000000000000"),
        (999999999999999900000.0, "999999999999999900000"),
        (1e21, "1e+21"),  # exponent notation from 1e21
        (1.5e21, "1.5e+21"),
        (-1e21, "-1e+21"),
        (1.7976931348623157e308, "1.7976931348623157e+308"),
        (123456789.125, "123456789.125"),
    ],
)
def test_numbers_are_written_as_javascript_writes_them(number: float, text: str) -> None:
    assert js_number(number) == text
    assert encode_value(number) == text.encode()


def test_strings_links_and_constants() -> None:
    assert value_text("é\U0001f600") == '"é\U0001f600"'  # not escaped, as JS
    assert value_text('"\\\b\f\n\r\t\x00\x1f\x7f\u2028') == (
        '"\\"\\\\\\b\\f\\n\\r\\t\\u0000\\u001f\x7f\u2028"'
    )
    assert value_text(link("a/b")) == '{"#":"a/b"}'
    assert value_text({"#": "x"}) == '{"#":"x"}'
    assert [value_text(v) for v in (None, True, False)] == ["null", "true", "false"]


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ([1, 2], "no arrays"),
        ((1,), "no arrays"),
        ({"a": 1}, "link"),
        ({"#": "x", "y": 1}, "link"),
        ({"#": ""}, "link"),  # Gun's own test: a non-empty soul
        ({"#": 5}, "link"),
        (math.nan, "NaN"),
        (-math.inf, "NaN or infinite"),
        (2**53 + 1, "no exact binary64"),
        (-(2**64) - 1, "no exact binary64"),
        (10**400, "beyond the range"),
        (b"bytes", "not a graph value"),
        ("\ud800", "lone surrogate"),
        (object(), "not a graph value"),
    ],
)
def test_values_gun_cannot_hold_are_refused(value: object, match: str) -> None:
    with pytest.raises(GraphValueError, match=match) as info:
        encode_value(value)
    assert isinstance(info.value, LocalProtocolError) and isinstance(info.value, ValueError)


def test_put_refuses_them_and_writes_nothing() -> None:
    g = Graph()
    for fields in (
        {"ok": 1, "list": [1, 2]},
        {"ok": 1, "big": 2**53 + 1},
        {"ok": 1, "_": "meta"},  # where Gun keeps a node's metadata
        {"ok": 1, "child": {"_": 1}},
    ):
        with pytest.raises(GraphValueError):
            g.put("n", fields)
    assert len(g) == 0
    g.put("n", {"ok": 2.0, "big": 2**60, "child": {"x": None}})
    assert g.get("n") == {"ok": 2, "big": 2.0**60, "child": {"#": "n/child"}}
    assert type(g.get_field("n", "ok")) is int and type(g.get_field("n", "big")) is float
    assert g.get("n/child") == {"x": None}
    g.close()


@pytest.mark.parametrize(
    ("stored", "value"),
    [
        (b"2", 2),
        (b"-0", 0),
        (b"9007199254740992", 2**53),  # an integer text within 2**53: that int
        (b"10000000000000000", 1e16),  # beyond: the binary64 JS reads, a float
        (b"1152921504606847200", float(2**60 + 2**8)),
        (b"1152921504606846977", 2**60 + 1),  # not JS's text: an int of format 1, exact
        (b"1e+21", 1e21),
        (b"0.5", 0.5),
        (b"1.0", 1.0),  # (format 1's text: read, though not Gun's)
    ],
)
def test_numbers_read_back(stored: bytes, value: float) -> None:
    got = decode_value(stored)
    assert got == value and type(got) is type(value)


@given(
    st.one_of(
        st.floats(allow_nan=False, allow_infinity=False),
        st.integers(-(2**53), 2**53),
        st.text(st.characters(exclude_categories=["Cs"])),
    )
)
def test_what_put_writes_is_gun_text(value: float | int | str) -> None:
    stored = encode_value(value)
    assert is_gun_value(stored) and gun_value(stored) == value
    assert encode_value(decode_value(stored)) == stored


@pytest.mark.parametrize(
    "stored", [b"1.0", b"1e-06", b'"\\u0041"', b" 1", b"[1]", b'{"a":1}', b"1152921504606846977"]
)
def test_gun_value_refuses_other_texts(stored: bytes) -> None:
    """Another spelling of a Gun value, or a value Gun cannot hold: a Gun peer would
    compare another text at a tie, or not hold it at all."""
    assert not is_gun_value(stored)
    with pytest.raises(RemoteProtocolError):
        gun_value(stored)
