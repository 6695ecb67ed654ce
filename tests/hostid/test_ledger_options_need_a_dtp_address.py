"""The ledger's options (``ledger``, ``deposit``, ``cap_id``, ``carrier="ledger"``,
``metering``, ``on_open``…) open and pay a connection on the ledger, which only a DTP
address has: given with a carrier address or a WebSocket URL, both APIs refuse the
connect with a ValueError naming the option, before any connect is tried."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.hostid._address import HostAddress
from dtp.ledger.local._ledger import LocalLedger
from dtp.payments.metering import MeteringConfig

OPTIONS: list[tuple[str, Any]] = [
    ("deposit", 1000),
    ("cap_id", "0x" + "ab" * 32),
    ("carrier", "ledger"),
    ("metering", MeteringConfig()),
    ("on_open", lambda cap_id, connection_id: None),
]

# (port 9 on 127.0.0.1: the discard port, nothing listens; no connect is tried)
ADDRESSES = [("a carrier address", ("127.0.0.1", 9)), ("a WebSocket URL", "ws://127.0.0.1:9/")]


@pytest.mark.parametrize(("what", "address"), ADDRESSES, ids=["tcp", "ws"])
@pytest.mark.parametrize(("name", "value"), OPTIONS, ids=[name for name, _ in OPTIONS])
def test_the_blocking_connect_names_the_option(
    what: str, address: Any, name: str, value: Any
) -> None:
    with pytest.raises(ValueError, match=f"{name}.*need a DTP address.*not {what}"):
        dtp.socket.create_connection(address, timeout=5, **{name: value})


@pytest.mark.parametrize(("what", "address"), ADDRESSES, ids=["tcp", "ws"])
@pytest.mark.parametrize(("name", "value"), OPTIONS, ids=[name for name, _ in OPTIONS])
def test_the_asyncio_connect_names_the_option(
    what: str, address: Any, name: str, value: Any
) -> None:
    host, port = (address, None) if isinstance(address, str) else address
    with pytest.raises(ValueError, match=f"{name}.*need a DTP address.*not {what}"):
        asyncio.run(dtp.aio.open_connection(host, port, timeout=5, **{name: value}))


def test_a_ledger_with_a_carrier_address_is_refused_on_both_apis() -> None:
    ledger = LocalLedger(":memory:")
    try:
        with pytest.raises(ValueError, match="ledger: the ledger's options"):
            dtp.socket.create_connection(("127.0.0.1", 9), ledger=ledger)
        with pytest.raises(ValueError, match="ledger: the ledger's options"):
            asyncio.run(dtp.aio.open_connection("127.0.0.1", 9, ledger=ledger))
    finally:
        ledger.close()


def test_a_host_address_with_a_port_is_refused() -> None:
    address = HostAddress.parse("dtp://0x" + "12" * 32 + ":80")
    with pytest.raises(ValueError, match="names its port"):
        asyncio.run(dtp.aio.open_connection(address, 80))
