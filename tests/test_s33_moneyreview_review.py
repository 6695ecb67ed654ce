"""Second reading of the daemon's settlement retries and counters (8848a0c, 57db505):

* A retry of a failed settlement is scheduled as a task (``ServiceHost._retry_loop``)
  and takes the connection's ``_settling`` place only at its first step. An admission
  of the same ledger connection that resumed in between (its ledger read done, its
  wake-up already queued ahead of the retry's first step) found nothing being settled,
  took the connection ID and was served -- and the retry then closed and settled the
  ledger connection under the client being served.
* ``fees_earned`` was raised to ``fees_claimed`` after every settlement ("what was
  claimed was earned"), the live connections' too: a settlement that claimed a receipt
  still on its way to the disk (the store slow past ``SETTLE_FLUSH_WAIT``) raised it by
  the claim, and the receipt's own "kept" callback added it once more when the write
  landed -- the fee counted twice as earned.

Real LocalLedger files, real DTP connections on 127.0.0.1 to an in-process daemon; the
ledger's ``close_connection`` made to fail (LedgerUnavailable) by a thin wrapper, the
store's write held by one.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

import dtp.daemon.fees as fees_mod
import dtp.daemon.services as services_mod
from dtp.chain.local import LocalLedger
from dtp.daemon.runner import Daemon
from dtp.errors import LedgerUnavailable
from dtp.keys import HostIdentity
from dtp.receipt_store import ReceiptStore
from tests.test_s33_daemoncount_review import (
    BOUND,
    DEPOSIT,
    _Client,
    _paid,
    _run,
    _service,
    _tunnel,
    _until,
)


def test_an_admission_resuming_before_a_retrys_first_step_is_not_settled_under(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection's settlement failed (its close refused: the ledger away), so it is
    tried again. The retry task is made; before its first step runs, an admission of the
    same ledger connection (the client back, its ledger read done) resumes and takes the
    connection ID, as dtp.aio then serves it. Before, the retry went on and closed and
    settled the ledger connection under the client being served; now it leaves it to
    that connection (tried again once it is no longer served), settled once."""
    monkeypatch.setattr(services_mod, "SETTLE_RETRY", 0.05)
    monkeypatch.setattr(services_mod, "SETTLE_RETRY_MAX", 0.1)
    away: set[str] = set()
    real_close = LocalLedger.close_connection

    def close_connection(self: LocalLedger, signer: HostIdentity, connection_id: str) -> None:
        if connection_id in away:
            raise LedgerUnavailable("ledger.sqlite: the ledger is away (a test)")
        real_close(self, signer, connection_id)

    monkeypatch.setattr(LocalLedger, "close_connection", close_connection)
    armed: list[str] = []
    attempts: list[asyncio.Future[Any]] = []

    class Handlers(set[asyncio.Future[Any]]):
        """The host's handler set: the first retry task added after arming has the
        admission of its connection resume right behind it, ahead of its first step."""

        def add(self, task: asyncio.Future[Any]) -> None:
            super().add(task)
            if armed and isinstance(task, asyncio.Task):
                coro = task.get_coro()
                frame = getattr(coro, "cr_frame", None)
                if frame is not None and frame.f_locals.get("retry"):
                    cid = armed.pop()
                    attempts.append(task)
                    # what _admit does once its ledger read is back: not being settled
                    # (nothing in _settling yet), so the ID is taken for the DTP
                    # connection dtp.aio serves in this same step
                    assert cid not in host._settling
                    owner = host.ledger.get_connection(cid).client
                    assert host._reserve(cid, owner, None) is None
                    host._unclaimed.discard(cid)  # (its handler took it)

    host: services_mod.ServiceHost

    async def scenario(daemon: Daemon, client: _Client, *_unused: Any) -> None:
        nonlocal host
        assert daemon.services is not None
        host = daemon.services
        assert not host._handlers
        host._handlers = Handlers()
        cid = await client.open_ledger(7000)
        away.add(cid)
        _, writer = await client.connect(cid, 7000)
        assert await _tunnel(writer) == b"ping"
        writer.close()
        await _until(lambda: cid in host._retries, "its settlement failed")
        away.clear()  # the ledger is back
        armed.append(cid)
        await _until(lambda: attempts, "a retry made")
        await asyncio.wait(set(attempts))
        # the retry left the connection served alone: still Open on the ledger
        assert not client.ledger.get_connection(cid).settled
        row = daemon.book.service("svc7000")
        assert row.refunded == 0
        host._served.release(cid)  # the connection served ends
        await _until(lambda: row.refunded, "settled by a later retry")
        assert client.ledger.get_connection(cid).settled
        assert row.refunded == DEPOSIT

    _run(tmp_path, lambda b: _service(7000, b), scenario)


def test_a_claim_of_a_receipt_still_being_written_is_earned_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A paid connection sends one receipt and closes; the store's write of it is slow
    (held past the settlement's wait for it), so the settlement claims it from the
    writer's queue. Before, the claim raised fees_earned to fees_claimed and the
    receipt's "kept" callback, once the write landed, added it again: earned twice the
    fee. Now it is earned once, claimed once."""
    monkeypatch.setattr(fees_mod, "SETTLE_FLUSH_WAIT", 0.05)
    hold, held, let_go = threading.Event(), threading.Event(), threading.Event()
    real_keep_many = ReceiptStore.keep_many

    def keep_many(self: ReceiptStore, *args: Any, **kwargs: Any) -> Any:
        if hold.is_set():
            held.set()
            let_go.wait(BOUND)
        return real_keep_many(self, *args, **kwargs)

    monkeypatch.setattr(ReceiptStore, "keep_many", keep_many)

    async def scenario(daemon: Daemon, client: _Client, *_unused: Any) -> None:
        assert daemon.fees is not None
        cid = await client.open_ledger(7000)
        receipt = client.receipt(cid)
        hold.set()
        _, writer = await client.connect(cid, 7000)
        writer.write(receipt.encode())
        await writer.drain()
        await _until(held.is_set, "the receipt's write under way")
        writer.close()
        row = daemon.book.service("svc7000")
        await _until(lambda: row.fees_claimed, "claimed and counted")
        assert row.fees_claimed == receipt.total_amount
        hold.clear()
        let_go.set()  # the write lands: its "kept" callback runs
        await asyncio.to_thread(daemon.fees.writer.flush)
        await asyncio.sleep(0)  # (the callback, posted to the loop before flush ended)
        assert client.ledger.get_connection(cid).settled
        assert row.fees_claimed == receipt.total_amount
        assert row.fees_earned == receipt.total_amount

    _run(tmp_path, lambda b: _paid(7000, b), scenario)
