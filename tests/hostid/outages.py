"""Ledger carriers whose ledger breaks on demand, on a LocalLedger file (the world fixture),
the echo handler that aborts its connections, and what a carrier's failure must say,
for the ledger carrier outage tests."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import dtp.socket
from dtp.errors import ChainError, ConnectionLost, DTPError, ObjectNotFound
from dtp.hostid.ledger_carrier._bridge import (
    LedgerBridge,
    LedgerCarrierOptions,
    connect_ledger_carrier,
)
from dtp.ledger._objects import EventFilter
from dtp.ledger.interface import Ledger
from dtp.ledger.local import LocalLedger
from tests.support.ledger_carrier_world import CLIENT, DEPOSIT, PORT, SERVER, SLA


class AbortingEcho:
    """The server's handler: echoes, and aborts its connection once told (the client's
    ledger failed, so its pipe stays: the server's bridge would wait for the idle
    timeout)."""

    def __init__(self) -> None:
        self.socks: list[dtp.socket.DTPSocket] = []

    def __call__(self, sock: dtp.socket.DTPSocket) -> None:
        self.socks.append(sock)
        with contextlib.suppress(DTPError):
            while data := sock.recv(1 << 16):
                sock.sendall(data)

    def abort(self) -> None:
        for sock in self.socks:
            sock.abort()


def says_why(exc: BaseException) -> None:
    assert isinstance(exc, ConnectionLost)
    assert "ledger carrier failed" in str(exc) and "LedgerUnavailable" in str(exc), exc
    assert "the node does not answer" in str(exc)
    # and the ledger's own error is there to be caught or logged: the chain of causes
    causes = []
    cause = exc.__cause__
    while cause is not None and len(causes) < 5:
        causes.append(cause)
        cause = cause.__cause__
    assert any(isinstance(c, ChainError) for c in causes), causes


class Outage:
    """A ledger whose calls named in ``down`` (all of them: ``"*"``) fail as a node that
    does not answer does; ``failed`` counts the failures."""

    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self.down: set[str] = set()
        self.failed = 0
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._ledger, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kw: Any) -> Any:
            if name in self.down or "*" in self.down:
                with self._lock:
                    self.failed += 1
                raise ChainError("the node does not answer", name="LedgerUnavailable")
            return attr(*args, **kw)

        return call


@dataclass
class OutageWorld:
    ledger: LocalLedger
    connection_id: str
    host_id: str

    def pipe_gone(self, pipe: str) -> bool:
        try:
            self.ledger.get_pipe(pipe)
        except ObjectNotFound:
            return True
        return False

    def payloads(self, pipe: str) -> list[bytes]:
        events, _ = self.ledger.events(filter=EventFilter(type="PipeDataSent"), limit=10_000)
        return [bytes(e["data"]) for e in events if e["pipe"] == pipe]


@pytest.fixture
def world(tmp_path: Path) -> Iterator[OutageWorld]:
    """A host that publishes no endpoint, a service, and one Open connection of CLIENT's."""
    ledger = LocalLedger(tmp_path / "ledger.db")
    try:
        host_id = ledger.create_host(SERVER, SERVER.noise_public)
        ledger.add_service(SERVER, host_id, PORT, "echo", SLA)
        ledger.faucet(CLIENT.sui_address, 1_000_000)
        cap = ledger.create_spending_cap(CLIENT, DEPOSIT)
        opened = ledger.open_connection(CLIENT, host_id, PORT, cap, DEPOSIT)
        yield OutageWorld(ledger, opened.connection_id, host_id)
    finally:
        ledger.close()


def data_record(body: bytes) -> bytes:
    """A DATA record as the bridge passes them (a valid header, opaque ciphertext)."""
    return bytes([16, 0]) + len(body).to_bytes(2, "little") + bytes(8) + body


def bridge_with_outage(world: OutageWorld, outage_timeout: float) -> tuple[LedgerBridge, Outage]:
    made: list[Outage] = []

    def wrap(ledger: Ledger) -> Ledger:
        made.append(Outage(ledger))
        return made[-1]  # type: ignore[return-value]

    options = LedgerCarrierOptions(ledger_filter=wrap, outage_timeout=outage_timeout)
    bridge = connect_ledger_carrier(
        world.ledger, CLIENT, world.connection_id, SERVER.sui_address, options
    )
    return bridge, made[0]
