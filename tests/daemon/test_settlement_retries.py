"""The daemon's settlements, counted and retried (dtp/daemon/_settlements.py,
_services.py and _runner.py; ServerFees.settle does not raise):

* fees_claimed missed claims: a connection refused at admission (a service's deny list,
  a service a reload removed) or cut before it was served (its terms unreadable) was
  settled with its ``Settled`` thrown away, so a receipt an earlier run left of it was
  claimed and never counted; the start's recovery skipped the count for a connection of
  a service no longer configured, or whose state could not be read again afterwards.
  Every settlement is counted in one place now (``Settlements.settle``).
* A settlement that failed (the ledger briefly away) waited for the next start, while
  ten minutes after a half-close the client may settle alone and take its whole deposit
  back. It is tried again within the run now, with a backoff, never alongside another
  settlement or the serving of the same connection, and not past the stop.

Real LocalLedger files, real DTP connections on 127.0.0.1 to an in-process daemon; the
ledger's ``settle`` is made to fail (LedgerUnavailable) or wait, by a thin wrapper.

The daemon's settlement retries and counters:

* A retry of a failed settlement is scheduled as a task (``Settlements._retry_loop``)
  and takes the connection's ``settling`` place only at its first step. An admission
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
ledger's ``settle`` (``settle_with_receipt`` for a receipt to claim: one transaction)
made to fail (LedgerUnavailable) by a thin wrapper, the store's write held by one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.daemon._fees as fees_mod
import dtp.daemon._services as services_mod
import dtp.daemon._settlements as settlements_mod
from dtp.daemon._fees import ServerFees
from dtp.daemon._runner import Daemon
from dtp.errors import ChainError, ConnectionRefused, LedgerUnavailable
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import ConnectionState, Settlement, TransportControl
from dtp.ledger.local import LocalLedger
from dtp.payments.receipt_store import ReceiptStore
from dtp.payments.receipts import ConnectionTerms, Receipt
from tests.daemon.inproc import (
    DEPOSIT,
    RETRY_BOUND,
    FileLedgerClient,
    run_with_file_client,
    service,
    tunnel,
    until,
    write_config,
)
from tests.support.settlements import is_settled


def _paid(port: int, backend: int, extra: str = "") -> str:
    return service(port, backend, "price_per_kib = 10\nmin_deposit = 1000\n" + extra)


async def _store(daemon: Daemon, receipt: Receipt) -> None:
    """``receipt`` kept on disk by the daemon's fees, as a run that ended before its
    connection's settlement left it (the counters never saw it)."""
    assert daemon.fees is not None
    terms = await daemon.fees.terms(receipt.connection_id)
    daemon.fees.accept(terms, receipt.encode(), lambda _: None)
    await asyncio.to_thread(daemon.fees.writer.flush)


