"""Claimed marks wait in the receipt writer for up to MARK_DELAY after the first of them
(dtp.payments._receipt_writer), then go in one write: only the first mark of such a
batch wakes the writer's thread, which learns the deadline from it. A paid server
marks each connection it settles, and each mark woke the thread for nothing (a context
switch, and the GIL taken from the next connection's handshake).

Real SQLite files and a real ReceiptWriter thread; the writer's wake-ups are counted at
its condition."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import dtp.payments._receipt_writer
from dtp.payments._receipt_writer import ReceiptWriter
from dtp.payments.receipt_store import ReceiptStore
from dtp.payments.receipts import Receipt
from tests.support.counted_condition import CountedCondition
from tests.support.receipt_stores import CLIENT, CONN
from tests.support.scopes import scope_of

OTHERS = ["0x" + f"{n:02x}" * 32 for n in range(0x60, 0x64)]
DELAY = 0.3


def receipt(nonce: int, amount: int, cid: str) -> Receipt:
    return Receipt(scope_of(cid), amount, 0, amount, nonce).sign(CLIENT)


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ReceiptStore]:
    monkeypatch.setattr(dtp.payments._receipt_writer, "MARK_DELAY", DELAY)
    store = ReceiptStore(tmp_path / "receipts.db")
    try:
        yield store
    finally:
        store.close()


def _stored_with_receipts(writer: ReceiptWriter, store: ReceiptStore) -> None:
    """CONN and OTHERS each with a receipt stored, for the marks to land on."""
    for n, cid in enumerate([CONN, *OTHERS], 1):
        writer.submit(receipt(n, 100 * n, cid), lambda _r: None)
    assert writer.flush(timeout=30)


def test_marks_after_the_first_wake_nothing_and_go_in_one_write(store: ReceiptStore) -> None:
    writer = ReceiptWriter(store)
    try:
        _stored_with_receipts(writer, store)
        writes: list[dict[str, int]] = []
        many = store.mark_claimed_many

        def counted(marks: dict[str, int]) -> None:
            writes.append(dict(marks))
            many(marks)

        store.mark_claimed_many = counted  # type: ignore[method-assign]
        cond = CountedCondition(writer._cond)
        writer._cond = cond  # type: ignore[assignment]
        started = time.monotonic()
        writer.mark_claimed(CONN, 7)
        for n, cid in enumerate(OTHERS, 1):
            writer.mark_claimed(cid, n)
        writer.mark_claimed(CONN, 5)  # (lower: the higher one stays)
        assert cond.notified == 1
        # waiting, they count for latest() as written ones do
        latest = writer.latest(CONN)
        assert latest is not None and latest.claimed_amount == 7
        deadline = time.monotonic() + 30
        while not writes and time.monotonic() < deadline:
            time.sleep(0.01)
        took = time.monotonic() - started
        assert writes == [{CONN: 7, **{cid: n for n, cid in enumerate(OTHERS, 1)}}]
        assert DELAY * 0.9 <= took < DELAY + 10
        # (once written, the next mark starts a batch of its own: it wakes the writer)
        assert writer.flush(timeout=30)
        writer.mark_claimed(OTHERS[0], 50)
        assert cond.notified >= 2
    finally:
        assert writer.close()
    for n, cid in enumerate(OTHERS, 1):
        stored = store.latest(cid)
        assert stored is not None
        assert stored.claimed_amount == (50 if cid == OTHERS[0] else n)
    stored = store.latest(CONN)
    assert stored is not None and stored.claimed_amount == 7


def test_a_mark_with_none_waiting_is_written_within_the_delay(store: ReceiptStore) -> None:
    """The first mark's wake-up: a writer waiting with nothing to do learns its deadline
    (without it, the mark would wait for the next receipt)."""
    writer = ReceiptWriter(store)
    try:
        _stored_with_receipts(writer, store)
        time.sleep(0.05)  # (the writer back to waiting for work)
        writer.mark_claimed(CONN, 9)
        deadline = time.monotonic() + DELAY + 10
        while time.monotonic() < deadline:
            stored = store.latest(CONN)
            if stored is not None and stored.claimed_amount == 9:
                break
            time.sleep(0.01)
        stored = store.latest(CONN)
        assert stored is not None and stored.claimed_amount == 9
    finally:
        assert writer.close()
