"""A paid server's release with its receipt writer still writing (a stalled disk):
the release waits for the writer only RELEASE_WRITER_WAIT, and then detached the
server from the store at once, letting go of its run's lock file while the writer
still held receipts of the run. Another server starting on the store then took the run
for a dead one and claimed the older receipt stored for a connection whose settlement
had failed (the ledger down for a moment): the connection settled at that amount, and
the newer receipt the writer wrote after was worth nothing. The detach now waits for
the writer (its thread does it as its last step), in both servers. Real LocalLedger
files, real ReceiptStore files, real paid connections by host ID on 127.0.0.1.

And the in-memory carrier's impairments: chances outside 0..1 and unknown split
modes are refused."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

import dtp.hostid.paid
import dtp.payments._serving
import dtp.socket
from dtp.errors import LedgerUnavailable
from dtp.hostid.paid import ServicePolicy
from dtp.ledger._objects import Sla
from dtp.payments._receipt_writer import ReceiptWriter
from dtp.payments._serving import recover_store
from dtp.payments.metering import MeteringConfig
from dtp.payments.receipt_store import ReceiptStore
from dtp.protocol.connection import Connection, ConnectionConfig
from dtp.transport.carriers._memory import MemoryLink
from tests.paid.conftest import exchange
from tests.support.paid_stores import StallingStore
from tests.support.paid_twins import (
    PaidWorld,
    echo,
    echo_aio,
    hosted_ledgers,
    ident,
    loop_in_thread,
)
from tests.support.polling import wait_for
from tests.support.receipt_stores import CONN, receipt

T = TypeVar("T")

PORT = 7
SERVER = ident(0x91)
CLIENT = ident(0x92)


class World(PaidWorld):
    def connect(self) -> dtp.socket.DTPSocket:
        return self.connect_as(CLIENT, PORT, 200_000, metering=MeteringConfig(every_bytes=16 << 10))


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with hosted_ledgers(tmp_path, SERVER, CLIENT, PORT, Sla(10, 5, 5000)) as ledgers:
        yield World(*ledgers, tmp_path)


def _ledger_down(world: World, monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """An event that, while set, fails the server's settlements (a ledger outage)."""
    down = threading.Event()
    settle = world.server_ledger.settle_with_receipt

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if down.is_set():
            raise LedgerUnavailable("the ledger is down (test)")
        return settle(*args, **kwargs)

    monkeypatch.setattr(world.server_ledger, "settle_with_receipt", flaky)
    return down


def _story(
    world: World,
    monkeypatch: pytest.MonkeyPatch,
    start: Callable[[StallingStore], Any],
    close: Callable[[Any], None],
    released: Callable[[Any], bool],
    wait_released: Callable[[Any, float], bool],
) -> None:
    """Receipts stored, then the disk stalls with newer ones held by the writer, the
    ledger fails the connection's settlement, and the server closes: its release gives
    up waiting for the writer. Another server starting on the store meanwhile must not
    take the run for a dead one; once the writer is done, the newest receipt is what a
    recovery claims."""
    monkeypatch.setattr(dtp.payments._serving, "RELEASE_WRITER_WAIT", 0.3)
    down = _ledger_down(world, monkeypatch)
    path = world.tmp_path / "receipts.db"
    store = StallingStore(path)
    other: ReceiptStore | None = None
    server = start(store)
    try:
        with world.connect() as sock:
            exchange(sock, 4)
            cid = sock.connection_id
            assert cid is not None
            assert wait_for(lambda: store.latest(cid) is not None, 10)
            store.stall.set()
            exchange(sock, 1)  # newer receipts: held by the stalled writer
            assert wait_for(store.stalled.is_set, 10)
            down.set()
        close(server)
        assert wait_for(lambda: released(server), 30)
        assert not wait_released(server, 0)  # (the writer is still at the store)
        held = server.receipt_writer.latest(cid)
        on_disk = store.latest(cid)
        assert held is not None and on_disk is not None
        assert held.receipt.total_amount > on_disk.receipt.total_amount
        assert on_disk.unclaimed > 0  # (the settlement failed: nothing claimed)
        down.clear()

        # another server starts on the store while the writer still writes
        other = ReceiptStore(path)
        alone = other.attach_server()
        recovered = recover_store(world.server_ledger, SERVER, other, alone)
        # (before: the run taken for a dead one, its older receipt claimed: the
        # connection settled for less than the client had signed for)
        assert world.claimed(cid) == 0, (recovered, on_disk, held)
        assert recovered == []
        assert not alone  # this server's run is still live: its writer uses it

        store.resume.set()
        assert wait_released(server, 30)
        # the writer stopped, the run ended: now it is a dead run's, its newest receipt
        recover_store(world.server_ledger, SERVER, other, False)
        assert world.claimed(cid) == held.receipt.total_amount
    finally:
        store.resume.set()
        down.clear()
        close(server)
        wait_released(server, 30)
        if other is not None:
            other.close()
        store.close()


