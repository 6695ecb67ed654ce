"""A blocking relay whose billing counts a receipt only once it is stored
(``UdpBilling(counts_when_kept=True)``, docs/udp.md "Metering", step 4).

Its ``on_receipt`` queues the receipt for a real :class:`ReceiptWriter` on a real
SQLite file, and the writer's thread calls ``UdpBilling.kept`` once the receipt is on
disk; the relay runs that count under its engine lock (``UdpBilling.run_kept``). While
another process holds the file's write lock, the receipts are accepted but count for
nothing: the relay serves the credit and no more. Once the lock goes, the stored
receipt counts and the traffic passes again. An ``on_receipt`` that stores at once
and calls ``kept`` inside it (on the relay's control thread, in the engine lock's hold)
does not deadlock the relay. Real sockets, threads and processes on 127.0.0.1."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

import dtp.payments.receipt_store._store
import dtp.socket
from dtp.hostid.udp import UdpBilling, UdpStats
from dtp.ledger._objects import Sla
from dtp.ledger.receipt import Receipt
from dtp.payments._receipt_writer import ReceiptWriter
from dtp.payments.receipt_store import ReceiptStore
from tests.support.polling import wait_for
from tests.support.receipt_stores import locked_by_another_process
from tests.support.scopes import scope_of
from tests.udp.conftest import BlockingDriver
from tests.udp.world import CLIENT, CONNECTION_ID, DnsLikeBackend, relayed

SLA = Sla(1, 1, 0)
DEPOSIT = 10**9
CREDIT = 16  # datagrams served ahead of the receipts (reports every 8)


def _send(sock: dtp.socket.DTPSocket, count: int, first: int = 0) -> None:
    for i in range(first, first + count):
        sock.send_datagram(i.to_bytes(2, "big") + b"query")
        time.sleep(0.002)  # (a pace the backend's socket buffer keeps up with)


def test_a_receipt_counts_only_once_stored_and_a_writer_thread_counts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a write meeting the other process's lock fails soon and is tried again each second
    monkeypatch.setattr(dtp.payments.receipt_store._store, "BUSY_TIMEOUT", 0.2)
    path = tmp_path / "receipts.db"
    store = ReceiptStore(path)
    writer = ReceiptWriter(store)
    # per count: whether the receipt was in the store then, and in which thread it came
    counted: list[tuple[bool, str]] = []
    billing: UdpBilling

    def stored(receipt: Receipt) -> None:  # the writer's thread, the receipt on disk
        held = store.latest(CONNECTION_ID)
        on_disk = held is not None and held.receipt.nonce >= receipt.nonce
        counted.append((on_disk, threading.current_thread().name))
        billing.kept(receipt)

    def queue(receipt: Receipt) -> None:
        writer.submit(receipt, stored)

    billing = UdpBilling(
        scope_of(CONNECTION_ID),
        SLA,
        CLIENT.ed25519_public,
        DEPOSIT,
        credit_datagrams=CREDIT,
        on_receipt=queue,
        counts_when_kept=True,
    )
    dns = DnsLikeBackend()
    stats = UdpStats()
    try:
        with relayed(
            BlockingDriver(), dns.address, stats, billing=billing, signed=(SLA, DEPOSIT)
        ) as sock:
            with locked_by_another_process(path):
                _send(sock, 4 * CREDIT)
                # receipts came and were accepted, but none is stored: the credit is
                # all that was served
                assert wait_for(lambda: billing.checked is not None, 10)
                assert wait_for(lambda: stats.dropped_unpaid > 0, 10), stats.snapshot()
                time.sleep(0.5)  # (a count that did not wait for the disk comes now)
                assert billing.latest is None
                assert counted == []
                assert stats.datagrams_in == CREDIT, stats.snapshot()
            # the lock gone, the writer's retry stores the receipt, which then counts
            assert wait_for(lambda: billing.latest is not None, 10)
            _send(sock, 2 * CREDIT, first=4 * CREDIT)
            assert wait_for(lambda: stats.datagrams_in > CREDIT, 10), stats.snapshot()
        assert writer.flush(timeout=10)
    finally:
        writer.close(10)
        store.close()
        dns.close()
    assert counted and all(on_disk for on_disk, _ in counted), counted
    assert {thread for _, thread in counted} == {"dtp-receipts"}
    assert billing.latest is not None
    with ReceiptStore(path) as again:
        held = again.latest(CONNECTION_ID)
        assert held is not None and held.receipt == billing.latest
    assert billing.datagrams == stats.datagrams_in == dns.received


def test_an_on_receipt_that_counts_at_once_does_not_deadlock_the_relay(
    tmp_path: Path,
) -> None:
    """``kept`` called from inside ``on_receipt``: the relay's control thread holds the
    engine lock there, and the count takes it again (a plain lock hung the relay)."""
    billing: UdpBilling
    with ReceiptStore(tmp_path / "receipts.db") as store:
        threads: list[str] = []

        def keep(receipt: Receipt) -> None:
            store.keep(receipt)
            threads.append(threading.current_thread().name)
            billing.kept(receipt)

        billing = UdpBilling(
            scope_of(CONNECTION_ID),
            SLA,
            CLIENT.ed25519_public,
            DEPOSIT,
            credit_datagrams=CREDIT,
            on_receipt=keep,
            counts_when_kept=True,
        )
        dns = DnsLikeBackend()
        stats = UdpStats()
        try:
            with relayed(
                BlockingDriver(), dns.address, stats, billing=billing, signed=(SLA, DEPOSIT)
            ) as sock:
                _send(sock, 6 * CREDIT)
                assert wait_for(lambda: stats.datagrams_in >= 4 * CREDIT, 10), stats.snapshot()
        finally:
            dns.close()
        held = store.latest(CONNECTION_ID)
    assert threads and set(threads) == {"dtp-udp-control"}, threads
    assert held is not None and held.receipt == billing.latest
