"""The blocking relay's threads share one sans-I/O engine under one lock
(dtp.hostid.udp._blocking.relay_udp): its loop admits the client's datagrams, its reply
thread passes the backend's replies, its control thread takes receipts, and all of
them ask the same billing, and so does a receipt writer's thread counting the
receipts it stored (``UdpBilling.kept``, with ``counts_when_kept``). The engine holds
no lock of its own; without the relay's, two threads inside the billing at once lose
counts (``bytes += n`` from two threads) and judge the credit on totals the other is
changing. Real sockets and SQLite files on 127.0.0.1."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dtp.hostid.udp import UdpBilling, UdpStats
from dtp.ledger._objects import Sla
from dtp.ledger.receipt import Receipt
from dtp.payments._receipt_writer import ReceiptWriter
from dtp.payments.receipt_store import ReceiptStore
from tests.support.polling import wait_for
from tests.support.scopes import scope_of
from tests.udp.conftest import BlockingDriver
from tests.udp.world import CLIENT, CONNECTION_ID, DnsLikeBackend, relayed

SLA = Sla(1, 1, 0)
DEPOSIT = 10**9


class _OneAtATime(UdpBilling):
    """A billing that notes every time two threads are inside it at once, and which
    threads came in; each call lingers a little, so that unguarded calls from two
    threads would all but surely overlap."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(
            scope_of(CONNECTION_ID), SLA, CLIENT.ed25519_public, DEPOSIT, credit_datagrams=64, **kw
        )
        self.inside = 0
        self.overlaps = 0
        self.threads: set[str] = set()
        self._watch = threading.Lock()

    @contextlib.contextmanager
    def _one(self) -> Iterator[None]:
        with self._watch:
            self.inside += 1
            self.overlaps += self.inside > 1
            self.threads.add(threading.current_thread().name)
        time.sleep(0.0002)
        try:
            yield
        finally:
            with self._watch:
                self.inside -= 1

    def may_forward(self, nbytes: int = 0) -> bool:
        with self._one():
            return super().may_forward(nbytes)

    def delivered(self, reserved: int, reserved_bytes: int, sent: int, sent_bytes: int) -> None:
        with self._one():
            super().delivered(reserved, reserved_bytes, sent, sent_bytes)

    def replies_allowed(self, sizes: list[int]) -> int:
        with self._one():
            return super().replies_allowed(sizes)

    def replied(self, nbytes: int, reserved: int = 0) -> None:
        with self._one():
            super().replied(nbytes, reserved)

    def receipt(self, encoded: bytes) -> bool:
        with self._one():
            return super().receipt(encoded)

    def report_due(self, every: int, force: bool = False) -> tuple[int, int] | None:
        with self._one():
            return super().report_due(every, force)

    def _count_kept(self, receipt: Receipt) -> None:
        # (kept() itself is called from anywhere: its count is what runs under the lock)
        with self._one():
            super()._count_kept(receipt)


@pytest.mark.parametrize("counted_when_kept", [False, True], ids=["at_once", "when_kept"])
def test_the_relays_threads_use_its_engine_one_at_a_time(
    counted_when_kept: bool, tmp_path: Path
) -> None:
    """Datagrams, replies and receipts at once: no two of the relay's threads are ever
    inside the billing together, the loop's and the reply thread's calls both came,
    and every datagram and reply is counted once (the billing's totals are the
    relay's counters), none left reserved. With ``counts_when_kept``, a receipt
    writer's thread counts the receipts it stored, in turn with the relay's threads."""
    dns = DnsLikeBackend()
    store = ReceiptStore(tmp_path / "receipts.db")
    writer = ReceiptWriter(store)
    billing = (
        _OneAtATime(
            counts_when_kept=True,
            on_receipt=lambda receipt: writer.submit(receipt, billing.kept),
        )
        if counted_when_kept
        else _OneAtATime()
    )
    stats = UdpStats()
    try:
        with relayed(
            BlockingDriver(),
            dns.address,
            stats,
            billing=billing,
            signed=(SLA, DEPOSIT),
            idle_timeout=1,
        ) as sock:
            # sent until 200 came back: datagrams beyond the credit are dropped (a
            # receipt counted only once stored lags the sends), so a fixed count could
            # fall short on a busy machine
            sent, deadline = 0, time.monotonic() + 30
            while stats.datagrams_out < 200 and time.monotonic() < deadline:
                sock.send_datagram((sent % 65536).to_bytes(2, "big") + b"query")
                sent += 1
                if sent % 20 == 0:
                    time.sleep(0.01)  # (the backend's socket buffer)
            assert stats.datagrams_out >= 200, str(stats.snapshot())
            assert wait_for(lambda: billing.latest is not None, 10)
    finally:
        dns.close()
        writer.close(10)
        store.close()
    assert billing.overlaps == 0, billing.threads
    threads = {"dtp-udp-replies", "dtp-udp-control"}
    if counted_when_kept:
        threads.add("dtp-receipts")
    assert threads <= billing.threads, billing.threads
    assert billing.datagrams == stats.datagrams_in == dns.received
    assert billing.bytes == stats.bytes_in + stats.bytes_out
    assert billing._pending_datagrams == 0 and billing._pending_bytes == 0
