"""A client's deposits left in connections its server did not settle, taken back once
the half-close timeout has passed, with no command typed (docs/escrow.md §7.1).

Where the server does not settle (its fee below the gas, a crash, never reached), the
client half-closes, and once the half-close timeout has passed it alone may settle and
take the escrow's balance back (:func:`collect_refund`).

The decisions are :mod:`dtp.payments._refund_engine`'s, the connections waiting an
:class:`~dtp.payments._refund_book.OpenedBook` (SQLite, a file or memory), the ledger
calls a :class:`Refunder`'s; :class:`RefundCollector` (a thread) and the daemon's task
(:class:`dtp.daemon._refunds.Refunds`) drive them. A connection enters the book
half-closed (:meth:`RefundCollector.add`) or before its deposit can move
(:meth:`RefundCollector.record_open`, a connect's ``on_open``): with a book in a file,
a process killed with it open leaves it to the next. A refund smaller than its gas is
left on the ledger, logged for ``dtp refund``, unless ``weigh_gas`` is False.
"""

from __future__ import annotations

import atexit
import logging
import os
import shlex
import sqlite3
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Final

from dtp.errors import DTPError
from dtp.ledger._connections import format_duration
from dtp.ledger._objects import HALF_CLOSE_TIMEOUT_MS, normalize_id
from dtp.payments import _refund_engine as refund
from dtp.payments._refund_book import Opened, OpenedBook
from dtp.payments._refund_engine import RefundEngine
from dtp.payments._refunder import OpenAttempt, Refunder, collect_refund

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity
    from dtp.ledger.interface import Ledger

__all__ = [
    "GIVE_UP",
    "POLL",
    "RETRY",
    "RefundCollector",
    "collect_refund",
    "connection_ended",
    "refunds_for",
]

logger = logging.getLogger(__name__)

#: The longest wait between two looks at the ledger's clock (seconds): a ledger whose
#: clock jumps (LocalLedger's, moved by hand) is noticed within it.
POLL: Final = 30.0
#: Seconds before a settlement that failed is tried again.
RETRY: Final = 30.0
#: Seconds the ledger may stay unreadable (an outage, a ledger object closed) before a
#: collector gives its refunds up to ``dtp refund`` (logged one by one; a book in a
#: file keeps them for the next start).
GIVE_UP: Final = 3600


# -- the SDK's driver: a thread --------------------------------------------------------------


