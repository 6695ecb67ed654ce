"""The forwarders' own ledger connections, until each is settled: a durable book of
every connection a forwarder opens (``<state_dir>/connections.sqlite``), and the
daemon's task that gets their deposits back (docs/daemon.md, "Tunnels").

A connection ends on the provider's settlement as a rule: the provider claims its
receipts and refunds the rest when the DTP connection ends. Where it does not -- the
provider down, killed, or never reached (an open whose connect then failed) -- the
deposit would stay in escrow for good: only the client may settle then, once the
half-close timeout (``HALF_CLOSE_TIMEOUT_MS``, 10 min) has passed since the first
close, and nobody did. So each connection is written to the book before its deposit
can move (``on_open`` of :func:`dtp.hostid.connect.prepare_host_connection`: the
spending cap first, the connection ID as soon as the ledger tells it), and once no link
uses it, :class:`Refunds` looks at it on the ledger every ``refund_interval`` seconds
(and when a link ends): Open, it is half-closed; half-closed past the timeout, the
forwarder settles it (the whole escrow back, less what the provider claimed in time);
settled, by anyone, it leaves the book. The book survives restarts: a start settles
what a previous run left, without any command.

The decisions are sans I/O (:func:`refund_step`, :func:`next_look`: the ledger's clock
is passed in); :class:`OpenedBook` is the SQLite file, :class:`Refunds` the task.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dtp.daemon.config import REFUND_INTERVAL
from dtp.daemon.gas import GasWatch
from dtp.daemon.logs import kv
from dtp.daemon.state import CONNECTIONS_FILE
from dtp.errors import ChainError, ConnectionStateError, ObjectNotFound, ReceiptStoreError
from dtp.identity.keys import HostIdentity
from dtp.ledger.connections import client_settles_at, find_connections
from dtp.ledger.interface import Ledger
from dtp.ledger.objects import ConnectionState, TransportControl, normalize_id
from dtp.payments.settlement import collect_refund

__all__ = [
    "CONNECTIONS_FILE",
    "REFUND_INTERVAL",
    "OpenAttempt",
    "Opened",
    "OpenedBook",
    "RefundAction",
    "RefundStep",
    "Refunds",
    "next_look",
    "refund_step",
]

logger = logging.getLogger("dtp.daemon.refunds")

LOOK_SOON = 0.05
"""The least wait between two looks (seconds): a deadline just passed is looked at
after it, not in a tight loop."""


# -- the decisions, sans I/O -------------------------------------------------------------------


class RefundAction(enum.Enum):
    """What to do with a connection of the book that no link uses."""

    WAIT = "wait"
    """Nothing yet: the half-close timeout has not passed (:attr:`RefundStep.at_ms`)."""
    HALF_CLOSE = "half-close"
    """Still Open: half-close it, which starts the timeout (the provider settles it
    meanwhile as a rule)."""
    SETTLE = "settle"
    """Closed or half-closed, and the timeout has passed: the client may settle it
    alone, and takes the escrow's balance back."""
    FORGET = "forget"
    """Settled (by the provider, or by us), or not on the ledger (an open that never
    landed): nothing left to do."""


@dataclass(frozen=True)
class RefundStep:
    """:func:`refund_step`'s verdict."""

    action: RefundAction
    at_ms: int | None = None
    """WAIT: the ledger time from which the client may settle."""


def refund_step(connection: TransportControl | None, now_ms: int) -> RefundStep:
    """What to do with a connection of ours that no link uses (None: not on the
    ledger), the ledger's clock at ``now_ms``: the Move package's rule
    (``transport_control::settle``: the client settles only once
    ``HALF_CLOSE_TIMEOUT_MS`` has passed since the first close)."""
    if connection is None or connection.settled:
        return RefundStep(RefundAction.FORGET)
    if connection.state == ConnectionState.OPEN:
        return RefundStep(RefundAction.HALF_CLOSE)
    at = client_settles_at(connection)
    if at is None:  # (closed with no time: not a state the ledger leaves)
        return RefundStep(RefundAction.SETTLE)
    if now_ms >= at:
        return RefundStep(RefundAction.SETTLE)
    return RefundStep(RefundAction.WAIT, at)


def next_look(deadlines: Iterable[int], now_ms: int, interval: float) -> float:
    """Seconds until the next look: ``interval``, or sooner when a connection's timeout
    ends before (``deadlines``, ledger times), but at least :data:`LOOK_SOON`. The
    ledger's clock need not run with ours (a test's stand-in moves it in jumps): the
    interval bounds how late a jump is seen."""
    wait = interval
    for at in deadlines:
        wait = min(wait, (at - now_ms) / 1000)
    return max(wait, LOOK_SOON)


# -- the book ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Opened:
    """One connection of the book."""

    cap_id: str
    """The spending cap made for it (one per connection): known before the open."""
    connection_id: str | None
    """None until the ledger told it (an open recorded before it landed)."""
    forward: str
    """The forward that opened it (for the logs)."""
    recorded_at: float
    """When it was first recorded (Unix time)."""


