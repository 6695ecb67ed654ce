"""A 6to4 address (2002:V4ADDR::/48) is counted by its IPv4 address for the per-address
handshake cap: the owner of one IPv4 address holds the whole /48, and counted by /64 it
had a cap for each of 65536 networks (the old code's keys differed for each /64)."""

from __future__ import annotations

from dtp.handshake_slots import AddressSlots, address_key


def test_sixtofour_addresses_count_as_their_ipv4_address() -> None:
    a = "2002:c000:204:1::1"  # 192.0.2.4, subnet 1
    b = "2002:c000:204:ffff::2"  # the same IPv4 address, another of its /64s
    assert address_key(a) == address_key(b) == "192.0.2.4"
    slots: AddressSlots[object] = AddressSlots(cap=1)
    assert slots.try_take(address_key(a))
    assert not slots.try_take(address_key(b))  # one cap for the whole /48
    assert not slots.try_take(address_key("192.0.2.4"))  # and the IPv4 address itself
    # an ordinary IPv6 client is still counted by its /64
    assert address_key("2001:db8:1:2::5") == "2001:db8:1:2::/64"