class _Outage:
    """The ledger's ``settle`` (and ``settle_with_receipt``: a settlement with a receipt
    to claim is one transaction) of the connections named: held at the call numbered
    in ``holds[cid]`` (in flight set, until let go), then failing (LedgerUnavailable)
    while ``fails[cid]`` counts down; ``calls`` counts them, ``most`` how many ran at once."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fails: dict[str, int] = {}
        self.holds: dict[str, tuple[int, threading.Event, threading.Event]] = {}
        self.calls: Counter[str] = Counter()
        self.busy: Counter[str] = Counter()
        self.most: Counter[str] = Counter()
        self._lock = threading.Lock()
        real = LocalLedger.settle
        outage = self

        def settle(
            self: LocalLedger,
            signer: HostIdentity,
            connection_id: str,
            *,
            escrow_id: str | None = None,
            cap_id: str | None = None,
        ) -> Settlement:
            return settle_through(real, self, signer, connection_id, escrow_id, cap_id)

        def settle_through(
            real: Any,
            self: LocalLedger,
            signer: HostIdentity,
            connection_id: str,
            escrow_id: str | None,
            cap_id: str | None,
        ) -> Settlement:
            with outage._lock:
                outage.calls[connection_id] += 1
                outage.busy[connection_id] += 1
                outage.most[connection_id] = max(
                    outage.most[connection_id], outage.busy[connection_id]
                )
                hold = outage.holds.get(connection_id)
                held = hold is not None and hold[0] == outage.calls[connection_id]
            try:
                if hold is not None and held:
                    hold[1].set()  # in flight
                    hold[2].wait(RETRY_BOUND)  # until let go
                with outage._lock:
                    failing = outage.fails.get(connection_id, 0) > 0
                    if failing:
                        outage.fails[connection_id] -= 1
                if failing:
                    raise LedgerUnavailable("ledger.sqlite: the ledger is away (a test)")
                return real(self, signer, connection_id, escrow_id=escrow_id, cap_id=cap_id)
            finally:
                with outage._lock:
                    outage.busy[connection_id] -= 1

        real_with_receipt = LocalLedger.settle_with_receipt

        def settle_with_receipt(
            self: LocalLedger,
            signer: HostIdentity,
            connection_id: str,
            receipt: Receipt,
            *,
            escrow_id: str | None = None,
            cap_id: str | None = None,
        ) -> Settlement:
            # (a settlement with a receipt to claim is one transaction: the same outage)
            def claim_then_settle(
                self: LocalLedger,
                signer: HostIdentity,
                connection_id: str,
                *,
                escrow_id: str | None = None,
                cap_id: str | None = None,
            ) -> Settlement:
                return real_with_receipt(
                    self, signer, connection_id, receipt, escrow_id=escrow_id, cap_id=cap_id
                )

            return outage._settle(claim_then_settle, self, signer, connection_id, escrow_id, cap_id)

        self._settle = settle_through
        monkeypatch.setattr(LocalLedger, "settle", settle)
        monkeypatch.setattr(LocalLedger, "settle_with_receipt", settle_with_receipt)


def _short_retries(monkeypatch: pytest.MonkeyPatch, first: float = 0.05, most: float = 0.1) -> None:
    monkeypatch.setattr(settlements_mod, "SETTLE_RETRY", first)
    monkeypatch.setattr(settlements_mod, "SETTLE_RETRY_MAX", most)


def _messages(caplog: pytest.LogCaptureFixture, level: int, message: str, cid: str) -> int:
    return sum(
        1
        for r in caplog.records
        if r.levelno == level
        and r.getMessage() == message
        and getattr(r, "fields", {}).get("connection") == cid
    )


# -- every claim counted -------------------------------------------------------------------


@pytest.mark.parametrize("path", ["service-deny", "service-removed", "terms-unreadable"])
def test_a_connection_settled_unserved_counts_what_an_earlier_run_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """A receipt of the connection is in the store (an earlier run ended before its
    settlement); the client comes back and is refused (its service's deny list; its
    service removed by a reload) or cut (its terms unreadable). Its settlement claims
    the receipt, and the claim and the refund are counted."""
    port = 7001 if path == "service-removed" else 7000
    failed_terms: list[str] = []
    if path == "terms-unreadable":
        real_terms = ServerFees.terms

        async def flaky_terms(
            self: ServerFees, connection_id: str, admitted: Any = None, *, served: bool = False
        ) -> ConnectionTerms:
            if failed_terms == ["armed"]:
                failed_terms[0] = connection_id
                raise ChainError("ledger RPC timed out")
            return await real_terms(self, connection_id, admitted, served=served)

        monkeypatch.setattr(ServerFees, "terms", flaky_terms)

    async def scenario(
        daemon: Daemon, client: FileLedgerClient, config: Path, backend: int
    ) -> None:
        cid = await client.open_ledger(port)
        receipt = client.receipt(cid)
        await _store(daemon, receipt)
        if path == "service-deny":
            denied = f'deny = ["{client.identity.sui_address}"]'
            config.write_text(config.read_text().replace("health_interval = 30", denied, 1))
            await daemon.reload()
        elif path == "service-removed":
            config.write_text(write_config(tmp_path, _paid(7000, backend)).read_text())
            await daemon.reload()
            assert daemon.services is not None and 7001 not in daemon.services.services
        else:
            failed_terms.append("armed")
        await client.refused_or_cut(cid, port)
        row = daemon.book.service(f"svc{port}")
        await until(lambda: row.refunded, "the refund counted")
        assert client.connection(cid).settled
        assert client.ledger.get_escrow(client.connection(cid).escrow).claimed == (
            receipt.total_amount
        )
        assert row.fees_claimed == receipt.total_amount
        assert row.refunded == DEPOSIT - receipt.total_amount
        assert row.fees_earned >= row.fees_claimed

    run_with_file_client(tmp_path, lambda b: _paid(7000, b) + _paid(7001, b), scenario)
    if path == "terms-unreadable":
        assert failed_terms[0].startswith("0x")


@pytest.mark.parametrize("path", ["service-removed", "unreadable-after"])
def test_the_starts_recovery_counts_every_claim(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, path: str
) -> None:
    """A run left a receipt unclaimed; the next start claims it, and counts the claim
    also when the connection's service is no longer configured, or when its state
    cannot be read once more after the settlement."""
    port = 7001 if path == "service-removed" else 7000
    left: dict[str, Any] = {}

    async def first_run(
        daemon: Daemon, client: FileLedgerClient, config: Path, backend: int
    ) -> None:
        cid = await client.open_ledger(port)
        receipt = client.receipt(cid)
        await _store(daemon, receipt)
        left.update(cid=cid, amount=receipt.total_amount, identity=client.identity)

    run_with_file_client(tmp_path, lambda b: _paid(7000, b) + _paid(7001, b), first_run)
    cid, amount = left["cid"], left["amount"]

    if path == "unreadable-after":
        real_get = LocalLedger.get_connection

        def get_connection(self: LocalLedger, connection_id: str) -> TransportControl:
            tc = real_get(self, connection_id)
            if connection_id == cid and tc.settled:  # the ledger away right after
                raise LedgerUnavailable("ledger.sqlite: the ledger is away (a test)")
            return tc

        monkeypatch.setattr(LocalLedger, "get_connection", get_connection)

    async def second_run(
        daemon: Daemon, client: FileLedgerClient, config: Path, backend: int
    ) -> None:
        row = daemon.book.services[f"svc{port}"]
        assert row.fees_claimed == amount
        assert row.refunded == DEPOSIT - amount
        assert row.fees_earned == amount  # (stored just before the end: earned all the same)

    services = (
        (lambda b: _paid(7000, b))
        if path == "service-removed"
        else (lambda b: _paid(7000, b) + _paid(7001, b))
    )
    run_with_file_client(tmp_path, services, second_run)
    monkeypatch.undo()
    with LocalLedger(tmp_path / "ledger.sqlite") as ledger:
        tc = ledger.get_connection(cid)
        assert tc.settled
        assert ledger.get_escrow(tc.escrow).claimed == amount  # claimed once
    with ReceiptStore(tmp_path / "state" / "receipts.sqlite") as store:
        assert list(store.unclaimed()) == []


# -- failed settlements tried again ----------------------------------------------------------


@pytest.mark.parametrize("paid", [True, False], ids=["paid", "free"])
def test_a_failed_settlement_is_tried_again_within_the_run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    paid: bool,
) -> None:
    """The connection's settlement fails three times (the ledger away): it is tried again
    with a backoff (not left for the next start), the first failure a warning and the
    repeats at debug level; its claim and refund counted once."""
    outage = _Outage(monkeypatch)
    _short_retries(monkeypatch)

    async def scenario(
        daemon: Daemon, client: FileLedgerClient, config: Path, backend: int
    ) -> None:
        cid = await client.open_ledger(7000)
        amount = 0
        if paid:
            receipt = client.receipt(cid)
            await _store(daemon, receipt)
            amount = receipt.total_amount
        outage.fails[cid] = 3
        await client.served_once(cid, 7000)
        row = daemon.book.service("svc7000")
        await until(lambda: row.refunded, "settled and counted")
        tc = client.connection(cid)
        assert tc.settled and tc.state == ConnectionState.CLOSED
        assert outage.calls[cid] == 4  # the connection's end, then three retries
        escrow = client.ledger.get_escrow(tc.escrow)
        assert escrow.claimed == amount and escrow.refunded == DEPOSIT - amount
        assert (row.fees_claimed, row.refunded) == (amount, DEPOSIT - amount)
        assert _messages(caplog, logging.WARNING, "settlement failed", cid) == 1
        assert _messages(caplog, logging.DEBUG, "settlement failed again", cid) == 2
        assert _messages(caplog, logging.INFO, "settle skipped", cid) == 1  # the rest: debug
        assert _messages(caplog, logging.INFO, "settled after a failure", cid) == 1
        retries = [
            r.fields["retry"]  # type: ignore[attr-defined]
            for r in caplog.records
            if r.getMessage().startswith("settlement failed")
        ]
        assert retries == ["in 0.05 s", "in 0.1 s", "in 0.1 s"]  # doubled, to the most
        if paid:
            assert daemon.fees is not None
            await asyncio.to_thread(daemon.fees.writer.flush)  # (the mark is queued)
            assert list(daemon.fees.store.unclaimed()) == []  # marked once settled

    with caplog.at_level(logging.DEBUG, logger="dtp.daemon"):
        run_with_file_client(tmp_path, lambda b: (_paid if paid else service)(7000, b), scenario)


def test_a_connection_served_again_is_left_to_its_own_settlement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its settlement failed and is being tried again; the client comes back on the
    ledger connection (still Open) and is served. The retries leave it alone while it is
    served (settled under it, its tunnels would be cut by the ledger), and its own end
    settles it, once."""
    outage = _Outage(monkeypatch)
    _short_retries(monkeypatch)
    tried_at: list[float] = []
    real_settle = ServerFees.settle

    async def counted_settle(self: ServerFees, *args: Any, **kwargs: Any) -> Any:
        tried_at.append(time.monotonic())
        return await real_settle(self, *args, **kwargs)

    monkeypatch.setattr(ServerFees, "settle", counted_settle)

    async def scenario(
        daemon: Daemon, client: FileLedgerClient, config: Path, backend: int
    ) -> None:
        cid = await client.open_ledger(7000)
        outage.fails[cid] = 10**6  # away until said otherwise (still Open)
        await client.served_once(cid, 7000)
        await until(lambda: len(tried_at) >= 3, "tried again")
        writer: dtp.aio.DTPStreamWriter | None = None
        deadline = time.monotonic() + RETRY_BOUND
        while writer is None:  # (refused while a try is in flight: being settled)
            assert time.monotonic() < deadline, "never served again"
            with contextlib.suppress(ConnectionRefused):
                _, writer = await client.connect(cid, 7000)
        assert await tunnel(writer) == b"ping"
        outage.fails.clear()  # the ledger is back
        calls = outage.calls[cid]
        tried = len(tried_at)
        loop = asyncio.get_running_loop()
        quiet_until = loop.time() + 0.5  # ten retry periods
        while loop.time() < quiet_until:
            assert await tunnel(writer, b"still") == b"still"
        assert len(tried_at) == tried  # no settlement while served
        assert client.connection(cid).state == ConnectionState.OPEN
        writer.close()
        row = daemon.book.service("svc7000")
        await until(lambda: row.refunded, "settled at its end")
        assert client.connection(cid).settled
        assert row.refunded == DEPOSIT
        assert outage.calls[cid] == calls + 1  # the ledger's settle: its end's, at last

    run_with_file_client(tmp_path, lambda b: service(7000, b), scenario)


