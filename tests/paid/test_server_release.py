"""The paid servers' wait_released(): close() stops accepting, but a connection still
served settles later; a ReceiptStore of the caller's closed right after close() made
that settlement fail on it (its fees unclaimed), and tests had to poll the ledger for
it. The blocking server now has wait_released() too: it waits until every connection
ended and settled and the receipt writer stopped -- which the asyncio one did not wait
for. Real LocalLedger files, real ReceiptStore files, real paid connections by host ID
on 127.0.0.1."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pytest

import dtp.aio
import dtp.hostid.paid.aio
import dtp.payments.serving
import dtp.socket
from dtp.chain.objects import ConnectionState, Sla
from dtp.errors import LocalProtocolError
from dtp.escrow import Receipt
from dtp.hostid.paid import Handler, PaidServer, PaidSocket, ServicePolicy
from dtp.hostid.paid.aio import PaidReader, PaidWriter
from dtp.metering import MeteringConfig
from dtp.receipt_store import ReceiptStore
from tests.support.paid_twins import PaidWorld, hosted_ledgers, ident, loop_in_thread, stop
from tests.support.polling import wait_for

T = TypeVar("T")

PORT = 7
SERVER = ident(0x81)
CLIENT = ident(0x82)


class StallingStore(ReceiptStore):
    """A receipt store whose disk stalls on demand (writes block until ``resume`` is
    set): a disk that takes minutes to sync cannot be had on purpose here."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.stall = threading.Event()
        self.resume = threading.Event()
        self.stalled = threading.Event()  # a write is blocked now

    def _wait(self) -> None:
        if self.stall.is_set():
            self.stalled.set()
            self.resume.wait(600)

    def keep_many(
        self, receipts: Sequence[Receipt], claimed: Mapping[str, int] | None = None
    ) -> list[bool]:
        self._wait()
        return super().keep_many(receipts, claimed)

    def mark_claimed_many(self, claimed: Mapping[str, int]) -> None:
        self._wait()
        super().mark_claimed_many(claimed)


class World(PaidWorld):
    @property
    def address(self) -> str:
        return f"dtp://{self.host_id}:{PORT}"

    def serve(self, handler: Handler, store: ReceiptStore) -> PaidServer:
        return dtp.socket.serve(
            self.host_id,
            PORT,
            handler,
            ledger=self.server_ledger,
            identity=SERVER,
            receipts=store,
            policy=ServicePolicy(allowance=500),
        )

    def connect(self) -> dtp.socket.DTPSocket:
        return self.connect_as(CLIENT, PORT, 200_000, metering=MeteringConfig(every_bytes=16 << 10))

    def settled(self, connection_id: str) -> bool:
        tc = self.ledger.get_connection(connection_id)
        return tc.settled and tc.state != ConnectionState.OPEN

    def claimed(self, connection_id: str) -> int:
        tc = self.ledger.get_connection(connection_id)
        return self.ledger.get_escrow(tc.escrow).claimed


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with hosted_ledgers(tmp_path, SERVER, CLIENT, PORT, Sla(10, 5, 5000)) as ledgers:
        yield World(*ledgers, tmp_path)


def _echo(sock: PaidSocket) -> None:
    while data := sock.recv(65536):
        sock.sendall(data)


def _exchange(sock: dtp.socket.DTPSocket, rounds: int = 8) -> None:
    """Echo enough for receipts to be signed and stored."""
    for _ in range(rounds):
        sock.sendall(b"z" * 30_000)
        got = b""
        while len(got) < 30_000:
            data = sock.recv(65536)
            assert data
            got += data
        assert got == b"z" * 30_000


