"""Strategies for who and where: identities, Sui addresses, object and host IDs, ports,
``dtp://`` addresses -- and address texts that are not addresses."""

from __future__ import annotations

import string

from dtp.hostid._address import HostAddress
from dtp.identity.keys import HostIdentity
from dtp.testing.strategies._hypothesis import st

__all__ = [
    "dtp_address_texts",
    "dtp_addresses",
    "host_ids",
    "identities",
    "invalid_dtp_address_texts",
    "object_ids",
    "ports",
    "sui_addresses",
]

_HEX = "0123456789abcdef"


def identities() -> st.SearchStrategy[HostIdentity]:
    """Identities (an Ed25519 Sui key and an X25519 Noise key) from drawn seeds: they
    shrink towards the all-zero seeds, and replay from hypothesis' database as any value
    does (unlike ``HostIdentity.generate()``, which is random)."""
    return st.builds(
        HostIdentity.from_private_bytes,
        st.binary(min_size=32, max_size=32),
        st.binary(min_size=32, max_size=32),
    )


def object_ids(*, short: bool = False) -> st.SearchStrategy[str]:
    """Sui object IDs in their normal form, ``0x`` + 64 lowercase hex digits. With
    ``short``, also the spellings Sui accepts for them: fewer digits (zero-padded on the
    left), upper case, a ``0X`` prefix -- each names the ID its normal form does."""
    normal = st.text(_HEX, min_size=64, max_size=64).map(lambda h: "0x" + h)
    if not short:
        return normal
    shortened = st.text(_HEX, min_size=1, max_size=64).map(lambda h: "0x" + h)
    return st.one_of(
        normal, shortened, shortened.map(lambda t: "0x" + t[2:].upper()), normal.map(str.upper)
    )


def sui_addresses() -> st.SearchStrategy[str]:
    """Sui addresses (``0x`` + 64 hex digits): some of identities drawn, so they can sign,
    and some of none."""
    return st.one_of(identities().map(lambda i: i.sui_address), object_ids())


def host_ids() -> st.SearchStrategy[str]:
    """Host IDs: the object IDs of ``Host`` objects (normal form)."""
    return object_ids()


def ports(*, allow_zero: bool = True) -> st.SearchStrategy[int]:
    """DTP ports, 0..65535 (1..65535 without ``allow_zero``), the edges drawn often."""
    low = 0 if allow_zero else 1
    return st.one_of(st.sampled_from([low, 1, 80, 7000, 65535]), st.integers(low, 65535))


def dtp_addresses() -> st.SearchStrategy[HostAddress]:
    """:class:`~dtp.hostid._address.HostAddress` values (``dtp://0x<host id>:<port>``)."""
    return st.builds(HostAddress, host_ids(), ports())


@st.composite
def _spelled(draw: st.DrawFn) -> tuple[str, HostAddress]:
    address = draw(dtp_addresses())
    digits = address.host_id[2:]
    host = "0x" + (digits.lstrip("0") or "0") if draw(st.booleans()) else address.host_id
    if draw(st.booleans()):
        host = "0x" + host[2:].upper()
    scheme = draw(st.sampled_from(["dtp://", "DTP://", "Dtp://", ""]))
    port = "0" * draw(st.integers(0, 3)) + str(address.port)
    pad = draw(st.sampled_from(["", " ", "\t", "\n "]))
    return f"{pad}{scheme}{host}:{port}{pad}", address


def dtp_address_texts() -> st.SearchStrategy[tuple[str, HostAddress]]:
    """``(text, address)``: texts :meth:`HostAddress.parse` reads as ``address`` -- with
    or without the scheme in any case, short and upper-case host IDs, leading zeros in
    the port, whitespace around the whole."""
    return _spelled()


def invalid_dtp_address_texts() -> st.SearchStrategy[str]:
    """Texts that are no DTP address (:meth:`HostAddress.parse` raises
    :class:`~dtp.hostid._address.InvalidAddress`): no port, a port beyond 65535 or not
    in ASCII digits, a host ID too long or not hex, whitespace inside, other schemes,
    thousands of digits, empty text."""
    good = dtp_addresses().map(lambda a: (a.host_id, str(a.port)))
    return st.one_of(
        st.just(""),
        good.map(lambda hp: f"dtp://{hp[0]}"),  # no port
        good.map(lambda hp: f"dtp://{hp[0]}:"),
        st.tuples(host_ids(), st.integers(65536, 10**12)).map(lambda t: f"dtp://{t[0]}:{t[1]}"),
        good.map(lambda hp: f"dtp://{hp[0]}:{'٣' * len(hp[1])}"),  # Arabic-Indic digits
        good.map(lambda hp: f"dtp://{hp[0]}:-{hp[1]}"),
        good.map(lambda hp: f"dtp://{hp[0]}0:{hp[1]}"),  # 65 hex digits
        good.map(lambda hp: f"dtp://{hp[0][:-1]}g:{hp[1]}"),
        good.map(lambda hp: f"dtp:// {hp[0]}:{hp[1]}"),
        good.map(lambda hp: f"dtp://{hp[0]} :{hp[1]}"),
        good.map(lambda hp: f"http://{hp[0]}:{hp[1]}"),
        good.map(lambda hp: f"dtp://{hp[0]}:{hp[1]}/path"),
        host_ids().map(lambda h: f"dtp://{h}:" + "9" * 5000),
        st.text(string.ascii_letters + ":/", max_size=20).filter(lambda t: ":" not in t),
    )
