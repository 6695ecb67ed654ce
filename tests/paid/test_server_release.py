"""The paid servers' wait_released(): close() stops accepting, but a connection still
served settles later; a ReceiptStore of the caller's closed right after close() (or
after the asyncio server's wait_closed(), which returns once the listener closed) made
that settlement fail on it (its fees unclaimed), and tests had to poll the ledger for
it. Both servers' wait_released() wait until every connection ended and settled and the
receipt writer stopped (the ``driver`` fixture runs each test on both). Real LocalLedger
files, real ReceiptStore files, real paid connections by host ID on 127.0.0.1."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TypeVar

import pytest

import dtp.aio
import dtp.hostid.paid._aio
import dtp.payments._serving
import dtp.socket
from dtp.errors import LocalProtocolError, ObjectNotFound
from dtp.hostid.paid import Handler, PaidServer, PaidSocket, ServicePolicy
from dtp.ledger._objects import ConnectionState, Sla
from dtp.payments.metering import MeteringConfig
from dtp.payments.receipt_store import ReceiptStore
from tests.paid.conftest import Driver, exchange
from tests.support.paid_stores import StallingStore
from tests.support.paid_twins import PaidWorld, echo, hosted_ledgers, ident
from tests.support.polling import wait_for
from tests.support.settlements import is_settled

T = TypeVar("T")

PORT = 7
SERVER = ident(0x81)
CLIENT = ident(0x82)
POLICY = ServicePolicy(allowance=500)


class World(PaidWorld):
    @property
    def address(self) -> str:
        return f"dtp://{self.host_id}:{PORT}"

    def serve(self, handler: Handler, store: ReceiptStore) -> PaidServer:
        return self.serve_blocking(PORT, handler, SERVER, receipts=store, policy=POLICY)

    def connect(self) -> dtp.socket.DTPSocket:
        return self.connect_as(CLIENT, PORT, 200_000, metering=MeteringConfig(every_bytes=16 << 10))

    def settled(self, connection_id: str) -> bool:
        try:
            tc = self.ledger.get_connection(connection_id)
        except ObjectNotFound:  # (deleted by its client once settled)
            return is_settled(self.ledger, connection_id)
        return tc.settled and tc.state != ConnectionState.OPEN


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with hosted_ledgers(tmp_path, SERVER, CLIENT, PORT, Sla(10, 5, 5000)) as ledgers:
        yield World(*ledgers, tmp_path)


def test_wait_released_waits_for_a_connection_open_at_close(world: World, driver: Driver) -> None:
    """close() with a client still connected: not released until the client is gone
    and its connection settled; then the caller's store may close, with the claim on
    the ledger and its mark in the store (closed after wait_closed() alone, the
    settlement failed on it and the fees went unclaimed)."""
    store = ReceiptStore(world.tmp_path / "receipts.db")
    try:
        with world.serve_on(driver, PORT, "echo", SERVER, receipts=store, policy=POLICY) as server:
            assert not driver.wait_released(server, 0)  # (not closed)
            assert not driver.wait_released(server, 5)  # (not closed: False at once)
            with world.connect() as sock:
                exchange(sock, 8)
                cid = sock.connection_id
                assert cid is not None
                driver.close(server)
                # the wait for the close (the asyncio server's wait_closed(), the
                # blocking one's serve_forever()) returns with the connection still
                # served; wait_released() is what waits for it
                assert driver.wait_closed(server, 10)
                # the connection is still served: a client that stays keeps it unreleased
                assert not driver.wait_released(server, 0.5)
                exchange(sock, 2)  # (and it is served on)
            assert driver.wait_released(server, 60)
            assert driver.wait_released(server, 0)  # (stays released)
    finally:
        store.close()  # the caller's, once released
    # settled by then, no polling: the release came after the settlement
    assert world.settled(cid)
    assert world.claimed(cid) > 0
    assert [c for c, _ in server.settlements] == [cid]
    with ReceiptStore(world.tmp_path / "receipts.db") as again:
        stored = again.latest(cid)
        assert stored is not None and stored.unclaimed == 0  # the claim's mark is there


def test_close_from_a_handler_does_not_deadlock(world: World) -> None:
    """A handler may close its own server (its connection then one still served and
    settled); wait_released() in a handler would wait for itself and is refused."""
    store = ReceiptStore(world.tmp_path / "receipts.db")
    servers: list[PaidServer] = []
    refused: list[BaseException] = []

    def closing(sock: PaidSocket) -> None:
        assert sock.recv(5) == b"close"
        servers[0].close()
        try:
            servers[0].wait_released(None)
        except LocalProtocolError as exc:
            refused.append(exc)
        sock.sendall(b"closed")
        echo(sock)

    server = world.serve(closing, store)
    servers.append(server)
    try:
        with world.connect() as sock:
            sock.sendall(b"close")
            assert sock.recv(6) == b"closed"
            cid = sock.connection_id
            assert cid is not None
            exchange(sock, 2)
        assert server.wait_released(60)
    finally:
        server.close()
        assert server.wait_released(60)
        store.close()
    assert len(refused) == 1
    assert world.settled(cid)
    assert [c for c, _ in server.settlements] == [cid]


def test_not_released_while_the_receipt_writer_still_writes(
    world: World, driver: Driver, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The release waits for the receipt writer only so long (RELEASE_WRITER_WAIT, 30 s;
    2 s here), then goes on with the writer still writing (a stalled disk):
    wait_released() said True then, and the caller closing its store lost what the
    writer held (here the settlement's claimed mark). It waits for the writer too."""
    monkeypatch.setattr(dtp.payments._serving, "RELEASE_WRITER_WAIT", 2.0)
    store = StallingStore(world.tmp_path / "receipts.db")
    try:
        with world.serve_on(driver, PORT, "echo", SERVER, receipts=store, policy=POLICY) as server:
            try:
                with world.connect() as sock:
                    exchange(sock, 8)
                    cid = sock.connection_id
                    assert cid is not None
                    driver.close(server)  # (the client still connected)
                    store.stall.set()  # from now on the disk does not answer
                # the release (RELEASE_WRITER_WAIT into the writer's stall) has run: the
                # event is what wait_released() waited for alone
                assert wait_for(server._released.is_set, 120)
                assert store.stalled.is_set()
                assert not driver.wait_released(server, 1)  # the writer is at the store
                store.resume.set()
                assert driver.wait_released(server, 60)
            finally:
                store.resume.set()
    finally:
        store.resume.set()
        store.close()
    assert world.settled(cid)
    with ReceiptStore(world.tmp_path / "receipts.db") as again:
        stored = again.latest(cid)
        assert stored is not None and stored.unclaimed == 0  # the mark was written
