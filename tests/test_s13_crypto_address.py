"""DTP address parsing gives InvalidAddress, never an untyped error: ports of thousands
of digits (int() raises ValueError past 4300), and a bad host ID given to the
constructor."""

from __future__ import annotations

import pytest

from dtp.address import HostAddress, InvalidAddress, is_dtp_address

FULL = "0x" + "ab" * 32


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
