"""DTP addresses and object IDs: parsing, normalisation, and clear errors.

DTP address parsing gives InvalidAddress, never an untyped error: ports of thousands
of digits (int() raises ValueError past 4300), and a bad host ID given to the
constructor."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dtp.errors import InvalidObjectId
from dtp.hostid._address import HostAddress, InvalidAddress, is_dtp_address
from dtp.ledger._objects import normalize_id

FULL = "0x" + "ab" * 32


def test_parse_forms_and_round_trip() -> None:
    a = HostAddress.parse(f"dtp://{FULL}:443")
    assert (a.host_id, a.port) == (FULL, 443)
    assert str(a) == f"dtp://{FULL}:443"
    assert HostAddress.parse(str(a)) == a
    assert HostAddress.parse(f"{FULL.upper().replace('0X', '0x')}:443") == a
    short = HostAddress.parse("DTP://0xC0FFEE:0")
    assert short.host_id == "0x" + "0" * 58 + "c0ffee" and short.port == 0


@pytest.mark.parametrize(
    "text",
    [
        "",
        "dtp://",
        f"dtp://{FULL}",
        f"dtp://{FULL}:",
        f"dtp://{FULL}:65536",
        f"dtp://{FULL}:-1",
        f"dtp://{FULL}:4 43",
        f"dtp://{FULL}:٤٤٣",  # non-ASCII digits
        "dtp://0x:443",
        "dtp://0x1_0:443",  # int() would accept the underscore
        "dtp://0x+1:443",  # ...and a sign
        "dtp://example.com:443",
        f"dtp://0x{'1' * 65}:443",
    ],
)
def test_bad_addresses_are_typed_errors(text: str) -> None:
    with pytest.raises(InvalidAddress):
        HostAddress.parse(text)
    assert not is_dtp_address(text)


@pytest.mark.parametrize("bad", ["0x1_0", "0x+1", "0x-1", "0x", "1234", "0x12 34", "0x" + "f" * 65])
def test_normalize_id_is_strict(bad: str) -> None:
    with pytest.raises(InvalidObjectId):
        normalize_id(bad)


@given(st.integers(min_value=0, max_value=2**256 - 1), st.integers(0, 65535))
def test_any_id_and_port_round_trip(value: int, port: int) -> None:
    address = HostAddress(hex(value), port)
    assert len(address.host_id) == 66
    assert HostAddress.parse(str(address)) == address
    assert is_dtp_address(str(address))


@pytest.mark.parametrize("port", ["9" * 5000, "1" * 4301, "0" * 5000 + "70000"])
def test_a_port_of_thousands_of_digits_is_an_invalid_address(port: str) -> None:
    text = f"dtp://{FULL}:{port}"
    with pytest.raises(InvalidAddress, match=r"outside 0\.\.65535"):
        HostAddress.parse(text)
    assert not is_dtp_address(text)


def test_leading_zeros_still_name_the_port() -> None:
    assert HostAddress.parse(f"dtp://{FULL}:" + "0" * 5000 + "443").port == 443
    assert HostAddress.parse(f"{FULL}:0000").port == 0


@pytest.mark.parametrize("host_id", [5, None, "0xzz", "", "0x" + "1" * 65])
def test_the_constructor_refuses_a_bad_host_id_with_invalid_address(host_id: object) -> None:
    with pytest.raises(InvalidAddress):
        HostAddress(host_id, 1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text",
    [f"dtp:// {FULL}:80", f"dtp://{FULL} :80", f"dtp://{FULL}\t:80", f"dtp://\u00a0{FULL}:80"],
)
def test_address_with_whitespace_inside_is_refused(text: str) -> None:
    with pytest.raises(InvalidAddress):
        HostAddress.parse(text)
    assert not is_dtp_address(text)
    # around it, as before
    assert HostAddress.parse(f"  dtp://{FULL}:80\n") == HostAddress(FULL, 80)


def test_normalize_id_remembers_answers_within_its_bound() -> None:
    from dtp.ledger import _objects

    forms = ["0xC0FFEE", " 0xc0ffee ", FULL.upper().replace("0X", "0x")]
    first = [normalize_id(text) for text in forms]
    # asked again, the remembered answer is the one worked out
    assert [normalize_id(text) for text in forms] == first
    assert first[0] == first[1] == "0x" + "0" * 58 + "c0ffee" and first[2] == FULL
    assert _objects._NORMALIZED["0xC0FFEE"] == first[0]
    # a text longer than an ID (padded) is answered but not kept
    padded = " " * 100 + "0x1"
    assert normalize_id(padded) == "0x" + "0" * 63 + "1"
    assert padded not in _objects._NORMALIZED

    # nor is a str subclass's, which may compare otherwise
    class Text(str):
        pass

    assert normalize_id(Text("0x5eed5eed")) == "0x" + "0" * 56 + "5eed5eed"
    assert "0x5eed5eed" not in _objects._NORMALIZED
    # many IDs never hold more than the bound
    for value in range(_objects._NORMALIZED_MAX + 10):
        normalize_id(hex(value))
    assert len(_objects._NORMALIZED) <= _objects._NORMALIZED_MAX
    # a bad ID is refused after good ones, as before
    with pytest.raises(InvalidObjectId):
        normalize_id("0x1_0")