_SCHEMA = """
CREATE TABLE IF NOT EXISTS opened (
    cap_id TEXT PRIMARY KEY,
    connection_id TEXT,
    forward TEXT NOT NULL,
    recorded_at REAL NOT NULL
)
"""


class OpenedBook:
    """``<state_dir>/connections.sqlite``: the connections the forwarders opened and that
    are not known settled, each written (synced) before its deposit can move. The file
    is made by the first record (a daemon that never opened a connection has none).
    Thread-safe (the opens record from worker threads); the file's failures are
    :class:`sqlite3.Error`, raised to the caller."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._closed = False
        if path.exists():
            with self._lock:
                self._open()

    def _open(self) -> sqlite3.Connection:
        """The file, opened (made) now if it was not (lock held)."""
        if self._closed:
            raise sqlite3.ProgrammingError(f"{self.path} is closed")
        if self._db is None:
            db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            try:
                db.execute("PRAGMA synchronous = FULL")  # written means on disk
                db.execute(_SCHEMA)
            except sqlite3.Error:
                db.close()
                raise
            self._db = db
        return self._db

    def record(self, forward: str, cap_id: str, connection_id: str | None) -> None:
        """Write ``cap_id``'s connection (its ID once known: an ID already there stays)."""
        with self._lock:
            self._open().execute(
                "INSERT INTO opened (cap_id, connection_id, forward, recorded_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (cap_id) DO UPDATE SET "
                "connection_id = COALESCE(excluded.connection_id, opened.connection_id)",
                (cap_id, connection_id, forward, time.time()),
            )

    def forget(self, cap_id: str) -> None:
        with self._lock:
            if self._db is not None:
                self._db.execute("DELETE FROM opened WHERE cap_id = ?", (cap_id,))

    def entries(self) -> list[Opened]:
        """Every connection of the book, oldest first."""
        with self._lock:
            if self._db is None:
                return []
            rows = self._db.execute(
                "SELECT cap_id, connection_id, forward, recorded_at FROM opened "
                "ORDER BY recorded_at, cap_id"
            ).fetchall()
        return [Opened(str(r[0]), r[1], str(r[2]), float(r[3])) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._db is not None:
                self._db.close()
                self._db = None


# -- the task ----------------------------------------------------------------------------------


class OpenAttempt:
    """One open of a forward, as the book sees it: the ``on_open`` journal the open is
    given (:data:`dtp.hostid.connect.OpenJournal`; called in a worker thread), and
    what it learnt -- whether money moved (:attr:`spent`), the connection's ID. Its
    connection is in use until :meth:`Refunds.release` (by its link, once it ended;
    by the forwarder at once when the open failed)."""

    def __init__(self, refunds: Refunds, forward: str) -> None:
        self._refunds = refunds
        self.forward = forward
        self.cap_id: str | None = None
        self.connection_id: str | None = None
        self._released = False

    def __call__(self, cap_id: str, connection_id: str | None) -> None:
        self.cap_id = cap_id
        if connection_id is not None:
            self.connection_id = connection_id
        # (an open given up by its caller may land later, in the background: its record
        # then leaves it to the book's looks, in use by nobody)
        self._refunds.record(self.forward, cap_id, connection_id, in_use=not self._released)

    @property
    def spent(self) -> bool:
        """Whether the open may have put the deposit in escrow (its ID was told: a
        deferred open's before it executed)."""
        return self.connection_id is not None

    def release(self) -> None:
        """The connection is no longer used (or the open failed): the book's look at it
        is due."""
        self._released = True
        if self.cap_id is not None:
            self._refunds.release(self.cap_id)


class Refunds:
    """The daemon's settlements of its forwarders' connections (see the module's
    docstring). :meth:`attempt` gives each open its journal; :meth:`run` is the task,
    which looks at the book at once (a previous run's connections) and then every
    ``interval`` seconds, or when a link ends, until cancelled."""

    def __init__(
        self,
        ledger: Ledger,
        identity: HostIdentity,
        state_dir: Path,
        interval: float = REFUND_INTERVAL,
        gas: GasWatch | None = None,
    ) -> None:
        self.ledger = ledger
        self.identity = identity
        self.interval = interval
        self.gas = gas
        self.book = OpenedBook(state_dir / CONNECTIONS_FILE)
        self._in_use: set[str] = set()  # spending caps of connections in use
        self._lock = threading.Lock()
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failing = False  # (a failing look is logged once until one succeeds)
        self.refunded = 0
        """MIST this run got back by settling its own connections."""
        self.settled = 0
        """Connections this run settled itself."""

    # -- what the forwarders call -------------------------------------------------------

    def attempt(self, forward: str) -> OpenAttempt:
        """The journal of one open of ``forward``."""
        return OpenAttempt(self, forward)

    def record(
        self, forward: str, cap_id: str, connection_id: str | None, *, in_use: bool = True
    ) -> None:
        """Write an open to the book, in use unless not ``in_use`` (any thread;
        blocking: a synced write). Raises what the file raises: before the open, that
        stops it."""
        key = normalize_id(cap_id, "spending cap ID")
        if in_use:
            with self._lock:
                self._in_use.add(key)
        self.book.record(forward, key, connection_id)

    def release(self, cap_id: str) -> None:
        """``cap_id``'s connection is not used any more: look at it (any thread)."""
        with self._lock:
            self._in_use.discard(normalize_id(cap_id, "spending cap ID"))
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # (the loop closed meanwhile)
                loop.call_soon_threadsafe(self._wake.set)

    # -- the task -------------------------------------------------------------------------

    async def run(self) -> None:
        """Look at the book now, then at every deadline, interval or link's end."""
        self._loop = asyncio.get_running_loop()
        while True:
            self._wake.clear()
            try:
                wait = await self.look()
            except Exception:
                # (a fault, not the ledger's: with its traceback) Let out, it ended the
                # task, and no deposit was refunded again until the next start
                logger.exception("looking at the forwarders' connections failed")
                wait = self.interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def look(self) -> float:
        """One look at every connection of the book no link uses: each half-closed,
        settled or forgotten as :func:`refund_step` says. Returns the seconds until the
        next look (:func:`next_look`). A failure (the ledger away) is logged once and
        the look tried again after the interval."""
        try:
            return await self._look()
        except (ChainError, OSError, sqlite3.Error, ReceiptStoreError) as exc:
            if not self._failing:
                self._failing = True
                logger.warning(
                    "cannot look at the forwarders' connections (tried again later)",
                    extra=kv(error=str(exc)),
                )
            return self.interval

    def _idle(self) -> list[Opened]:
        entries = self.book.entries()
        with self._lock:
            return [e for e in entries if e.cap_id not in self._in_use]

    async def _look(self) -> float:
        idle = self._idle()
        if not idle:
            self._failing = False
            return self.interval
        if any(e.connection_id is None for e in idle):
            idle = await self._resolve(idle)
        now_ms = await asyncio.to_thread(self.ledger.clock_ms)
        deadlines: list[int] = []
        for entry in idle:
            assert entry.connection_id is not None
            at = await self._act(entry, entry.connection_id, now_ms)
            if at is not None:
                deadlines.append(at)
        if self._failing:
            self._failing = False
            logger.info("the forwarders' connections can be looked at again")
        return next_look(deadlines, now_ms, self.interval)

    async def _resolve(self, idle: list[Opened]) -> list[Opened]:
        """The entries whose open was recorded before the ledger told their connection's
        ID (the daemon stopped while it landed, or it failed): found among our
        connections by their spending cap, or forgotten once a complete scan shows none
        (the open never landed, or the connection is settled). Returns the entries with
        an ID."""
        scan = await asyncio.to_thread(
            find_connections, self.ledger, client=self.identity.sui_address
        )
        by_cap = {
            normalize_id(r.connection.spending_cap, "spending cap ID"): r.connection.id
            for r in scan.reports
        }
        known = []
        for entry in idle:
            if entry.connection_id is not None:
                known.append(entry)
                continue
            found = by_cap.get(entry.cap_id)
            if found is not None:
                await asyncio.to_thread(self.book.record, entry.forward, entry.cap_id, found)
                known.append(Opened(entry.cap_id, found, entry.forward, entry.recorded_at))
            elif scan.complete:
                await asyncio.to_thread(self.book.forget, entry.cap_id)
        return known

    async def _act(self, entry: Opened, cid: str, now_ms: int) -> int | None:
        """:func:`refund_step` for one connection, done; its deadline when it waits."""
        try:
            tc: TransportControl | None = await asyncio.to_thread(self.ledger.get_connection, cid)
        except ObjectNotFound:
            tc = None
        step = refund_step(tc, now_ms)
        fields = kv(forward=entry.forward, connection=cid)
        if step.action is RefundAction.FORGET:
            await asyncio.to_thread(self.book.forget, entry.cap_id)
            return None
        if step.action is RefundAction.WAIT:
            return step.at_ms
        try:
            if step.action is RefundAction.HALF_CLOSE:
                try:
                    await asyncio.to_thread(self.ledger.close_connection, self.identity, cid)
                except ConnectionStateError:
                    pass  # (closed meanwhile, by the provider: the next look goes on)
                else:
                    logger.info("connection half-closed: no longer used", extra=fields)
                tc = await asyncio.to_thread(self.ledger.get_connection, cid)
                return None if tc.settled else client_settles_at(tc)
            refunded = await asyncio.to_thread(collect_refund, self.ledger, self.identity, cid)
        except ChainError as exc:
            quiet = self.gas is not None and await self.gas.explains(exc)
            logger.log(
                logging.DEBUG if quiet else logging.WARNING,
                f"cannot {step.action.value} a connection (tried again later)",
                extra=kv(forward=entry.forward, connection=cid, error=str(exc)),
            )
            return None
        self.settled += 1
        self.refunded += refunded
        logger.info(
            "deposit refunded: the connection settled after its half-close timeout",
            extra=kv(forward=entry.forward, connection=cid, refunded=refunded),
        )
        await asyncio.to_thread(self.book.forget, entry.cap_id)
        return None

    def close(self) -> None:
        """Close the book's file (after the task ended)."""
        with contextlib.suppress(sqlite3.Error):
            self.book.close()
