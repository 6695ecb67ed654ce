"""The receipt writer's thread runs below the priority of the thread that made it
(dtp.payments._receipt_writer, Linux): a receipt's SQLite commit and fsync, run at once on a core
a paid connection was using, stalled the stream it was paying for.

Real SQLite files and a real ReceiptWriter thread; the refused ``setpriority`` is the one
stand-in (no sandbox here refuses it)."""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path

import pytest

import dtp.payments._receipt_writer
from dtp.payments._receipt_writer import WRITER_NICE, ReceiptWriter
from dtp.payments.receipt_store import ReceiptStore
from dtp.payments.receipts import Receipt
from tests.support.receipt_stores import CONN, receipt

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="a thread has a nice value of its own on Linux"
)


def _nice(tid: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, tid)


def _write_one(writer: ReceiptWriter, nonce: int) -> list[Receipt]:
    """Submit a receipt and wait for it (the thread has run its start by then)."""
    kept: list[Receipt] = []
    writer.submit(receipt(nonce, 10 * nonce), kept.append)
    assert writer.flush(timeout=30)
    return kept


def test_the_writer_thread_runs_below_its_creator_and_no_other_thread_does(
    tmp_path: Path,
) -> None:
    me = threading.get_native_id()
    before = _nice(me)
    store = ReceiptStore(tmp_path / "receipts.db")
    writer = ReceiptWriter(store)
    try:
        kept = _write_one(writer, 1)
        assert writer._thread.native_id is not None
        assert _nice(writer._thread.native_id) == min(19, before + WRITER_NICE)
        # the thread's own value: not the process's (the caller runs as before)
        assert _nice(me) == before
        assert [r.nonce for r in kept] == [1]
        stored = store.latest(CONN)
        assert stored is not None and stored.receipt.nonce == 1
    finally:
        assert writer.close()
        store.close()


def test_a_creator_near_the_lowest_priority_gives_the_lowest(tmp_path: Path) -> None:
    store = ReceiptStore(tmp_path / "receipts.db")
    made: list[ReceiptWriter] = []

    def low_thread() -> None:
        # (this thread only: the writer inherits its value, and the test runs on)
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 15)
        made.append(ReceiptWriter(store))

    helper = threading.Thread(target=low_thread)
    helper.start()
    helper.join(30)
    (writer,) = made
    try:
        assert [r.nonce for r in _write_one(writer, 1)] == [1]
        assert writer._thread.native_id is not None
        assert _nice(writer._thread.native_id) == 19
    finally:
        assert writer.close()
        store.close()


def test_a_refused_priority_change_leaves_the_writes_working(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(which: int, who: int, prio: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(dtp.payments._receipt_writer.os, "setpriority", refuse)
    caplog.set_level(logging.DEBUG, logger="dtp.payments._receipt_writer")
    before = _nice(threading.get_native_id())
    store = ReceiptStore(tmp_path / "receipts.db")
    writer = ReceiptWriter(store)
    try:
        assert [r.nonce for r in _write_one(writer, 1)] == [1]
        assert [r.nonce for r in _write_one(writer, 2)] == [2]
        assert writer._thread.native_id is not None
        assert _nice(writer._thread.native_id) == before
        assert any(
            "priority stays as it is" in r.getMessage() and "not permitted" in r.getMessage()
            for r in caplog.records
        )
    finally:
        assert writer.close()
        store.close()
