"""The ledger calls of a client's refunds, shared by their drivers (docs/escrow.md
§7.1): :class:`Refunder` does what :class:`~dtp.payments._refund_engine.RefundEngine`
decides, :class:`OpenAttempt` is one open's ``on_open`` journal, :func:`collect_refund`
settles one connection. They block: drivers run them in a thread.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dtp.errors import (
    ChainError,
    ConnectionStateError,
    DTPError,
    ObjectNotFound,
    ReceiptStoreError,
)
from dtp.ledger._connections import client_settles_at, find_connections
from dtp.ledger._deletion import Deletions
from dtp.ledger._objects import ConnectionState, TransportControl, normalize_id
from dtp.payments._refund_book import Opened, OpenedBook
from dtp.payments._refund_engine import (
    Forgotten,
    FoundSettled,
    HalfClosed,
    LookEvent,
    RefundAction,
    RefundEngine,
    RefundEvent,
    Settled,
    Skipped,
    StepFailed,
    worth_deleting,
    worth_gas,
)

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity
    from dtp.ledger._gas import EndGas
    from dtp.ledger.interface import Ledger

__all__ = ["Look", "OpenAttempt", "Refunder", "collect_refund"]

#: What a look may meet that is the ledger's (or the book's) and not a fault: the look
#: is tried again later.
_LEDGER_FAILURES = (ChainError, OSError, sqlite3.Error, ReceiptStoreError)


def collect_refund(ledger: Ledger, identity: HostIdentity, connection_id: str) -> int:
    """The client's refund of a connection, in MIST.

    When the connection is already settled (the server settled it, the usual case),
    returns what that settlement refunded. Otherwise half-closes it if still Open and
    settles; that succeeds only once the half-close timeout has passed
    (``ConnectionStateError`` ``ETimeoutNotReached`` before), which leaves the server
    that long to claim its last receipt.
    """
    return _collect(ledger, identity, connection_id)[0]


def _collect(
    ledger: Ledger, identity: HostIdentity, connection_id: str, *, destroy: bool = False
) -> tuple[int, bool]:
    """:func:`collect_refund`, and whether this call settled (else someone had);
    ``destroy``: a settlement of ours deletes the connection's objects in the same
    transaction (``Ledger.settle_and_destroy``)."""
    tc = ledger.get_connection(connection_id)
    if tc.settled:
        return ledger.get_escrow(tc.escrow).refunded, False
    try:
        if tc.state == ConnectionState.OPEN:
            ledger.close_connection(identity, connection_id)
        if destroy:
            return ledger.settle_and_destroy(identity, connection_id).refunded, True
        return ledger.settle(identity, connection_id).refunded, True
    except ConnectionStateError:
        # the server may settle between our read and our transaction (EConnectionClosed,
        # EAlreadySettled): the refund was paid, reported as when read settled
        tc = ledger.get_connection(connection_id)
        if tc.settled:
            return ledger.get_escrow(tc.escrow).refunded, False
        raise


@dataclass(frozen=True)
class Look:
    """What one :meth:`Refunder.look` did, and when the next is due."""

    events: list[LookEvent] = field(default_factory=list)
    wait: float = 0.0
    """Seconds until the next look."""


class Refunder:
    """The refunds of ``identity``'s connections kept in ``book``: entries recorded and
    released (any thread), and :meth:`look` (blocking, one at a time).
    ``report_others``: read what another's settlement refunded (one more read).
    ``wake``: called on a release, for the driver to look at once. ``clock``: the
    engine's ``now``."""

    def __init__(
        self,
        ledger: Ledger,
        identity: HostIdentity,
        book: OpenedBook,
        engine: RefundEngine,
        *,
        report_others: bool = False,
        wake: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.clock = clock
        self.ledger = ledger
        self.identity = identity
        self.book = book
        self.engine = engine
        self.report_others = report_others
        self.wake = wake
        self._lock = threading.Lock()  # the engine's
        self._looking = threading.Lock()  # one look at a time
        self._stopping = False

    # -- the book --------------------------------------------------------------------------

    def record(
        self,
        cap_id: str | None,
        connection_id: str | None,
        label: str = "",
        *,
        in_use: bool = True,
        due_ms: int | None = None,
        unserved: bool = False,
    ) -> Opened:
        """Write a connection to the book (blocking: a synced write), in use unless
        not ``in_use``; ``unserved``: see :attr:`Opened.unserved`. Raises what the book
        raises: before an open, that stops it."""
        entry = self.book.record(
            None if cap_id is None else normalize_id(cap_id, "spending cap ID"),
            None if connection_id is None else normalize_id(connection_id, "connection ID"),
            label,
            due_ms,
            unserved=unserved,
        )
        with self._lock:
            if in_use:
                self.engine.use(entry, self.clock())
            else:
                self.engine.release(entry.ids)
        if not in_use:
            self._wake()
        return entry

    def release(self, some_id: str) -> bool:
        """The connection of this spending cap or connection ID is no longer used: the
        next look takes it (and one comes at once). Whether the book holds it."""
        key = normalize_id(some_id, "object ID")
        entry = self.book.find(key)
        with self._lock:
            self.engine.release(entry.ids if entry is not None else (key,))
        if entry is not None:
            self._wake()
        return entry is not None

    def hold(self, some_id: str, seconds: float = math.inf) -> bool:
        """The connection of this spending cap or connection ID is in use by its keeper
        for ``seconds`` more (a lease, renewed by the next call; inf: until released):
        a look takes it once that has passed. Whether the book holds it."""
        entry = self.book.find(normalize_id(some_id, "object ID"))
        if entry is None:
            return False
        now = self.clock()
        with self._lock:
            self.engine.use(entry, now, now + seconds)
        self._wake()  # (the driver's wait ends with the lease at the latest)
        return True

    def served(self, some_id: str) -> None:
        """The connection of this spending cap or connection ID carried a DTP
        connection: no longer :attr:`Opened.unserved` (blocking: a synced write)."""
        self.book.served(normalize_id(some_id, "object ID"))

    def has_work(self) -> bool:
        """Whether the looks have work: a connection of the book nothing uses, or one
        in use on a lease (see :meth:`RefundEngine.use`), which a look takes once it
        ends."""
        entries = self.book.entries()
        now = self.clock()
        with self._lock:
            return bool(self.engine.idle(entries, now)) or self.engine.leased(now)

    def stop(self) -> None:
        """End a look under way after its current ledger call, and make the next ones
        do nothing (the driver stops)."""
        self._stopping = True

    def _wake(self) -> None:
        if self.wake is not None:
            self.wake()

    # -- a look ----------------------------------------------------------------------------

    def look(self) -> Look:
        """One look at every connection of the book nothing uses; an unreadable ledger
        ends it (:class:`LookFailed`), a failed step is retried after ``retry``."""
        with self._looking:
            if self._stopping:
                return Look([], self.engine.interval)
            return self._look_at_all()

    def _look_at_all(self) -> Look:
        events: list[LookEvent] = []
        now = self.clock()
        now_ms: int | None = None
        gas: EndGas | None = None
        try:
            entries = self.book.entries()
            with self._lock:
                chosen = self.engine.to_look(entries, now)
                idle = bool(self.engine.idle(entries, now))
            if idle:
                if any(e.connection_id is None for e in chosen):
                    chosen = self._resolve(chosen, events)
                now_ms = self.ledger.clock_ms()
                gas = self.ledger.end_gas() if chosen else None
        except _LEDGER_FAILURES as exc:
            with self._lock:
                events.append(self.engine.look_failed(exc, now))
                return Look(events, self.engine.wait((), None, now))
        with self._lock:
            recovered = self.engine.look_succeeded() if idle else None
        if recovered is not None:
            events.append(recovered)
        if gas is not None and now_ms is not None:
            with self._lock:
                self.engine.charged = gas.charged
            for entry in chosen:
                if self._stopping:
                    break
                with self._lock:
                    needed = self.engine.needs_ledger(entry, now_ms)
                if needed:
                    events.extend(self._look_at(entry, now_ms, gas))
        try:
            entries = self.book.entries()
        except sqlite3.Error:
            entries = []
        with self._lock:
            return Look(events, self.engine.wait(entries, now_ms, self.clock()))

    def _resolve(self, chosen: list[Opened], events: list[LookEvent]) -> list[Opened]:
        """Entries recorded before their connection's ID was known: found by their
        spending cap, or forgotten once a complete scan shows none. The entries with an ID."""
        scan = find_connections(self.ledger, client=self.identity.sui_address)
        by_cap = {
            normalize_id(r.connection.spending_cap, "spending cap ID"): r.connection.id
            for r in scan.reports
        }
        known: list[Opened] = []
        for entry in chosen:
            if entry.connection_id is not None:
                known.append(entry)
                continue
            found = by_cap.get(entry.cap_id or "")
            if found is not None:
                known.append(self.book.record(entry.cap_id, found))
            elif scan.complete:
                self.book.forget(entry)
                with self._lock:
                    self.engine.forget(entry)
                events.append(Forgotten(entry))
        return known

    def _look_at(self, entry: Opened, now_ms: int, gas: EndGas) -> list[RefundEvent]:
        """The engine's step for one connection, done."""
        cid = entry.connection_id
        assert cid is not None
        action = RefundAction.WAIT
        try:
            try:
                tc = self.ledger.get_connection(cid)
            except ObjectNotFound:
                tc = None
            with self._lock:
                step = self.engine.step(tc, now_ms, gas)
            if step.cost and tc is not None:
                balance = self.ledger.get_escrow(tc.escrow).balance
                step = worth_gas(step, balance)
            action = step.action
            if action is RefundAction.WAIT:
                if step.at_ms != entry.due_ms:
                    self.book.set_due(entry, step.at_ms)
                with self._lock:
                    self.engine.succeeded(entry)
                return []
            if action is RefundAction.HALF_CLOSE:
                return self._half_close(entry, cid)
            if action is RefundAction.SETTLE:
                assert tc is not None
                destroy = self._worth_deleting(tc)
                refunded, ours = _collect(self.ledger, self.identity, cid, destroy=destroy)
                event: RefundEvent = (
                    Settled(entry, refunded, destroy)
                    if ours
                    else FoundSettled(entry, refunded, self._delete(tc))
                )
            elif action is RefundAction.SKIP:
                assert tc is not None and step.balance is not None
                opened = tc.state == ConnectionState.OPEN
                event = Skipped(entry, step.balance, step.cost, opened)
            elif tc is None:
                event = Forgotten(entry)
            else:
                refunded_of = self._refunded_of(tc.escrow)  # (read before it is deleted)
                event = FoundSettled(entry, refunded_of, self._delete(tc))
            self._forget(entry)
        except ConnectionStateError as exc:
            return [self._refused(entry, action, exc)]
        except (DTPError, OSError, sqlite3.Error) as exc:
            return [self._failed(entry, action, exc)]
        except Exception as exc:  # (a fault, a ledger's surprise: with its traceback)
            return [self._failed(entry, action, exc, unexpected=True)]
        return [event]

    def _half_close(self, entry: Opened, cid: str) -> list[RefundEvent]:
        try:
            self.ledger.close_connection(self.identity, cid)
        except ConnectionStateError:
            closed = False  # (closed meanwhile, by the server: the next look goes on)
        else:
            closed = True
        tc = self.ledger.get_connection(cid)
        due = client_settles_at(tc)
        self.book.set_due(entry, due)
        with self._lock:
            self.engine.succeeded(entry)
        return [HalfClosed(entry, due)] if closed else []

    def _worth_deleting(self, tc: TransportControl) -> bool:
        """Whether the client deletes ``tc``'s objects once settled: its own, and their
        storage rebate worth the deleting transaction (the engine's rule). A ledger that
        cannot delete, or cannot say what a deletion gives back, leaves them."""
        if tc.client != normalize_id(self.identity.sui_address, "address"):
            return False
        if type(self.ledger).destroy_connection is Deletions.destroy_connection:
            return False  # (a ledger without deletions: its settle_and_destroy would fail)
        try:
            rebate = self.ledger.storage_rebate([tc.id, tc.escrow])
        except (NotImplementedError, ChainError, OSError):
            return False
        return worth_deleting(rebate, self.engine.weigh_gas)

    def _delete(self, tc: TransportControl) -> bool:
        """Delete a settled connection's objects when worth it (a sponsored one's with
        ``reimburse_and_destroy``); whether it was done (a failure leaves them: nothing
        is owed on them)."""
        if not self._worth_deleting(tc):
            return False
        try:
            if tc.sponsor is not None:
                # (its lane's pledge released first: a plain destroy is refused, and
                # would lock the pledge for good)
                self.ledger.reimburse_and_destroy(self.identity, tc.id, escrow_id=tc.escrow)
            else:
                self.ledger.destroy_connection(self.identity, tc.id, escrow_id=tc.escrow)
        except (NotImplementedError, ChainError, OSError):
            return False
        return True

    def _refunded_of(self, escrow_id: str) -> int | None:
        if not self.report_others:
            return None
        try:
            return self.ledger.get_escrow(escrow_id).refunded
        except ChainError:
            return None  # (not read: FoundSettled.refunded says so, not "0 refunded")

    def _forget(self, entry: Opened) -> None:
        self.book.forget(entry)
        with self._lock:
            self.engine.forget(entry)

    def _refused(
        self, entry: Opened, action: RefundAction, exc: ConnectionStateError
    ) -> StepFailed:
        if exc.name == "ETimeoutNotReached":
            # (the clock the transaction ran at was behind the one read): when, read
            # again from the ledger, not tried blindly again -- on Sui a refused
            # settlement costs gas too
            with contextlib.suppress(sqlite3.Error):
                self.book.set_due(entry, None)
            return self._failed(entry, action, exc, too_early=True)
        if exc.name in ("ENotParticipant", "EWrongEscrow"):
            with contextlib.suppress(sqlite3.Error):
                self._forget(entry)
            return StepFailed(entry, action, exc, dropped=True)
        return self._failed(entry, action, exc)

    def _failed(
        self,
        entry: Opened,
        action: RefundAction,
        exc: BaseException,
        *,
        unexpected: bool = False,
        too_early: bool = False,
    ) -> StepFailed:
        with self._lock:
            self.engine.failed(entry, self.clock())
        return StepFailed(entry, action, exc, unexpected=unexpected, too_early=too_early)


class OpenAttempt:
    """One open's ``on_open`` journal (:data:`dtp.hostid._connect.OpenJournal`, a synced
    write), and what it learnt (:attr:`spent`, the ID); in use until :meth:`release` or
    held (:meth:`hold`). ``unserved`` until :meth:`served`."""

    def __init__(self, refunder: Refunder, label: str = "", *, unserved: bool = False) -> None:
        self._refunder = refunder
        self.label = label
        self.unserved = unserved
        self.cap_id: str | None = None
        self.connection_id: str | None = None
        self._released = False

    @classmethod
    def of(cls, refunder: Refunder, entry: Opened) -> OpenAttempt:
        """The attempt of a connection the book holds (a previous try's, a previous
        run's): released, held or served as one just made."""
        attempt = cls(refunder, entry.label, unserved=entry.unserved)
        attempt.cap_id, attempt.connection_id = entry.cap_id, entry.connection_id
        return attempt

    def __call__(self, cap_id: str, connection_id: str | None) -> None:
        self.cap_id = cap_id
        if connection_id is not None:
            self.connection_id = connection_id
        # (an open given up by its caller may land later, in the background: its record
        # then leaves it to the looks, in use by nobody)
        self._refunder.record(
            cap_id,
            connection_id,
            self.label,
            in_use=not self._released,
            unserved=self.unserved,
        )

    @property
    def key(self) -> str | None:
        """The ID the book knows it by (its connection's, else its cap's; None: never
        recorded)."""
        return self.connection_id or self.cap_id

    def hold(self, seconds: float = math.inf) -> None:
        """In use for ``seconds`` more (inf: until released): its keeper holds on to
        it, and the looks take it once that has passed unless held again."""
        self._released = False
        if self.key is not None:
            self._refunder.hold(self.key, seconds)

    def served(self) -> None:
        """Its DTP connection was made: no longer unserved in the book (blocking: a
        synced write)."""
        if self.unserved and self.key is not None:
            self._refunder.served(self.key)
        self.unserved = False

    @property
    def spent(self) -> bool:
        """Whether the open may have put the deposit in escrow (its ID was told: a
        deferred open's before it executed)."""
        return self.connection_id is not None

    def release(self) -> None:
        """The connection is no longer used (or the open failed): the next look takes
        it."""
        self._released = True
        if self.key is not None:
            self._refunder.release(self.key)
