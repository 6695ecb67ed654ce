"""The receipt writer against a closed receipt store (dtp.payments._receipt_writer).

A store closed while the writer still held receipts (its owner closed it first: the
wrong shutdown order) failed every write with "it is closed", and the writer retried the
batch every second for good: an error logged each time, ``flush()`` waiting out its whole
timeout. It now drops what is waiting, logging each receipt once and whole (to be
claimed by hand), never counts it as kept (no
``done``), and goes on: ``flush()`` and ``close()`` return at once (close() False: the
receipts are in ``given_up``).

Real SQLite files, a real ReceiptWriter, another process holding the SQLite lock (so
that receipts wait in the writer as the store closes); no mocks.

A receipt write failing with an error that is not the disk's (a bug, a store that
raises something else) dropped the batch with only its connection IDs logged, and
close() said everything was written: the receipts are now given up as at close --
each logged whole, listed in ``given_up``, close() False."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pytest

import dtp.payments.receipt_store._store
from dtp.payments._receipt_writer import ReceiptWriter
from dtp.payments.receipt_store import ReceiptStore
from dtp.payments.receipts import Receipt
from tests.support.receipt_stores import CLIENT, CONN, locked_by_another_process, receipt
from tests.support.scopes import scope_of

OTHER = "0x" + "7a" * 32
# long enough for a writer retrying every second to log several times
QUIET = 4.0


def _other(nonce: int, amount: int) -> Receipt:
    return Receipt(scope_of(OTHER), amount, 0, amount, nonce).sign(CLIENT)


def _closed_errors(caplog: pytest.LogCaptureFixture, since: int) -> list[logging.LogRecord]:
    """The writer's ERROR records after the first ``since`` that are about the closed
    store (not the lock another process held before)."""
    return [
        r
        for r in caplog.records[since:]
        if r.name == "dtp.payments._receipt_writer"
        and r.levelno == logging.ERROR
        and "is closed" in r.getMessage()
    ]


def _wait_for(check: Callable[[], object], timeout: float) -> bool:
    """Whether ``check()`` became true within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return bool(check())


def _assert_logged_whole(errors: list[logging.LogRecord], receipts: list[Receipt]) -> None:
    """One error per receipt, each with the whole receipt (its encoding in hex)."""
    messages = [r.getMessage() for r in errors]
    assert len(messages) == len(receipts), messages
    for r in receipts:
        assert sum(r.encode().hex() in m for m in messages) == 1, messages


def test_receipts_waiting_as_the_store_closes_are_dropped_each_logged_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # the first write fails at once on the lock another process holds: the batch then
    # waits in the writer for its retry, and the store is closed meanwhile
    monkeypatch.setattr(dtp.payments.receipt_store._store, "BUSY_TIMEOUT", 0.2)
    caplog.set_level(logging.WARNING, logger="dtp.payments._receipt_writer")
    path = tmp_path / "r.db"
    store = ReceiptStore(path)
    writer = ReceiptWriter(store)
    kept: list[Receipt] = []
    lock = threading.Lock()

    def done(r: Receipt) -> None:
        with lock:
            kept.append(r)

    try:
        with locked_by_another_process(path):
            writer.submit(receipt(1, 10), done)
            writer.submit(_other(1, 20), done)
            assert _wait_for(lambda: "trying again" in caplog.text, 60), caplog.text
            # (counted from before the close: the writer's next try may meet the closed
            # store before the other process lets go of its lock)
            since = len(caplog.records)
            store.close()
            assert store.closed
        assert _wait_for(lambda: _closed_errors(caplog, since), 30), caplog.text
        time.sleep(QUIET)  # a writer still retrying logs again meanwhile
        errors = _closed_errors(caplog, since)
        _assert_logged_whole(errors, [receipt(1, 10), _other(1, 20)])
        # nothing waits in the writer any more: flush() and close() return at once
        assert writer.flush(timeout=30)
    finally:
        assert not writer.close(30)  # (receipts were given up)
    assert writer.stopped
    assert sorted(r.connection_id for r in writer.given_up) == sorted([CONN, OTHER])
    assert kept == []
    with ReceiptStore(path) as again:
        assert again.latest(CONN) is None
        assert again.latest(OTHER) is None


