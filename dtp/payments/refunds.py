"""A client's deposits left in connections its server did not settle, taken back once
the half-close timeout has passed, with no command typed (docs/escrow.md §7.1).

A server settles a connection as it ends, refunding the client at once -- unless its
fee does not cover the gas of that settlement (:mod:`dtp.payments.ends`), or the server
crashed. Then the client half-closes the connection on the ledger
(:meth:`~dtp.payments.settlement.ClientPayment.finish`), which starts the half-close
timeout (10 minutes), after which the client alone may settle it and take back the
escrow's whole balance, the unclaimed fee with it (:func:`collect_refund`, also
``dtp.payments.settlement.collect_refund``).

:class:`RefundCollector` does that settlement when it falls due: ``add`` a half-closed
connection (an Open one is half-closed first), and a thread of its own settles it once
the ledger's clock has passed its timeout (it looks at the clock at most every
:data:`POLL` seconds, and at once when a connection is added), trying again after
:data:`RETRY` seconds when the ledger refuses or cannot be reached. A refund smaller
than the gas of taking it back is not worth a transaction: it is dropped with a line in
the log (``dtp refund`` takes it back by hand), unless ``weigh_gas`` is False. With a
``path``, the connections waiting are kept in that file (JSON, replaced atomically), so
that a restarted process takes them up again; without one they live as long as the
process, and any still waiting when it exits are logged with the ``dtp refund``
command that takes them back.

:func:`refunds_for` gives the process's collector of one ledger object and client
identity: the one a metered client connection uses (started on first use).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final

from dtp.errors import ChainError, ConnectionStateError, DTPError
from dtp.identity.files import write_durably
from dtp.ledger.connections import client_settles_at
from dtp.ledger.objects import HALF_CLOSE_TIMEOUT_MS, ConnectionState, normalize_id

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity
    from dtp.ledger.interface import Ledger
    from dtp.ledger.objects import TransportControl

__all__ = ["GIVE_UP", "POLL", "RETRY", "RefundCollector", "collect_refund", "refunds_for"]

logger = logging.getLogger(__name__)

#: The longest wait between two looks at the ledger's clock (seconds): a ledger whose
#: clock jumps (LocalLedger's, moved by hand) is noticed within it.
POLL: Final = 30.0
#: Seconds before a settlement that failed is tried again.
RETRY: Final = 30.0
#: Milliseconds past the timeout before the settlement is sent: the ledger's clock
#: must have passed it where the transaction executes too.
_MARGIN_MS: Final = 1000
#: Seconds the ledger may stay unreadable (an outage, a ledger object closed) before a
#: collector gives its refunds up to ``dtp refund``, logged one by one.
GIVE_UP: Final = 3600


def collect_refund(ledger: Ledger, identity: HostIdentity, connection_id: str) -> int:
    """The client's refund of a connection, in MIST.

    When the connection is already settled (the server settled it, the usual case),
    returns what that settlement refunded. Otherwise half-closes it if still Open and
    settles; that succeeds only once the half-close timeout has passed
    (``ConnectionStateError`` ``ETimeoutNotReached`` before), which leaves the server
    that long to claim its last receipt.
    """
    tc = ledger.get_connection(connection_id)
    if tc.settled:
        return ledger.get_escrow(tc.escrow).refunded
    try:
        if tc.state == ConnectionState.OPEN:
            ledger.close_connection(identity, connection_id)
        return ledger.settle(identity, connection_id).refunded
    except ConnectionStateError:
        # The server may settle between our read and our transaction (it does so as the
        # connection ends): the close then fails as EConnectionClosed and the settle as
        # EAlreadySettled, though the refund we came for has been paid. Report it, as
        # when we read the connection settled; anything else (the timeout not reached)
        # stands.
        tc = ledger.get_connection(connection_id)
        if tc.settled:
            return ledger.get_escrow(tc.escrow).refunded
        raise


class RefundCollector:
    """Settles ``identity``'s half-closed connections on ``ledger`` once their timeout has
    passed (see the module docs). Thread-safe; :meth:`close` (or ``with``) stops its
    thread."""

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
        self._cond = threading.Condition(threading.Lock())
        #: connection ID -> ledger time (ms) from which its client may settle (None:
        #: not known yet, read from the ledger); and when (monotonic) to look again
        self._waiting: dict[str, int | None] = {}
        self._retry_at: dict[str, float] = {}
        self._thread: threading.Thread | None = None
        self._closed = False
        #: Since when (monotonic) the ledger's clock could not be read (None: it can)
        self._unreadable_since: float | None = None
        #: The refunds taken: (connection ID, MIST)
        self.refunded: list[tuple[str, int]] = []
        if self.path is not None:
            self._waiting.update(_read(self.path))

    # -- what waits ------------------------------------------------------------------------

    def add(self, connection_id: str, settles_at_ms: int | None = None) -> None:
        """Take ``connection_id``'s deposit back once its client may settle it
        (``settles_at_ms``, ledger time; None: read from the ledger), starting the
        thread on first use."""
        key = normalize_id(connection_id, "connection ID")
        with self._cond:
            if self._closed:
                raise RuntimeError("the refund collector is closed")
            self._waiting[key] = settles_at_ms
            self._retry_at.pop(key, None)
            self._save()
            self._cond.notify_all()
        self.start()

    def pending(self) -> dict[str, int | None]:
        """The connections waiting, with the ledger time from which each is due."""
        with self._cond:
            return dict(self._waiting)

    def __len__(self) -> int:
        with self._cond:
            return len(self._waiting)

    def __contains__(self, connection_id: object) -> bool:
        if not isinstance(connection_id, str):
            return False
        with self._cond:
            return normalize_id(connection_id, "connection ID") in self._waiting

    def _drop(self, key: str) -> None:
        with self._cond:
            self._waiting.pop(key, None)
            self._retry_at.pop(key, None)
            self._save()

    def _save(self) -> None:
        if self.path is None:
            return
        try:
            write_durably(self.path, json.dumps(self._waiting, sort_keys=True).encode())
        except OSError as exc:
            logger.warning("cannot write the refunds waiting to %s: %s", self.path, exc)

    # -- settling --------------------------------------------------------------------------

    def run_due(self) -> list[tuple[str, int]]:
        """One pass (blocking): settle every connection due now by the ledger's clock;
        what was refunded. Failures are logged and tried again after :data:`RETRY`."""
        with self._cond:
            waiting = dict(self._waiting)
            retry_at = dict(self._retry_at)
        if not waiting:
            return []
        mono = time.monotonic()
        try:
            now = self.ledger.clock_ms()
        except ChainError as exc:
            with self._cond:
                if self._unreadable_since is None:
                    self._unreadable_since = mono
                    logger.info("cannot read the ledger's clock for the refunds waiting: %s", exc)
            return []
        with self._cond:
            self._unreadable_since = None
        done: list[tuple[str, int]] = []
        for key, at in waiting.items():
            if retry_at.get(key, 0.0) > mono:
                continue
            if at is None:
                at = self._settles_at(key)
                if at is None:
                    continue
            if now < at + _MARGIN_MS:
                continue
            refunded = self._settle(key)
            if refunded is not None:
                done.append((key, refunded))
        return done

    def _settles_at(self, key: str) -> int | None:
        """When ``key``'s client may settle, by the ledger's clock (None: dropped, or to
        look again later). A connection still Open is half-closed first (its timeout
        starts then), unless what it would give back is not worth the gas."""
        try:
            tc = self.ledger.get_connection(key)
            if tc.settled:
                self._done(key, self._refunded_of(key, tc.escrow))
                return None
            if tc.state == ConnectionState.OPEN:
                if self.weigh_gas and not self._worth_it(key, tc, opened=True):
                    return None
                with contextlib.suppress(ConnectionStateError):  # (its server closed it)
                    self.ledger.close_connection(self.identity, key)
                tc = self.ledger.get_connection(key)
        except ChainError as exc:
            self._failed(key, exc)
            return None
        at = client_settles_at(tc)
        if at is None:  # (settled meanwhile: collect_refund reports it)
            at = 0
        with self._cond:
            if key in self._waiting:
                self._waiting[key] = at
                self._save()
        return at

    def _refunded_of(self, key: str, escrow_id: str) -> int:
        try:
            return self.ledger.get_escrow(escrow_id).refunded
        except ChainError:
            return 0

    def _settle(self, key: str) -> int | None:
        try:
            if self.weigh_gas and not self._worth_it(key):
                return None
            refunded = collect_refund(self.ledger, self.identity, key)
        except ConnectionStateError as exc:
            if exc.name == "ETimeoutNotReached":
                # (the clock the transaction ran at was behind the one read): when,
                # read again from the ledger, not tried blindly again -- on Sui a
                # refused settlement costs gas too
                with self._cond:
                    if key in self._waiting:
                        self._waiting[key] = None
                self._retry_later(key)
                return None
            self._failed(key, exc)
            return None
        except DTPError as exc:
            self._failed(key, exc)
            return None
        except Exception:  # (a bug, a ledger's surprise: with its traceback)
            logger.exception("taking back the deposit of connection %s failed", key)
            self._retry_later(key)
            return None
        self._done(key, refunded)
        return refunded

    def _worth_it(
        self, key: str, tc: TransportControl | None = None, *, opened: bool = False
    ) -> bool:
        """Whether what settling ``key`` gives back covers its gas -- and that of its
        half-close first, when ``opened`` (dropped, and logged, if not)."""
        gas = self.ledger.end_gas()
        if not gas.charged:
            return True
        tc = tc or self.ledger.get_connection(key)
        if tc.settled:
            return True  # (collect_refund reports what its settlement refunded)
        balance = self.ledger.get_escrow(tc.escrow).balance
        cost = gas.client_refund if opened else gas.settle_refund
        if balance >= cost:
            return True
        logger.info(
            "connection %s: the %d MIST left in its escrow is less than the %d MIST of gas "
            "taking it back costs; left on the ledger (dtp refund %s takes it back)",
            key,
            balance,
            cost,
            key,
        )
        self._drop(key)
        return False

    def _done(self, key: str, refunded: int) -> None:
        self._drop(key)
        self.refunded.append((key, refunded))
        logger.info("connection %s settled by its client: %d MIST refunded", key, refunded)
        if self.on_refund is not None:
            try:
                self.on_refund(key, refunded)
            except Exception:
                logger.exception("a refund's callback failed")

    def _retry_later(self, key: str) -> None:
        with self._cond:
            self._retry_at[key] = time.monotonic() + RETRY

    def _failed(self, key: str, exc: BaseException) -> None:
        if isinstance(exc, ConnectionStateError) and exc.name in (
            "ENotParticipant",
            "EWrongEscrow",
        ):
            logger.warning("connection %s cannot be settled by this client: %s", key, exc)
            self._drop(key)
            return
        logger.info("taking back the deposit of connection %s failed (tried again): %s", key, exc)
        self._retry_later(key)

    # -- the thread ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the thread, unless it runs (:meth:`add` does; it ends once nothing
        waits)."""
        with self._cond:
            if self._thread is not None or self._closed or not self._waiting:
                return
            thread = self._thread = threading.Thread(
                target=self._run, name="dtp-refunds", daemon=True
            )
            _active(self)
        thread.start()

    def _wait(self) -> float:
        """Seconds until the next look: at most :data:`POLL`, sooner when the earliest
        connection falls due sooner by the ledger's time (as told by this host's)."""
        with self._cond:
            known = [at for at in self._waiting.values() if at is not None]
            unknown = any(at is None for at in self._waiting.values())
            retry = min(self._retry_at.values(), default=None)
        if not known and not unknown:
            return POLL if retry is None else max(0.05, min(POLL, retry - time.monotonic()))
        if unknown:
            return 0.05
        try:
            now = self.ledger.clock_ms()
        except ChainError:
            return POLL
        wait = (min(known) + _MARGIN_MS - now) / 1000
        if retry is not None:
            wait = max(wait, retry - time.monotonic())
        return max(0.05, min(POLL, wait))

    def _run(self) -> None:
        while True:
            try:
                self.run_due()
                wait = self._wait()
            except Exception:
                logger.exception("the refund collector's round failed")
                wait = POLL
            with self._cond:
                unreadable = self._unreadable_since
                if (
                    not self._closed
                    and unreadable is not None
                    and time.monotonic() - unreadable > GIVE_UP
                ):
                    self._closed = True
                    logger.warning(
                        "the ledger could not be read for %d minutes: the refunds "
                        "waiting are given up to `dtp refund`",
                        GIVE_UP // 60,
                    )
                    self._log_waiting_locked()
                if self._closed or not self._waiting:
                    # (nothing to wait for: the thread ends, and add() starts another)
                    self._thread = None
                    _idle(self)
                    return
                self._cond.wait(wait)

    def close(self, timeout: float | None = 5.0) -> None:
        """Stop the thread (a settlement under way ends first, waited for ``timeout``
        seconds). What still waits stays in ``path``, or is logged without one."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        if self.path is None:
            self._log_waiting()

    def _log_waiting(self) -> None:
        with self._cond:
            self._log_waiting_locked()

    def _log_waiting_locked(self) -> None:
        for key in self._waiting:
            logger.warning(
                "the deposit of connection %s is still in its escrow: `dtp refund %s --wait` "
                "takes it back (%d minutes after its half-close)",
                key,
                key,
                HALF_CLOSE_TIMEOUT_MS // 60_000,
            )

    def __enter__(self) -> RefundCollector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _read(path: Path) -> dict[str, int | None]:
    """The connections a previous run left waiting in ``path`` (nothing when there is no
    file; a damaged one is logged and ignored)."""
    try:
        data = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.warning("cannot read the refunds waiting in %s: %s", path, exc)
        return {}
    waiting: dict[str, int | None] = {}
    if isinstance(data, dict):
        for key, at in data.items():
            try:
                cid = normalize_id(key, "connection ID")
            except DTPError:
                continue
            waiting[cid] = at if isinstance(at, int) and not isinstance(at, bool) else None
    return waiting


_collectors: dict[tuple[int, str], RefundCollector] = {}
_running: set[RefundCollector] = set()
_collectors_lock = threading.Lock()


def refunds_for(ledger: Ledger, identity: HostIdentity) -> RefundCollector:
    """The process's :class:`RefundCollector` of ``identity``'s connections on ``ledger``
    (one per ledger object and address while it has connections waiting; its thread
    runs while they do, and whatever still waits at exit is logged)."""
    key = (id(ledger), identity.sui_address)
    with _collectors_lock:
        collector = _collectors.get(key)
        if collector is None or collector.ledger is not ledger or collector._closed:
            collector = RefundCollector(ledger, identity)
            _collectors[key] = collector
        return collector


def _active(collector: RefundCollector) -> None:
    with _collectors_lock:
        _running.add(collector)


def _idle(collector: RefundCollector) -> None:
    """``collector``'s thread ends (nothing waits, or it was closed): it no longer holds
    its ledger for the process (a later :func:`refunds_for` makes another)."""
    with _collectors_lock:
        _running.discard(collector)
        for key, known in list(_collectors.items()):
            if known is collector:
                del _collectors[key]


@atexit.register
def _at_exit() -> None:
    with _collectors_lock:
        collectors = list(_running)
    for collector in collectors:
        if collector.path is None:
            collector._log_waiting()
