"""Shared set-up for the tests that check a connect by host ID refuses a bad argument
before any ledger write: a LocalLedger with a host and an echo service, a funded
client, and the check that nothing moved."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dtp.aio
import dtp.socket
from dtp.ledger._objects import EventFilter, Sla
from dtp.ledger.local import LocalLedger
from tests.support.ledger_server import identity_from_seed

SERVER = identity_from_seed(0x71)
CLIENT = identity_from_seed(0x72)
OTHER_KEY = identity_from_seed(0x73).noise_public  # no host publishes it
PORT = 7
DEPOSIT = 5000


@contextmanager
def paid_host(tmp_path: Path, *, tcp: bool = False) -> Iterator[tuple[LocalLedger, str]]:
    """(ledger, host ID): a host with an echo service on PORT and a funded client (and
    server). ``tcp``: the host publishes a TCP endpoint -- a listener that never answers,
    the connect must not get that far -- else none (the ledger carrier)."""
    listener = socket.create_server(("127.0.0.1", 0)) if tcp else None
    ledger = LocalLedger(tmp_path / "ledger.db")
    try:
        endpoints = [] if listener is None else [f"tcp://127.0.0.1:{listener.getsockname()[1]}"]
        host_id = ledger.create_host(SERVER, SERVER.noise_public, endpoints)
        ledger.add_service(SERVER, host_id, PORT, "echo", Sla(10, 5, 1000))
        ledger.faucet(CLIENT.sui_address, 1_000_000)
        ledger.faucet(SERVER.sui_address, 1_000_000)
        yield ledger, host_id
    finally:
        ledger.close()
        if listener is not None:
            listener.close()


def untouched(ledger: LocalLedger, before: int) -> None:
    """Nothing moved for the client: its balance is ``before``, and no spending cap or
    connection was made."""
    assert ledger.balance(CLIENT.sui_address) == before
    for kind in ("SpendingCapCreated", "ConnectionOpened"):
        events, _ = ledger.events(filter=EventFilter(type=kind), limit=10)
        assert events == [], kind


ADAPTERS = ["blocking", "asyncio"]


def connect(adapter: str, ledger: LocalLedger, host_id: str, **kwargs: object) -> None:
    """Connect by host ID to ``host_id``'s PORT as CLIENT with DEPOSIT, through the
    blocking (``dtp.socket.create_connection``) or the asyncio
    (``dtp.aio.open_connection``) adapter, and close what it opened; what it raises
    goes to the caller."""
    address = f"dtp://{host_id}:{PORT}"
    args: dict[str, Any] = {"ledger": ledger, "identity": CLIENT, "deposit": DEPOSIT, **kwargs}
    if adapter == "blocking":
        dtp.socket.create_connection(address, timeout=5, **args).close()
        return

    async def main() -> None:
        _, writer = await asyncio.wait_for(dtp.aio.open_connection(address, **args), 10)
        writer.close()

    asyncio.run(main())
