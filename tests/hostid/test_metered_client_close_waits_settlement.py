"""A paid client's close waits for the server's settlement (its end of the carrier closes
once it has settled) rather than half-closing the connection on the ledger itself; it
gave up after a quiet 20 ms and sent a transaction of its own, and paid its gas,
whenever the settlement took longer (tests/hostid/test_memoized_checks.py checks the wait, in
both APIs). Here: the wait is bounded."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import dtp.socket
from dtp.errors import ObjectNotFound
from dtp.hostid._payment_hook import MeteredClient
from dtp.hostid.paid import PaidServer, PaidSocket
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import ConnectionState, Sla
from dtp.ledger.local import LocalLedger
from tests.support.settlements import is_settled

SERVER = HostIdentity.generate()
CLIENT = HostIdentity.generate()
PORT = 80


class ServerLedger(LocalLedger):
    """The server's view of the ledger (its own class: a test may slow it alone)."""


class CountingCloses(LocalLedger):
    """The client's view: counts the half-closes it sends."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.half_closes = 0

    def close_connection(self, *args: Any, **kwargs: Any) -> Any:
        self.half_closes += 1
        return super().close_connection(*args, **kwargs)


@dataclass
class World:
    client_ledger: CountingCloses
    host_id: str
    server: PaidServer

    @property
    def address(self) -> str:
        return f"dtp://{self.host_id}:{PORT}"

    def settled(self, connection_id: str) -> bool:
        try:
            tc = self.client_ledger.get_connection(connection_id)
        except ObjectNotFound:  # (deleted by its client once settled)
            return is_settled(self.client_ledger, connection_id)
        return tc.settled and tc.state != ConnectionState.OPEN


def _echo(sock: PaidSocket) -> None:
    while data := sock.recv(65536):
        sock.sendall(data)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    path = tmp_path / "ledger.db"
    client_ledger = CountingCloses(path)
    server_ledger = ServerLedger(path)
    host_id = client_ledger.create_host(SERVER, SERVER.noise_public)
    client_ledger.add_service(SERVER, host_id, PORT, "echo", Sla(1, 1, 1000))
    client_ledger.faucet(CLIENT.sui_address, 10**9)
    server = dtp.socket.serve(
        host_id,
        PORT,
        _echo,
        ledger=server_ledger,
        identity=SERVER,
        receipts=tmp_path / "receipts.db",
    )
    try:
        yield World(client_ledger, host_id, server)
    finally:
        server.close()
        server_ledger.close()
        client_ledger.close()


def test_a_server_that_never_settles_costs_the_wait_then_the_half_close(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wait is bounded: a server that keeps its end open past it gets the client's
    half-close (the refund timeout starts), as before."""
    monkeypatch.setattr(MeteredClient, "close_wait", 0.05)
    hold = threading.Event()
    held: list[Any] = []
    original = ServerLedger.settle_with_receipt

    def stuck(self: ServerLedger, *args: Any, **kwargs: Any) -> Any:
        held.append(args)
        hold.wait(60)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ServerLedger, "settle_with_receipt", stuck)
    monkeypatch.setattr(ServerLedger, "settle", stuck)
    try:
        with dtp.socket.create_connection(
            world.address, timeout=30, ledger=world.client_ledger, identity=CLIENT, deposit=10_000
        ) as sock:
            sock.sendall(b"z")
            assert sock.recv(10) == b"z"
            connection_id = sock.connection_id
        assert connection_id is not None
        assert world.client_ledger.half_closes == 1
        assert world.client_ledger.get_connection(connection_id).state != ConnectionState.OPEN
    finally:
        hold.set()
    deadline = time.monotonic() + 60
    while not world.settled(connection_id) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert world.settled(connection_id)  # the server settles the half-closed connection