def test_the_stop_ends_the_retries_and_waits_for_the_one_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Two connections' settlements failed. The retry of the first is in flight (its
    ledger call held) when the daemon stops: the stop waits for it (as for any
    settlement, within SETTLE_TIMEOUT), counts it, and tries nothing more -- the second,
    still failing, is left (logged) rather than holding the stop up."""
    outage = _Outage(monkeypatch)
    _short_retries(monkeypatch)
    in_flight, let_go = threading.Event(), threading.Event()

    async def scenario(
        daemon: Daemon, client: FileLedgerClient, config: Path, backend: int
    ) -> None:
        assert daemon.services is not None
        services = daemon.services
        first = await client.open_ledger(7000)
        second = await client.open_ledger(7000)
        outage.fails[first] = 1
        outage.fails[second] = 1_000
        await client.served_once(second, 7000)
        await until(lambda: outage.calls[second] >= 2, "the second tried again")
        outage.holds[first] = (2, in_flight, let_go)  # its first retry, held
        await client.served_once(first, 7000)
        await until(in_flight.is_set, "the first's retry in flight")
        started = time.monotonic()
        drain = asyncio.ensure_future(services.drain(1.0))
        await until(lambda: services.settlements._retry_task is None, "the retries stopped")
        let_go.set()  # (and the ledger is back: the held call goes through)
        await asyncio.wait_for(drain, RETRY_BOUND)
        assert time.monotonic() - started < RETRY_BOUND  # not SETTLE_TIMEOUT
        assert client.connection(first).settled
        assert daemon.book.service("svc7000").refunded == DEPOSIT  # the first's, once
        calls = outage.calls[second]
        assert not client.connection(second).settled
        assert outage.most[first] == 1  # (the retry and nothing else)
        assert _messages(caplog, logging.WARNING, "connection left unsettled", second) == 1
        assert _messages(caplog, logging.WARNING, "connection left unsettled", first) == 0
        await asyncio.sleep(0.3)  # (a time of several retry periods: none made)
        assert outage.calls[second] == calls

    with caplog.at_level(logging.DEBUG, logger="dtp.daemon"):
        run_with_file_client(tmp_path, lambda b: service(7000, b), scenario)


def test_an_admission_resuming_before_a_retrys_first_step_is_not_settled_under(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection's settlement failed (refused: the ledger away), so it is
    tried again. The retry task is made; before its first step runs, an admission of the
    same ledger connection (the client back, its ledger read done) resumes and takes the
    connection ID, as dtp.aio then serves it. The retry leaves it to that connection
    (tried again once it is no longer served) rather than settle it under the client
    being served: settled once."""
    monkeypatch.setattr(settlements_mod, "SETTLE_RETRY", 0.05)
    monkeypatch.setattr(settlements_mod, "SETTLE_RETRY_MAX", 0.1)
    away: set[str] = set()
    real_settle = LocalLedger.settle

    def settle(
        self: LocalLedger, signer: HostIdentity, connection_id: str, **ids: Any
    ) -> Settlement:
        if connection_id in away:
            raise LedgerUnavailable("ledger.sqlite: the ledger is away (a test)")
        return real_settle(self, signer, connection_id, **ids)

    monkeypatch.setattr(LocalLedger, "settle", settle)
    armed: list[str] = []
    attempts: list[asyncio.Future[Any]] = []

    class Handlers(set[asyncio.Future[Any]]):
        """The settlements running on their own (``Settlements.running``): the first
        retry task added after arming has the admission of its connection resume right
        behind it, ahead of its first step."""

        def add(self, task: asyncio.Future[Any]) -> None:
            super().add(task)
            if armed and isinstance(task, asyncio.Task):
                coro = task.get_coro()
                frame = getattr(coro, "cr_frame", None)
                if frame is not None and frame.f_locals.get("retry"):
                    cid = armed.pop()
                    attempts.append(task)
                    # what _admit does once its ledger read is back: not being settled
                    # (nothing in settlements.settling yet), so the ID is taken for the DTP
                    # connection dtp.aio serves in this same step
                    assert cid not in host.settlements.settling
                    owner = host.ledger.get_connection(cid).client
                    assert host._reserve(cid, owner, None) is None
                    host._unclaimed.discard(cid)  # (its handler took it)

    host: services_mod.ServiceHost

    async def scenario(daemon: Daemon, client: FileLedgerClient, *_unused: Any) -> None:
        nonlocal host
        assert daemon.services is not None
        host = daemon.services
        assert not host.settlements.running
        host.settlements.running = Handlers()
        cid = await client.open_ledger(7000)
        away.add(cid)
        _, writer = await client.connect(cid, 7000)
        assert await tunnel(writer) == b"ping"
        writer.close()
        await until(lambda: cid in host.settlements.retries, "its settlement failed")
        away.clear()  # the ledger is back
        armed.append(cid)
        await until(lambda: attempts, "a retry made")
        await asyncio.wait(set(attempts))
        # the retry left the connection served alone: still Open on the ledger
        assert not is_settled(client.ledger, cid)
        row = daemon.book.service("svc7000")
        assert row.refunded == 0
        host._served.release(cid)  # the connection served ends
        await until(lambda: row.refunded, "settled by a later retry")
        assert is_settled(client.ledger, cid)
        assert row.refunded == DEPOSIT

    run_with_file_client(tmp_path, lambda b: service(7000, b), scenario)