def test_wait_released_waits_for_a_connection_open_at_close(world: World) -> None:
    """close() with a client still connected: not released until the client is gone
    and its connection settled; then the caller's store may close, with the claim on
    the ledger and its mark in the store."""
    store = ReceiptStore(world.tmp_path / "receipts.db")
    server = world.serve(_echo, store)
    try:
        assert not server.wait_released(0)  # (not closed)
        assert not server.wait_released(5)  # (not closed: False at once, never True)
        sock = world.connect()
        with sock:
            _exchange(sock)
            cid = sock.connection_id
            assert cid is not None
            server.close()
            # the connection is still served: a client that stays keeps it unreleased
            assert not server.wait_released(0.5)
            _exchange(sock, 2)  # (and it is served on)
        assert server.wait_released(60)
        assert server.wait_released(0)  # (stays released)
    finally:
        server.close()
        assert server.wait_released(60)
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
        _echo(sock)

    server = world.serve(closing, store)
    servers.append(server)
    try:
        with world.connect() as sock:
            sock.sendall(b"close")
            assert sock.recv(6) == b"closed"
            cid = sock.connection_id
            assert cid is not None
            _exchange(sock, 2)
        assert server.wait_released(60)
    finally:
        server.close()
        assert server.wait_released(60)
        store.close()
    assert len(refused) == 1
    assert world.settled(cid)
    assert [c for c, _ in server.settlements] == [cid]


def test_not_released_while_the_receipt_writer_still_writes(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The release waits for the receipt writer only so long (RELEASE_WRITER_WAIT, 30 s;
    2 s here), then goes on with the writer still writing (a stalled disk):
    wait_released() said True then, and the caller closing its store lost what the
    writer held (here the settlement's claimed mark). It waits for the writer too."""
    monkeypatch.setattr(dtp.payments.serving, "RELEASE_WRITER_WAIT", 2.0)
    store = StallingStore(world.tmp_path / "receipts.db")
    server = world.serve(_echo, store)
    try:
        with world.connect() as sock:
            _exchange(sock)
            cid = sock.connection_id
            assert cid is not None
            server.close()
            store.stall.set()  # from now on the disk does not answer
        # the release (RELEASE_WRITER_WAIT into the writer's stall) has run: the event is what
        # wait_released() waited for alone
        assert server._released.wait(120)
        assert store.stalled.is_set()
        assert not server.wait_released(1)  # the writer is still at the store
        store.resume.set()
        assert server.wait_released(60)
    finally:
        store.resume.set()
        server.close()
        server.wait_released(60)
        store.close()
    assert world.settled(cid)
    with ReceiptStore(world.tmp_path / "receipts.db") as again:
        stored = again.latest(cid)
        assert stored is not None and stored.unclaimed == 0  # the mark was written


def test_the_asyncio_server_waits_for_the_receipt_writer_too(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PaidAioServer.wait_released() had the same gap: True once the release ran,
    though the release had left the receipt writer still writing to the caller's
    store."""
    monkeypatch.setattr(dtp.payments.serving, "RELEASE_WRITER_WAIT", 2.0)
    store = StallingStore(world.tmp_path / "receipts.db")

    async def echo(reader: PaidReader, writer: PaidWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()

    with loop_in_thread() as loop:

        def run(coro: Coroutine[Any, Any, T]) -> T:
            return asyncio.run_coroutine_threadsafe(coro, loop).result(180)

        server = world.serve_aio(
            loop,
            PORT,
            echo,
            SERVER,
            timeout=180,
            receipts=store,
            policy=ServicePolicy(allowance=500),
        )
        try:
            with world.connect() as sock:
                _exchange(sock)
                cid = sock.connection_id
                assert cid is not None
                loop.call_soon_threadsafe(server.close)  # (the client still connected)
                store.stall.set()  # from now on the disk does not answer
            # the release (RELEASE_WRITER_WAIT into the writer's stall, on the loop) has run
            assert wait_for(server._released.is_set, 120)
            assert store.stalled.is_set()
            assert not run(server.wait_released(1))  # the writer is still at the store
            store.resume.set()
            assert run(server.wait_released(60))
        finally:
            store.resume.set()
            run(stop(server))
            run(server.wait_released(60))
            store.close()
    assert world.settled(cid)
    with ReceiptStore(world.tmp_path / "receipts.db") as again:
        stored = again.latest(cid)
        assert stored is not None and stored.unclaimed == 0  # the mark was written
