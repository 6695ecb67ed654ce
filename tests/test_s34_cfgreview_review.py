"""A second reader's find in prepare_host_connection: a ``config`` that is no
ConnectionConfig was found only by the ``replace()`` that makes the client config, after
the ledger writes -- the spending cap created and, paying through a sponsor pool (whose
open is not deferred), the deposit moved into escrow, with nothing half-closed (the
failure came out of the preparation itself, so no caller had a connection to abandon).
It is refused now with the other argument checks, before any ledger write."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.chain.local import LocalLedger
from dtp.chain.objects import EventFilter, Sla
from tests.ledger_server import identity_from_seed

SERVER = identity_from_seed(0x71)
CLIENT = identity_from_seed(0x72)
PORT = 7
DEPOSIT = 5000
#: not a ConnectionConfig: what a caller may pass by mistake (its fields as a dict)
NOT_A_CONFIG: Any = {"stream_window": 1 << 20}


@pytest.fixture
def tcp_host(tmp_path: Path) -> Iterator[tuple[LocalLedger, str]]:
    """A host that publishes a TCP endpoint (a listener that never answers: the connect
    must not get that far), and a funded client."""
    listener = socket.create_server(("127.0.0.1", 0))
    ledger = LocalLedger(tmp_path / "ledger.db")
    try:
        endpoint = f"tcp://127.0.0.1:{listener.getsockname()[1]}"
        host_id = ledger.create_host(SERVER, SERVER.noise_public, [endpoint])
        ledger.add_service(SERVER, host_id, PORT, "echo", Sla(10, 5, 1000))
        ledger.faucet(CLIENT.sui_address, 1_000_000)
        yield ledger, host_id
    finally:
        ledger.close()
        listener.close()


def _untouched(ledger: LocalLedger, before: int) -> None:
    assert ledger.balance(CLIENT.sui_address) == before
    for kind in ("SpendingCapCreated", "ConnectionOpened"):
        events, _ = ledger.events(filter=EventFilter(type=kind), limit=10)
        assert events == [], kind


def test_blocking_connect_refuses_a_config_of_another_type_before_the_cap(
    tcp_host: tuple[LocalLedger, str],
) -> None:
    chain, host_id = tcp_host
    before = chain.balance(CLIENT.sui_address)
    with pytest.raises(TypeError) as refused:
        dtp.socket.create_connection(
            f"dtp://{host_id}:{PORT}",
            ledger=chain,
            identity=CLIENT,
            deposit=DEPOSIT,
            config=NOT_A_CONFIG,
            timeout=5,
        )
    _untouched(chain, before)
    assert "config must be a ConnectionConfig" in str(refused.value)


def test_sponsored_connect_refuses_a_config_of_another_type_before_the_deposit(
    tcp_host: tuple[LocalLedger, str],
) -> None:
    # The sponsored open is not deferred: it ran before the replace() that failed, and
    # the deposit stayed in escrow on an open connection nobody half-closed.
    chain, host_id = tcp_host
    pool = chain.create_sponsor_pool(SERVER, host_id, PORT, share_bps=2_500)
    chain.faucet(SERVER.sui_address, 1_000_000)
    chain.fund_sponsor_pool(SERVER, pool, 100_000)
    before = chain.balance(CLIENT.sui_address)
    with pytest.raises(TypeError) as refused:
        dtp.socket.create_connection(
            f"dtp://{host_id}:{PORT}",
            ledger=chain,
            identity=CLIENT,
            deposit=DEPOSIT,
            config=NOT_A_CONFIG,
            sponsor_pool=pool,
            timeout=5,
        )
    _untouched(chain, before)
    assert "config must be a ConnectionConfig" in str(refused.value)


def test_asyncio_connect_refuses_a_config_of_another_type_before_the_cap(
    tcp_host: tuple[LocalLedger, str],
) -> None:
    chain, host_id = tcp_host
    before = chain.balance(CLIENT.sui_address)

    async def main() -> None:
        await asyncio.wait_for(
            dtp.aio.open_connection(
                f"dtp://{host_id}:{PORT}",
                ledger=chain,
                identity=CLIENT,
                deposit=DEPOSIT,
                config=NOT_A_CONFIG,
            ),
            10,
        )

    with pytest.raises(TypeError) as refused:
        asyncio.run(main())
    _untouched(chain, before)
    assert "config must be a ConnectionConfig" in str(refused.value)
