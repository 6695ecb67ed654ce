"""Durable receipt writes off the I/O path, for paid servers.

A receipt must be on disk before it counts (docs/escrow.md §6.1), and an fsync where the
connection is driven would stall it (under asyncio, the whole loop): a
:class:`ReceiptWriter` thread writes instead, the connection serving on credit
meanwhile, and a newer receipt replaces an older one still waiting (fewer fsyncs).

The thread runs at a lower CPU priority (:data:`WRITER_NICE`, Linux): at the same one,
its writes took 4-12 ms off a 256 MiB paid transfer on a 2-core host, 1-3 ms at +10.

It stands in for its store in the settlement: :meth:`ReceiptWriter.latest` knows the
receipts not yet on disk, and :meth:`ReceiptWriter.mark_claimed` marks a claim with the
next receipts' commit.
"""

from __future__ import annotations

import logging
import math
import os
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Mapping

from dtp.ledger._objects import normalize_id
from dtp.ledger.receipt import Receipt
from dtp.payments.receipt_store import ReceiptStore, StoredReceipt

__all__ = ["ReceiptWriter"]

logger = logging.getLogger(__name__)

Done = Callable[[Receipt], None]


#: How much lower the writer thread's CPU priority is than its creator's (a nice
#: increment, capped at the lowest, 19; Linux only)
WRITER_NICE = 10
#: How long a claimed mark may wait for a receipt write to go with (seconds).
MARK_DELAY = 1.0
#: How long after a failed write (a store locked past SQLite's busy timeout, a full
#: disk) the writer tries again (seconds).
RETRY_DELAY = 1.0


