"""The paid server's durable receipts as it closes (dtp.payments._receipt_writer,
dtp.payments.receipt_store, dtp.payments._settlement, dtp.hostid.paid).

- A receipt still failing to be written as the writer closed (a store locked by another
  process past the busy timeout) got one last try, then was dropped with only its
  connection ID logged, and close() still said True: the server's release closed the
  store as if everything had been written. It is tried again until the close's timeout
  is spent; what is still given up then is logged whole (to be claimed by hand) and
  close() says False.
- Each retry's error listed every connection ID of the batch (tens of kB a line, every
  second, on a full disk): it names the first few.
- A "claimed" mark that could not be written after the ledger settled (a store locked,
  a writer closed) raised out of the settlement: the settlement was not reported (a
  paid server then kept the final receipt it had just claimed as unclaimed), and one
  such mark stopped a whole recovery. Marks are bookkeeping the next start derives from
  the ledger: a failed one is logged, the settlement stands.
- A read-only store file opened, a server attached to it, and every keep then failed
  for good: it is refused at open.

Real SQLite files, another process holding the real write lock, a real LocalLedger; no
mocks."""

from __future__ import annotations

import errno
import logging
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import dtp.payments._receipt_writer
import dtp.payments._serving
import dtp.payments.receipt_store._store
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.payments._receipt_writer import ReceiptWriter
from dtp.payments._serving import release_receipts, settle_ended
from dtp.payments._settlement import claim_and_settle, recover_unclaimed
from dtp.payments.receipt_store import ReceiptStore, ReceiptStoreError
from dtp.payments.receipts import Receipt, fee
from tests.support.paid_twins import funded_ledger, ident
from tests.support.polling import wait_for
from tests.support.receipt_stores import CONN, locked_by_another_process, receipt
from tests.support.scopes import scope_of
from tests.support.settlements import settled_escrow

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=5000)
SERVER = ident(0x81)
CLIENT = ident(0x82)
PORT = 7
DEPOSIT = 100_000


@pytest.fixture
def quick_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    """A locked store fails a write after 0.05 s (not 30), and a failed write is tried
    again after 0.1 s (not 1): the behaviour is tested, not those lengths."""
    monkeypatch.setattr(dtp.payments.receipt_store._store, "BUSY_TIMEOUT", 0.05)
    monkeypatch.setattr(dtp.payments._receipt_writer, "RETRY_DELAY", 0.1)