def test_receipts_and_marks_submitted_after_the_store_closed_are_dropped_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="dtp.payments._receipt_writer")
    path = tmp_path / "r.db"
    store = ReceiptStore(path)
    writer = ReceiptWriter(store)
    kept: list[Receipt] = []
    try:
        assert not store.closed
        store.close()
        assert store.closed
        # one batch: the writer waits for submit()'s receipts while this holds its lock
        with writer._cond:
            writer.submit(receipt(1, 10), kept.append)
            writer.submit(_other(1, 20), kept.append)
            writer.mark_claimed(OTHER, 5)
        assert _wait_for(lambda: _closed_errors(caplog, 0), 30), caplog.text
        time.sleep(QUIET)
        errors = _closed_errors(caplog, 0)
        _assert_logged_whole(errors, [receipt(1, 10), _other(1, 20)])
        marks = [r.getMessage() for r in caplog.records if "claimed mark(s)" in r.getMessage()]
        assert len(marks) == 1 and "1 claimed mark(s) not stored, dropped" in marks[0], marks
        assert writer.flush(timeout=30)
    finally:
        assert not writer.close(30)  # (receipts were given up)
    assert kept == []
    # the writer's close found nothing more to give up on
    assert len(_closed_errors(caplog, 0)) == 2
    with ReceiptStore(path) as again:
        assert again.latest(CONN) is None


class BrokenStore(ReceiptStore):
    """A store whose receipt writes fail with a non-SQLite error."""

    def keep_many(
        self, receipts: Sequence[Receipt], claimed: Mapping[str, int] | None = None
    ) -> list[bool]:
        raise ValueError("not a disk error")


def test_a_write_failing_otherwise_gives_the_receipts_up_whole(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="dtp.payments._receipt_writer")
    store = BrokenStore(tmp_path / "r.db")
    writer = ReceiptWriter(store)
    kept: list[Receipt] = []
    lost = receipt(1, 10)
    try:
        writer.submit(lost, kept.append)
        assert writer.flush(timeout=30)
    finally:
        assert not writer.close(30)
        store.close()
    assert writer.given_up == (lost,)
    assert kept == []
    assert lost.encode().hex() in caplog.text
    assert f"receipt 1 of connection {CONN}" in caplog.text


def test_given_up_keeps_the_newest_receipt_of_each_connection(tmp_path: Path) -> None:
    """(A store failing every batch for as long as the writer runs: given_up grew by a
    receipt per batch, superseded ones included.)"""
    store = BrokenStore(tmp_path / "r.db")
    writer = ReceiptWriter(store)
    try:
        for nonce in range(1, 6):
            writer.submit(receipt(nonce, 10 * nonce), lambda r: None)
            assert writer.flush(timeout=30)
    finally:
        assert not writer.close(30)
        store.close()
    assert writer.given_up == (receipt(5, 50),)


def test_the_writers_listener_hears_every_receipt_stored_and_cannot_stop_its_count(
    tmp_path: Path,
) -> None:
    """``on_stored`` (what claims receipts while their connections live) is told of
    each receipt once stored, before its ``done``; one that raises is logged, and the
    receipt counts all the same (its ``done`` runs)."""
    heard: list[int] = []
    done: list[int] = []

    def listener(r: Receipt) -> None:
        heard.append(r.nonce)
        if r.nonce == 2:
            raise RuntimeError("a listener's bug")

    with ReceiptStore(tmp_path / "r.db") as store:
        writer = ReceiptWriter(store)
        writer.on_stored = listener
        for nonce in (1, 2, 3):
            writer.submit(receipt(nonce, 100 * nonce), lambda r: done.append(r.nonce))
            assert writer.flush(timeout=10)
        assert writer.close(10)
        stored = store.latest(CONN)
    assert heard == done == [1, 2, 3]
    assert stored is not None and stored.receipt.nonce == 3