class RefundCollector:
    """Takes ``identity``'s deposits back from ``ledger`` once each connection's timeout
    has passed, in a thread of its own (see the module docs). ``path``: the book's file
    (SQLite; an earlier collector's JSON file is taken up), so that a restarted process
    takes up what waits (:meth:`start`); without one the book lives as long as the
    collector, and what still waits when it closes, or the process exits, is logged with
    the ``dtp refund`` command that takes it back.

    The thread looks every :data:`POLL` seconds at most (at once on an add or a
    release), retries after :data:`RETRY`, gives up after :data:`GIVE_UP` of an
    unreadable ledger, and ends once nothing waits. Thread-safe; :meth:`close` stops it."""

    def __init__(
        self,
        ledger: Ledger,
        identity: HostIdentity,
        path: str | Path | None = None,
        *,
        weigh_gas: bool = True,
        on_refund: Callable[[str, int], None] | None = None,
    ) -> None:
        """``on_refund(connection_id, mist)`` is called (in the collector's thread) for
        each connection settled, or found settled, with what it refunded."""
        self.ledger = ledger
        self.identity = identity
        self.path = None if path is None else Path(path)
        self.weigh_gas = weigh_gas
        self.on_refund = on_refund
        self.book = OpenedBook(self.path)
        engine = RefundEngine(interval=POLL, retry=RETRY, give_up=GIVE_UP, weigh_gas=weigh_gas)
        self._refunder = Refunder(
            ledger, identity, self.book, engine, report_others=True, wake=self._wake
        )
        self._cond = threading.Condition(threading.Lock())
        self._poked = False
        self._thread: threading.Thread | None = None
        self._closed = False
        self._left: list[Opened] = []  # (what waited when it closed)
        #: The refunds taken: (connection ID, MIST)
        self.refunded: list[tuple[str, int]] = []

    # -- what waits ------------------------------------------------------------------------

    def add(self, connection_id: str, settles_at_ms: int | None = None) -> None:
        """Take ``connection_id``'s deposit back once its client may settle it
        (``settles_at_ms``, ledger time; None: read from the ledger), starting the
        thread. A connection already recorded (:meth:`record_open`) is released."""
        key = normalize_id(connection_id, "connection ID")
        with self._cond:
            if self._closed:
                raise RuntimeError("the refund collector is closed")
        try:
            self._refunder.record(None, key, in_use=False, due_ms=settles_at_ms)
        except sqlite3.Error as exc:
            logger.warning(
                "cannot write connection %s to the refunds waiting in %s: %s (`dtp refund "
                "%s --wait` takes it back)",
                key,
                self.path or "memory",
                exc,
                key,
            )
            return
        self.start()

    def record_open(self, cap_id: str, connection_id: str | None) -> None:
        """An ``on_open`` journal for connects: ``cap_id``'s connection written to the
        book before its deposit can move, in use until released (:func:`connection_ended`,
        :meth:`release`; by its cap alone, for :data:`~dtp.payments._refund_engine.OPEN_LEASE`).
        Raises what the book raises (no open then), RuntimeError once closed."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the refund collector is closed")
        self._refunder.record(cap_id, connection_id)

    def attempt(self, label: str = "") -> OpenAttempt:
        """The journal of one open, which tells what it spent and releases its
        connection itself (:meth:`OpenAttempt.release`)."""
        return OpenAttempt(self._refunder, label)

    def release(self, some_id: str) -> bool:
        """The connection of this spending cap or connection ID is no longer used: it
        is taken from now on (half-closed if still Open). Whether the book holds it."""
        if self._closed:
            return False
        try:
            known = self._refunder.release(some_id)
        except sqlite3.Error as exc:
            logger.warning("cannot read the refunds waiting in %s: %s", self.path or "memory", exc)
            return False
        if known:
            self.start()
        return known

    def _entries(self) -> list[Opened]:
        if self._closed:
            return list(self._left)
        try:
            return self.book.entries()
        except sqlite3.Error:
            return list(self._left)

    def pending(self) -> dict[str, int | None]:
        """The connections waiting, by ID, with the ledger time from which each is due
        (None: not read yet). Those recorded by their spending cap alone are not in it
        until their ID is known."""
        return {e.connection_id: e.due_ms for e in self._entries() if e.connection_id}

    def __len__(self) -> int:
        return len(self._entries())

    def __contains__(self, some_id: object) -> bool:
        if not isinstance(some_id, str):
            return False
        key = normalize_id(some_id, "object ID")
        return any(key in e.ids for e in self._entries())

    # -- the looks -------------------------------------------------------------------------

    def run_due(self) -> list[tuple[str, int]]:
        """One look (blocking): settle every connection due now by the ledger's clock;
        what was refunded. Failures are logged and tried again after :data:`RETRY`."""
        return self._report(self._refunder.look().events)

    def _report(self, events: Iterable[refund.LookEvent]) -> list[tuple[str, int]]:
        done: list[tuple[str, int]] = []
        for event in events:
            if isinstance(event, refund.Settled | refund.FoundSettled):
                refunded = event.refunded or 0
                done.append((event.entry.name, refunded))
                self._done(event.entry.name, refunded, event)
            else:
                _log(event)
        return done

    def _done(self, cid: str, refunded: int, event: refund.Settled | refund.FoundSettled) -> None:
        self.refunded.append((cid, refunded))
        if isinstance(event, refund.Settled):
            logger.info("connection %s settled by its client: %d MIST refunded", cid, refunded)
        elif event.refunded is None:
            logger.info("connection %s found settled (what it refunded could not be read)", cid)
        else:
            logger.info("connection %s found settled: %d MIST refunded", cid, refunded)
        if self.on_refund is not None:
            try:
                self.on_refund(cid, refunded)
            except Exception:
                logger.exception("a refund's callback failed")

    def start(self) -> None:
        """Start the thread, unless it runs or nothing waits (:meth:`add` does; at a
        start with a book in a file, this takes up what a previous run left)."""
        with self._cond:
            if self._thread is not None or self._closed:
                return
        if not self._has_work():
            return
        with self._cond:
            if self._thread is not None or self._closed:
                return
            thread = self._thread = threading.Thread(
                target=self._run, name="dtp-refunds", daemon=True
            )
            _active(self)
        thread.start()

    def _has_work(self) -> bool:
        try:
            return self._refunder.has_work()
        except sqlite3.Error:
            return False

    def _wake(self) -> None:
        """A connection was released (any thread): the thread looks at once, started
        if it does not run."""
        with self._cond:
            self._poked = True
            self._cond.notify_all()
            running = self._thread is not None or self._closed
        if not running:
            self.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._poked = False
            gave_up = False
            try:
                look = self._refunder.look()
                self._report(look.events)
                gave_up = any(isinstance(e, refund.LookFailed) and e.gave_up for e in look.events)
                wait = look.wait
            except Exception:
                logger.exception("the refund collector's look failed")
                wait = POLL
            if gave_up:
                logger.warning(
                    "the ledger could not be read for %d minutes: the refunds waiting are "
                    "given up to `dtp refund`",
                    GIVE_UP // 60,
                )
                _log_waiting(self._entries(), self.ledger)
                self.close(timeout=0, log_waiting=False)
            with self._cond:
                if not self._closed and not self._poked:
                    self._cond.wait_for(lambda: self._closed or self._poked, wait)
                closed = self._closed
            if closed or not self._has_work():
                with self._cond:
                    if not self._closed and self._poked:
                        continue  # (work came as we looked: on)
                    self._thread = None
                    if self._closed:
                        self.book.close()
                _idle(self)
                return

    def close(self, timeout: float | None = 5.0, *, log_waiting: bool = True) -> None:
        """Stop the thread (the ledger call under way ends first, waited for ``timeout``
        seconds). What still waits stays in ``path``; without one it is logged with
        its command, unless not ``log_waiting``."""
        with self._cond:
            if self._closed:
                return
            self._left = self._entries()
            self._closed = True
            self._refunder.stop()
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if self.path is None and log_waiting:
            _log_waiting(self._left, self.ledger)
        with self._cond:
            if self._thread is None:
                self.book.close()  # (else the thread does, as it ends)
        _idle(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> RefundCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _log(event: refund.LookEvent) -> None:
    """The SDK's log line of a look's event (those of refunds: the collector's)."""
    if isinstance(event, refund.LookFailed):
        if event.first:
            logger.info("cannot read the ledger for the refunds waiting: %s", event.error)
    elif isinstance(event, refund.LookRecovered):
        logger.info("the ledger can be read again for the refunds waiting")
    elif isinstance(event, refund.HalfClosed):
        logger.info("connection %s half-closed by its client", event.entry.name)
    elif isinstance(event, refund.Skipped):
        cid = event.entry.name
        logger.info(
            "connection %s: the %d MIST left in its escrow is less than the %d MIST of gas "
            "taking it back costs; left on the ledger (dtp refund %s takes it back)",
            cid,
            event.balance,
            event.cost,
            cid,
        )
    elif isinstance(event, refund.Forgotten):
        logger.debug("connection %s is not on the ledger: forgotten", event.entry.name)
    elif isinstance(event, refund.StepFailed):
        cid = event.entry.name
        if event.dropped:
            logger.warning("connection %s cannot be settled by this client: %s", cid, event.error)
        elif event.unexpected:
            logger.error(
                "taking back the deposit of connection %s failed",
                cid,
                exc_info=(type(event.error), event.error, event.error.__traceback__),
            )
        elif not event.too_early:
            logger.info(
                "taking back the deposit of connection %s failed (tried again): %s",
                cid,
                event.error,
            )


def _log_waiting(entries: Iterable[Opened], ledger: Ledger) -> None:
    # a LocalLedger file is named in the command: `dtp refund` alone looks in the
    # default file, where a program's own ledger (LocalLedger("localnet.sqlite")) is not
    path = getattr(ledger, "path", None)
    where = ""
    if isinstance(path, str) and path != ":memory:":
        where = " --ledger " + shlex.quote(f"local:{os.path.abspath(path)}")  # (a space)
    for entry in entries:
        logger.warning(
            "the deposit of connection %s is still in its escrow: `dtp refund %s --wait%s` "
            "with the client's identity file (--identity) takes it back (once the "
            "connection's half-close timeout has passed since its half-close: %s unless "
            "its service set a longer one)",
            entry.name,
            entry.name,
            where,
            format_duration(HALF_CLOSE_TIMEOUT_MS),
        )


# -- the process's collectors -----------------------------------------------------------------

_collectors: dict[tuple[int, str], RefundCollector] = {}
_running: set[RefundCollector] = set()
_collectors_lock = threading.Lock()


def refunds_for(
    ledger: Ledger, identity: HostIdentity, path: str | Path | None = None
) -> RefundCollector:
    """The process's :class:`RefundCollector` of ``identity``'s connections on
    ``ledger`` (one per ledger object and address), which a connection's end hands its
    refund to (:func:`connection_ended`). ``path``: its book's file, fixed by the first
    call (a later one naming another raises ValueError)."""
    key = (id(ledger), identity.sui_address)
    want = None if path is None else Path(path)
    made = False
    with _collectors_lock:
        collector = _collectors.get(key)
        if collector is None or collector.ledger is not ledger or collector.closed:
            collector = RefundCollector(ledger, identity, want)
            _collectors[key] = collector
            made = True
        elif want is not None and collector.path != want:
            raise ValueError(
                f"the process's refund collector of {identity.sui_address} on this ledger "
                f"keeps its book in {collector.path or 'memory'}, not {want}"
            )
    if made and want is not None:
        collector.start()
    return collector


def _collector_of(ledger: Ledger, identity: HostIdentity) -> RefundCollector | None:
    with _collectors_lock:
        collector = _collectors.get((id(ledger), identity.sui_address))
    if collector is None or collector.ledger is not ledger or collector.closed:
        return None
    return collector


def connection_ended(
    ledger: Ledger, identity: HostIdentity, connection_id: str, *, half_closed: bool
) -> None:
    """A connection ended or its connect failed: the process's collector takes its
    refund when ``half_closed`` or when it holds it. Never raises (logged)."""
    try:
        if half_closed:
            refunds_for(ledger, identity).add(connection_id)
            return
        collector = _collector_of(ledger, identity)
        if collector is not None:
            collector.release(connection_id)
    except (RuntimeError, DTPError) as exc:  # (a collector closed by its owner)
        logger.warning("connection %s: its refund is not collected: %s", connection_id, exc)


def _active(collector: RefundCollector) -> None:
    with _collectors_lock:
        _running.add(collector)


def _idle(collector: RefundCollector) -> None:
    """``collector``'s thread ends (nothing waits, or it was closed): a closed one, or
    one with an empty book in memory, no longer holds its ledger for the process (a
    later :func:`refunds_for` makes another)."""
    empty = collector.closed or (collector.path is None and len(collector) == 0)
    with _collectors_lock:
        _running.discard(collector)
        if empty:
            for key, known in list(_collectors.items()):
                if known is collector:
                    del _collectors[key]


@atexit.register
def _at_exit() -> None:
    with _collectors_lock:
        collectors = list(_running | set(_collectors.values()))
    for collector in collectors:
        if collector.path is None and not collector.closed:
            _log_waiting(collector._entries(), collector.ledger)