class ReceiptWriter:
    """One thread writing receipts to ``store``; ``done(receipt)`` runs (in that thread)
    after a receipt is stored.

    Claimed marks wait up to :data:`MARK_DELAY` to go into the next receipt write's
    commit (a lost one is derived from the ledger again), so a settlement costs no write
    of its own.

    A failed write is tried again every :data:`RETRY_DELAY` seconds until the close's
    timeout is spent (:meth:`latest` still reports its receipts for a settlement); then
    it is given up (:attr:`given_up`, each receipt logged whole) and :meth:`close`
    returns False. A closed store gives up at once (:meth:`_dropped`)."""

    def __init__(self, store: ReceiptStore) -> None:
        self.store = store
        self._pending: dict[str, tuple[Receipt, Done]] = {}
        self._marks: dict[str, int] = {}  # claimed marks, written with the next receipts
        self._marks_since = 0.0
        self._mark_now = False
        self._busy: dict[str, Receipt | None] = {}  # being written (None: a mark only)
        self._busy_marks: dict[str, int] = {}  # the claimed marks being written
        self._retry_at: float | None = None  # after a failed write: not before then
        # after close(): no write is tried again once the next try would start after this
        self._give_up_at = 0.0
        # the newest receipt given up of each connection (only it is worth claiming: a
        # store closed under the writer drops one per batch, for as long as it runs)
        self._given_up: dict[str, Receipt] = {}
        # (taken as ``with self._cond_lock``: Condition's __enter__/__exit__ are Python
        # calls, and a paid server looks at the writer several times a connection)
        self._cond_lock = threading.RLock()
        self._cond = threading.Condition(self._cond_lock)
        self._closed = False
        # when_stopped(): run once the thread is past its last write (set under _cond)
        self._ended = False
        self._on_stop: list[Callable[[], None]] = []
        #: Told of every receipt once it is stored (in this thread, before its
        #: ``done``): what claims receipts while their connections live learns of them
        #: here (:class:`~dtp.payments._live_claims.LiveClaimer`)
        self.on_stored: Done | None = None
        self._thread = threading.Thread(target=self._run, name="dtp-receipts", daemon=True)
        self._thread.start()

    def submit(self, receipt: Receipt, done: Done) -> None:
        """Queue ``receipt`` (replacing an older one of its connection still waiting;
        one older than the one waiting is dropped, as the store would refuse it)."""
        with self._cond_lock:
            if self._closed:
                raise RuntimeError("the receipt writer is closed")
            # keyed as latest() and mark_claimed() look it up (a receipt made by hand
            # may spell its ID short or in capitals)
            key = normalize_id(receipt.connection_id, "connection ID")
            _queue(self._pending, key, (receipt, done))
            self._cond.notify_all()

    def latest(self, connection_id: str) -> StoredReceipt | None:
        """The newest receipt of a connection, waiting, being written or stored, claimed
        as far as the store and the marks not yet written say."""
        key = normalize_id(connection_id, "connection ID")
        with self._cond_lock:
            waiting = self._pending.get(key)
            receipt = waiting[0] if waiting is not None else self._busy.get(key)
            mark = max(self._marks.get(key, 0), self._busy_marks.get(key, 0))
        if receipt is not None:
            return StoredReceipt(receipt, mark)
        stored = self.store.latest(key)
        if stored is not None and mark > stored.claimed_amount:
            return StoredReceipt(stored.receipt, mark)
        return stored

    def mark_claimed(self, connection_id: str, amount: int) -> None:
        """Queue :meth:`ReceiptStore.mark_claimed`, written after any receipt of the
        connection submitted before it (with the next receipts written, or within
        :data:`MARK_DELAY`)."""
        key = normalize_id(connection_id, "connection ID")
        if isinstance(amount, bool) or not isinstance(amount, int) or not 0 <= amount < 2**64:
            # refused here: found by the writer thread, it would end the thread, and no
            # receipt would be written after it
            raise ValueError(f"a claimed amount is a u64, got {amount!r}")
        with self._cond_lock:
            if self._closed:
                raise RuntimeError("the receipt writer is closed")
            marks = self._marks
            if marks:
                # the writer knows of the marks' deadline already (waiting for it, or
                # writing and back for them next): no wake-up, one a paid server's
                # settlement otherwise paid for nothing
                marks[key] = max(amount, marks.get(key, 0))
                return
            self._marks_since = time.monotonic()
            marks[key] = amount
            self._cond.notify_all()

    def flush(self, connection_id: str | None = None, timeout: float = 30.0) -> bool:
        """Wait until nothing (of ``connection_id``, or at all) is waiting or being
        written, claimed marks included; False on timeout."""

        key = None if connection_id is None else normalize_id(connection_id, "connection ID")

        def idle() -> bool:
            if key is None:
                return not self._pending and not self._marks and not self._busy
            return key not in self._pending and key not in self._marks and key not in self._busy

        with self._cond_lock:
            if self._marks:
                self._mark_now = True
                self._cond.notify_all()
            return self._cond.wait_for(idle, timeout)

    def _next_batch(self) -> tuple[dict[str, tuple[Receipt, Done]], dict[str, int]] | None:
        """The next batch to write (lock held; waits for one); None once closed and
        drained."""
        while True:
            if self._retry_at is not None:
                left = self._retry_at - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
            if self._pending:
                break
            if self._marks:
                left = self._marks_since + MARK_DELAY - time.monotonic()
                if self._mark_now or self._closed or left <= 0:
                    break
                self._cond.wait(left)
                continue
            if self._closed:
                return None
            self._cond.wait()
        batch, self._pending = self._pending, {}
        marks, self._marks = self._marks, {}
        self._mark_now = False
        busy: dict[str, Receipt | None] = {cid: r for cid, (r, _) in batch.items()}
        for cid in marks:
            busy.setdefault(cid, None)
        self._busy = busy
        self._busy_marks = marks
        return batch, marks

    def when_stopped(self, then: Callable[[], None]) -> None:
        """Run ``then`` once the thread will use the store no more: as the thread's last
        step (:attr:`stopped` True only after it), or at once when it is past its last
        write. What a paid server's release leaves to a writer still writing (detach,
        close). An exception it raises is logged."""
        with self._cond_lock:
            if not self._ended:
                self._on_stop.append(then)
                return
        _run_hook(then)

    def _run(self) -> None:
        try:
            self._write_all()
        finally:
            with self._cond_lock:
                self._ended = True
                hooks, self._on_stop = self._on_stop, []
            for then in hooks:
                _run_hook(then)

    def _write_all(self) -> None:
        """The thread's work: every batch, until closed and drained."""
        _lower_priority(WRITER_NICE)
        while True:
            with self._cond_lock:
                taken = self._next_batch()
            if taken is None:
                return
            batch, marks = taken
            receipts = [receipt for receipt, _ in batch.values()]
            stored: list[bool] = []
            try:
                if receipts:  # the marks go into the receipts' commit
                    stored = self.store.keep_many(receipts, marks)
                else:
                    self.store.mark_claimed_many(marks)
            except sqlite3.Error as exc:  # not stored: it does not count yet
                if self.store.closed:  # for good: no retry can succeed
                    self._dropped(batch, marks, exc)
                else:
                    self._failed(batch, marks, exc)
                batch = {}
            except Exception as exc:  # (not the disk: trying again would fail alike)
                logger.exception("cannot store receipts (%s)", _brief(batch or marks))
                with self._cond_lock:
                    self._note_given_up(batch)
                _give_up(batch, marks, exc, "dropped")
                batch = {}
            else:
                with self._cond_lock:
                    self._retry_at = None
            for (receipt, done), kept in zip(batch.values(), stored, strict=False):
                if not kept:
                    # the store holds a newer or higher one: this one never counts (a
                    # receipt lower than the one stored would undo a payment)
                    logger.warning(
                        "receipt %d of %s not kept: the store holds a newer or higher one",
                        receipt.nonce,
                        receipt.connection_id,
                    )
                    continue
                for callback in (self.on_stored, done):
                    if callback is None:
                        continue
                    try:
                        callback(receipt)
                    except Exception:
                        logger.exception("receipt callback failed for %s", receipt.connection_id)
            with self._cond_lock:
                self._busy = {}
                self._busy_marks = {}
                self._cond.notify_all()

    def _failed(
        self, batch: dict[str, tuple[Receipt, Done]], marks: dict[str, int], exc: Exception
    ) -> None:
        """A write failed: keep the batch waiting and try again after
        :data:`RETRY_DELAY` (dropped, the client would not sign that usage again). After
        :meth:`close`, only within its timeout; then it is given up (:func:`_give_up`)."""
        with self._cond_lock:
            self._requeue(batch, marks)
            retry_at = time.monotonic() + RETRY_DELAY
            if self._closed and retry_at >= self._give_up_at:
                receipts, given_up_marks = self._take_all()
                self._note_given_up(receipts)
            else:
                if self._marks:
                    self._marks_since = min(self._marks_since, time.monotonic())
                self._retry_at = retry_at
                receipts = None
        if receipts is None:
            # (briefly: on a full disk, a whole server's connections, every RETRY_DELAY)
            logger.error(
                "cannot store receipts (%s), trying again: %s", _brief(batch or marks), exc
            )
        else:
            _give_up(receipts, given_up_marks, exc, "given up at close")

    def _requeue(self, batch: dict[str, tuple[Receipt, Done]], marks: dict[str, int]) -> None:
        """Put a batch that was not written back with what waits (lock held): a newer
        receipt submitted meanwhile stays, and a mark keeps its highest amount."""
        for cid, item in batch.items():
            _queue(self._pending, cid, item)
        for cid, amount in marks.items():
            self._marks[cid] = max(amount, self._marks.get(cid, 0))

    def _take_all(self) -> tuple[dict[str, tuple[Receipt, Done]], dict[str, int]]:
        """Everything waiting, taken out for good (lock held): nothing of it is tried
        again."""
        receipts, self._pending = self._pending, {}
        marks, self._marks = self._marks, {}
        self._mark_now = False
        self._retry_at = None
        return receipts, marks

    def _dropped(
        self, batch: dict[str, tuple[Receipt, Done]], marks: dict[str, int], exc: Exception
    ) -> None:
        """A write failed because the store is closed, for good: drop the batch and what
        waits, each receipt logged whole and kept in :attr:`given_up`, rather than retry
        it for good. ``done`` does not run for them: ``done`` means kept."""
        with self._cond_lock:
            self._requeue(batch, marks)
            receipts, dropped_marks = self._take_all()
            self._note_given_up(receipts)
        _give_up(receipts, dropped_marks, exc, "dropped: the store is closed")

    @property
    def given_up(self) -> tuple[Receipt, ...]:
        """The receipts given up (the newest of each connection), not stored, each
        logged whole at error level."""
        with self._cond_lock:
            return tuple(self._given_up.values())

    def _note_given_up(self, receipts: Mapping[str, tuple[Receipt, Done]]) -> None:
        """Count ``receipts`` as given up (lock held), the newest of each connection."""
        for cid, (receipt, _) in receipts.items():
            known = self._given_up.get(cid)
            if known is None or receipt.nonce > known.nonce:
                self._given_up[cid] = receipt

    @property
    def stopped(self) -> bool:
        """Whether the thread has ended: nothing uses the store any more."""
        return not self._thread.is_alive()

    def close(self, timeout: float | None = 30.0) -> bool:
        """Write what is waiting, then stop the thread, retrying a failed write within
        ``timeout`` (of the first call), then giving it up. True when everything was
        written; False when receipts were given up or the thread still writes
        (:attr:`stopped` tells: then the store must not be closed)."""
        with self._cond_lock:
            if not self._closed:
                # (None: tried again for as long as it takes, as join(None) waits; set
                # before _closed, so that a bad timeout leaves the writer as it was)
                self._give_up_at = math.inf if timeout is None else time.monotonic() + timeout
                self._closed = True
                if self._retry_at is not None:
                    # a retry waiting is tried at once: the lock that failed the last
                    # try may be gone, and the close's timeout starts now
                    self._retry_at = time.monotonic()
                self._cond.notify_all()
        if self._thread is not threading.current_thread():  # (a done callback closing)
            self._thread.join(timeout)
        return self.stopped and not self.given_up