def test_a_claim_of_a_receipt_still_being_written_is_earned_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A paid connection sends one receipt and closes; the store's write of it is slow
    (held past the settlement's wait for it), so the settlement claims it from the
    writer's queue. The fee is earned once, claimed once: the receipt's "kept"
    callback, once the write lands, does not add again what the claim counted."""
    monkeypatch.setattr(fees_mod, "SETTLE_FLUSH_WAIT", 0.05)
    hold, held, let_go = threading.Event(), threading.Event(), threading.Event()
    real_keep_many = ReceiptStore.keep_many

    def keep_many(self: ReceiptStore, *args: Any, **kwargs: Any) -> Any:
        if hold.is_set():
            held.set()
            let_go.wait(RETRY_BOUND)
        return real_keep_many(self, *args, **kwargs)

    monkeypatch.setattr(ReceiptStore, "keep_many", keep_many)

    async def scenario(daemon: Daemon, client: FileLedgerClient, *_unused: Any) -> None:
        assert daemon.fees is not None
        cid = await client.open_ledger(7000)
        receipt = client.receipt(cid)
        hold.set()
        _, writer = await client.connect(cid, 7000)
        writer.write(receipt.encode())
        await writer.drain()
        await until(held.is_set, "the receipt's write under way")
        writer.close()
        row = daemon.book.service("svc7000")
        await until(lambda: row.fees_claimed, "claimed and counted")
        assert row.fees_claimed == receipt.total_amount
        hold.clear()
        let_go.set()  # the write lands: its "kept" callback runs
        await asyncio.to_thread(daemon.fees.writer.flush)
        await asyncio.sleep(0)  # (the callback, posted to the loop before flush ended)
        assert is_settled(client.ledger, cid)
        assert row.fees_claimed == receipt.total_amount
        assert row.fees_earned == receipt.total_amount

    run_with_file_client(tmp_path, lambda b: _paid(7000, b), scenario)