def _failures(caplog: pytest.LogCaptureFixture, since: float = 0.0) -> list[str]:
    """The writer's "trying again" errors logged after ``since`` (a time.time())."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "dtp.payments._receipt_writer"
        and "trying again" in r.getMessage()
        and r.created > since
    ]


@pytest.mark.usefixtures("quick_failures")
def test_a_receipt_failing_as_the_writer_closes_is_retried_until_the_close_times_out(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dtp.payments._receipt_writer")
    path = tmp_path / "r.db"
    store = ReceiptStore(path)
    try:
        assert store.keep(receipt(1, 100))
        writer = ReceiptWriter(store)
        counted: list[Receipt] = []
        closed: list[bool] = []
        closing = threading.Thread(target=lambda: closed.append(writer.close(60)))
        with locked_by_another_process(path):
            writer.submit(receipt(2, 200), counted.append)
            assert wait_for(lambda: _failures(caplog), 30), caplog.text
            since = time.time()
            closing.start()
            # tried again (and again) after the close came: before, one last try failed
            # and the receipt was dropped
            assert wait_for(lambda: len(_failures(caplog, since)) >= 3, 30), caplog.text
            assert not closed
        # the other process let go within the close's timeout: the receipt is written
        closing.join(60)
        assert closed == [True]
        assert writer.given_up == ()
        assert [r.nonce for r in counted] == [2]
        latest = store.latest(CONN)
        assert latest is not None and latest.receipt.nonce == 2
    finally:
        store.close()


@pytest.mark.usefixtures("quick_failures")
def test_a_receipt_given_up_at_close_is_logged_whole_and_close_says_false(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dtp.payments._receipt_writer")
    path = tmp_path / "r.db"
    store = ReceiptStore(path)
    given = receipt(2, 200)  # e.g. the final receipt a refused claim handed over
    try:
        assert store.keep(receipt(1, 100))
        writer = ReceiptWriter(store)
        with locked_by_another_process(path):
            writer.submit(given, lambda r: None)
            assert wait_for(lambda: _failures(caplog), 30), caplog.text
            since = time.time()
            # (still writing as its timeout ends, or given up: False either way)
            assert not writer.close(1.0)
            assert wait_for(lambda: writer.stopped, 30)
            # it kept trying until the timeout, not once
            assert len(_failures(caplog, since)) >= 2, caplog.text
        assert writer.given_up == (given,)
        assert not writer.close(0)  # (and stays so)
        whole = [
            r
            for r in caplog.records
            if r.levelno == logging.ERROR and given.encode().hex() in r.getMessage()
        ]
        assert len(whole) == 1, caplog.text
        assert "given up at close" in whole[0].getMessage()
        latest = store.latest(CONN)
        assert latest is not None and latest.receipt.nonce == 1  # not written, as logged
    finally:
        store.close()


@pytest.mark.usefixtures("quick_failures")
def test_the_release_counts_the_receipts_given_up_and_closes_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # the tries (0.05 s each, 0.5 s apart) go on for the release's 3 s, then the writer
    # gives the receipt up; the store stays locked until it has stopped (on a loaded
    # machine a try can outlast the 3 s, and the release then finishes in the writer's
    # thread, as it stops)
    monkeypatch.setattr(dtp.payments._receipt_writer, "RETRY_DELAY", 0.5)
    monkeypatch.setattr(dtp.payments._serving, "RELEASE_WRITER_WAIT", 3.0)
    caplog.set_level(logging.INFO)
    path = tmp_path / "r.db"
    store = ReceiptStore(path)
    writer = ReceiptWriter(store)
    given = receipt(1, 100)
    try:
        with locked_by_another_process(path):
            writer.submit(given, lambda r: None)
            assert wait_for(lambda: _failures(caplog), 30), caplog.text
            release_receipts(writer, store, own_store=True)
            assert wait_for(lambda: writer.stopped, 30)
        assert writer.given_up == (given,)
        assert wait_for(lambda: store.closed, 10)  # nothing writes to it any more
        assert "receipt store left open" not in caplog.text
        summary = [
            r
            for r in caplog.records
            if r.name == "dtp.payments._serving"
            and r.levelno == logging.ERROR
            and "given up" in r.message
        ]
        assert len(summary) == 1 and summary[0].getMessage().startswith("1 receipt(s)")
        assert given.encode().hex() in caplog.text
    finally:
        store.close()


@pytest.mark.usefixtures("quick_failures")
def test_a_failed_write_of_many_connections_names_a_few_of_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="dtp.payments._receipt_writer")
    path = tmp_path / "r.db"
    store = ReceiptStore(path)
    writer = ReceiptWriter(store)
    ids = [f"0x{n:064x}" for n in range(1, 41)]
    try:
        with locked_by_another_process(path):
            with writer._cond:  # (one batch: the thread waits while this holds its lock)
                for cid in ids:
                    writer.submit(Receipt(scope_of(cid), 1, 0, 1, 1).sign(CLIENT), lambda r: None)
            assert wait_for(lambda: _failures(caplog), 30), caplog.text
        assert writer.close(30)
        for message in _failures(caplog):
            assert "and 37 more" in message, message
            assert sum(cid in message for cid in ids) == 3, message
    finally:
        store.close()
    with ReceiptStore(path) as again:
        assert all(again.latest(cid) is not None for cid in ids)


# -- claimed marks that cannot be written after the ledger settled ------------------------


@dataclass
class Opened:
    """A connection the client opened on the ledger, with a receipt for it stored."""

    cid: str
    stored: Receipt


@dataclass
class World:
    ledger: LocalLedger
    host_id: str
    cap_id: str

    def open(self, store: ReceiptStore, nonce: int = 1) -> Opened:
        cid = self.ledger.open_connection(
            CLIENT, self.host_id, PORT, self.cap_id, DEPOSIT
        ).connection_id
        stored = self.receipt(cid, 10240, nonce)
        assert store.keep(stored)
        return Opened(cid, stored)

    def receipt(self, cid: str, size: int, nonce: int) -> Receipt:
        return Receipt(self.ledger.receipt_scope(cid), size, 1, fee(SLA, size, 1), nonce).sign(
            CLIENT
        )

    def claimed(self, cid: str) -> int:
        return settled_escrow(self.ledger, cid).claimed


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    with funded_ledger(tmp_path, CLIENT) as ledger:
        host_id = ledger.create_host(SERVER, SERVER.noise_public)
        ledger.add_service(SERVER, host_id, PORT, "x", SLA)
        yield World(ledger, host_id, ledger.create_spending_cap(CLIENT, 10**9))


@pytest.mark.usefixtures("quick_failures")
def test_a_recovery_settles_every_connection_though_the_store_takes_no_mark(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "r.db"
    with ReceiptStore(path) as store:
        opened = [world.open(store) for _ in range(3)]
        with locked_by_another_process(path), caplog.at_level(logging.WARNING):
            recovered = recover_unclaimed(world.ledger, SERVER, store)
        # before, the first mark's ReceiptStoreError ended the recovery (and the
        # server's start) after one settlement, not reported
        assert sorted(cid for cid, _ in recovered) == sorted(o.cid for o in opened)
        for o in opened:
            assert world.ledger.get_connection(o.cid).settled
            assert world.claimed(o.cid) == o.stored.total_amount
        assert caplog.text.count("is not marked in the receipt store") == 3, caplog.text
        # unmarked: the next recovery finds them settled on the ledger and marks them
        assert len(list(store.unclaimed())) == 3
        assert recover_unclaimed(world.ledger, SERVER, store) == []
        assert list(store.unclaimed()) == []


@pytest.mark.usefixtures("quick_failures")
def test_a_receipt_written_off_on_a_locked_store_is_logged_not_raised(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "r.db"
    with ReceiptStore(path) as store:
        written_off = world.open(store)
        # settled on the ledger without its receipt (e.g. by an earlier run)
        world.ledger.settle(SERVER, written_off.cid)
        recovered_later = world.open(store)
        with locked_by_another_process(path), caplog.at_level(logging.WARNING):
            assert claim_and_settle(world.ledger, SERVER, written_off.cid, store) is None
            recovered = recover_unclaimed(world.ledger, SERVER, store)
        assert [cid for cid, _ in recovered] == [recovered_later.cid]
        assert "written off" in caplog.text


def test_a_settlement_through_a_closed_writer_is_returned_and_its_final_receipt_not_kept(
    world: World, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with ReceiptStore(tmp_path / "r.db") as store:
        opened = world.open(store)
        final = world.receipt(opened.cid, 20480, 2)  # the one the client's CLOSE came with
        writer = ReceiptWriter(store)
        assert writer.close(30)  # (a server stopped before this settlement ended)
        with caplog.at_level(logging.WARNING):
            settlement = settle_ended(world.ledger, SERVER, opened.cid, writer, final)
        assert settlement is not None and settlement.claimed == final.total_amount
        assert world.claimed(opened.cid) == final.total_amount
        assert "is not marked in the receipt store" in caplog.text
        # the final receipt, claimed, was not kept as unclaimed by _keep_final
        latest = store.latest(opened.cid)
        assert latest is not None and latest.receipt.nonce == 1
        assert "final receipt of connection" not in caplog.text


# -- a read-only store --------------------------------------------------------------------


def _chattr(flag: str, path: Path) -> None:
    """``chattr flag path``; the test is skipped where the file system or the sandbox
    does not let it (no other way makes a file read-only to root)."""
    try:
        done = subprocess.run(["chattr", flag, str(path)], capture_output=True, text=True)
    except FileNotFoundError:
        pytest.skip("no chattr here")
    if done.returncode != 0:
        if any(
            word in done.stderr
            for word in ("Operation not permitted", "Operation not supported", "Inappropriate")
        ):
            pytest.skip(f"chattr {flag} refused here: {done.stderr.strip()}")
        raise OSError(errno.EIO, f"chattr {flag} {path} failed: {done.stderr.strip()}")


def test_a_read_only_store_is_refused_at_open_and_a_locked_one_is_not(tmp_path: Path) -> None:
    path = tmp_path / "r.db"
    with ReceiptStore(path) as store:
        assert store.keep(receipt(1, 10))
    _chattr("+i", path)
    try:
        # before: it opened, attach_server() said True, and every keep failed for good
        with pytest.raises(ReceiptStoreError, match="read-only") as raised:
            ReceiptStore(path)
        assert raised.value.path == str(path)
    finally:
        _chattr("-i", path)
    # the probe neither refuses nor waits out the busy timeout on a store another
    # process is writing to: it is writable
    with locked_by_another_process(path):
        started = time.monotonic()
        with ReceiptStore(path) as store:
            assert time.monotonic() - started < dtp.payments.receipt_store._store.BUSY_TIMEOUT
            latest = store.latest(CONN)
            assert latest is not None and latest.receipt.nonce == 1