def _run_hook(then: Callable[[], None]) -> None:
    """``then()`` of :meth:`ReceiptWriter.when_stopped`, an exception logged (in the
    writer's thread, raised it ended the thread with a traceback and the next hook
    unrun)."""
    try:
        then()
    except Exception:
        logger.exception("a step after the receipt writer stopped failed")


def _give_up(
    receipts: Mapping[str, tuple[Receipt, Done]],
    marks: Mapping[str, int],
    exc: Exception,
    how: str,
) -> None:
    """Log what the writer gives up: each receipt whole (all an operator needs to claim
    it by hand), the claimed marks briefly."""
    for receipt, _ in receipts.values():
        logger.error(
            "receipt %d of connection %s (%d MIST) not stored, %s (%s); receipt: %s",
            receipt.nonce,
            receipt.connection_id,
            receipt.total_amount,
            how,
            exc,
            receipt.encode().hex(),
        )
    if marks:
        logger.warning(
            "%d claimed mark(s) not stored, %s (%s): %s", len(marks), how, _brief(marks), exc
        )


def _brief(ids: Mapping[str, object], shown: int = 3) -> str:
    """The first ``shown`` connection IDs of ``ids``, and how many more (a closed
    store may drop a whole server's worth in one line)."""
    names = list(ids)
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


def _lower_priority(increment: int) -> None:
    """Raise the calling thread's nice value by ``increment`` (module doc), best effort:
    where it cannot (another system, a sandbox refusing it), the writes run as before."""
    if not sys.platform.startswith("linux"):
        # (elsewhere PRIO_PROCESS takes a process ID, not a thread's)
        return
    tid = threading.get_native_id()
    try:
        nice = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, nice + increment))
    except OSError as exc:
        logger.debug("receipt writer: its priority stays as it is (%s)", exc)


def _queue(pending: dict[str, tuple[Receipt, Done]], key: str, item: tuple[Receipt, Done]) -> None:
    """Put ``item`` in ``pending`` unless the receipt waiting there is newer (a higher
    nonce): replaced by an older one, a newer receipt would never be written -- the
    store would hold the older one, and the fees the newer one covered be lost."""
    waiting = pending.get(key)
    if waiting is None or item[0].nonce > waiting[0].nonce:
        pending[key] = item