def test_the_blocking_server_detaches_only_once_the_writer_stopped(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    def start(store: StallingStore) -> dtp.hostid.paid.PaidServer:
        return dtp.socket.serve(
            world.host_id,
            PORT,
            echo,
            ledger=world.server_ledger,
            identity=SERVER,
            receipts=store,
            policy=ServicePolicy(allowance=50_000),
        )

    _story(
        world,
        monkeypatch,
        start,
        lambda server: server.close(),
        lambda server: server._released.is_set(),
        lambda server, timeout: server.wait_released(timeout),
    )


def test_the_asyncio_server_detaches_only_once_the_writer_stopped(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    with loop_in_thread() as loop:

        def run(coro: Coroutine[Any, Any, T]) -> T:
            return asyncio.run_coroutine_threadsafe(coro, loop).result(60)

        def start(store: StallingStore) -> Any:
            return world.serve_aio(
                loop,
                PORT,
                echo_aio,
                SERVER,
                receipts=store,
                policy=ServicePolicy(allowance=50_000),
            )

        _story(
            world,
            monkeypatch,
            start,
            lambda server: loop.call_soon_threadsafe(server.close),
            lambda server: server._released.is_set(),
            lambda server, timeout: run(server.wait_released(timeout)),
        )


def test_an_own_store_left_to_a_stalled_writer_is_closed_once_it_stops(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """release_receipts() left a store it was to close open for good when the writer
    was still writing after the wait; it is closed once the writer stops."""
    monkeypatch.setattr(dtp.payments._serving, "RELEASE_WRITER_WAIT", 0.1)
    store = StallingStore(tmp_path / "r.db")
    writer = ReceiptWriter(store)
    try:
        store.stall.set()
        writer.submit(receipt(1, 100), lambda r: None)
        assert wait_for(store.stalled.is_set, 10)
        dtp.payments._serving.release_receipts(writer, store, own_store=True)
        assert not store.closed  # (the writer still writes)
        store.resume.set()
        assert writer.close(10)
        assert store.closed  # (before: left open for good)
    finally:
        store.resume.set()
        writer.close(10)
        store.close()
    with ReceiptStore(tmp_path / "r.db") as again:
        stored = again.latest(CONN)
        assert stored is not None and stored.receipt.nonce == 1


@pytest.mark.parametrize(
    "options",
    [
        {"loss": 15},  # (a percentage)
        {"duplicate": -0.1},
        {"reorder": float("nan")},
        {"loss": "0.1"},
        {"split": "chunks"},
    ],
    ids=["loss-percent", "negative-duplicate", "nan-reorder", "text-loss", "unknown-split"],
)
def test_the_memory_link_refuses_impairments_it_cannot_mean(options: dict[str, Any]) -> None:
    """MemoryLink took loss=15 (every record dropped: the run spent its max_time before
    saying False), a NaN or negative chance (never applied) and an unknown split (split
    at random) without a word; they are a ValueError naming the option."""
    client, server = _pair()
    with pytest.raises(ValueError, match=next(iter(options))):
        MemoryLink(client, server, **options)


def _pair() -> tuple[Connection, Connection]:
    """Two connections on a datagram carrier (not started: the link is only built)."""
    made = []
    for config in (
        ConnectionConfig(identity=CLIENT, is_client=True, reliable_carrier=False),
        ConnectionConfig(identity=SERVER, is_client=False, reliable_carrier=False),
    ):
        made.append(Connection(config, ephemeral_key=bytes(range(32)), now=0.0))
    return made[0], made[1]
