"""The forwarders' own ledger connections, until each is settled: the daemon's asyncio
driver of the library's refunds (:mod:`dtp.payments._refunds`; what happens to them:
docs/daemon.md, "How it works", "Settlements of the forwards' connections" and "One
deposit locked per target").

A connection ends on the provider's settlement as a rule. Where it does not -- the
provider down, killed, or never reached -- only the client may settle, once the
half-close timeout has passed, or the deposit would stay in escrow for good. So each
connection a forwarder opens is written to the book, ``<state_dir>/connections.sqlite``,
before its deposit can move (``on_open`` of :func:`dtp.aio.open_connection`: an
:class:`OpenAttempt`), and once no link uses it the task looks at it until it is
settled (:mod:`dtp.payments._refund_engine` decides each step). A forward's open whose
connect failed stays *unserved* in the book, held for the forward's next try
(:data:`HOLD_TIME`, :mod:`dtp.daemon._outage`). The book survives restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from dtp.daemon._config import REFUND_INTERVAL
from dtp.daemon._gas import GasWatch
from dtp.daemon._logs import kv
from dtp.daemon._state import CONNECTIONS_FILE
from dtp.identity.keys import HostIdentity
from dtp.ledger.interface import Ledger
from dtp.payments import _refund_engine as refund
from dtp.payments._refund_book import Opened, OpenedBook
from dtp.payments._refund_engine import RefundEngine
from dtp.payments._refunder import OpenAttempt, Refunder

__all__ = ["CONNECTIONS_FILE", "HOLD_TIME", "REFUND_INTERVAL", "OpenAttempt", "Refunds"]

logger = logging.getLogger("dtp.daemon._refunds")

HOLD_TIME = 300.0
"""Seconds a ledger connection a forward's failed connect left Open is held for the
forward after its last try (at a start, after the start): its next try connects on it
again, spending nothing; once none came for this long, the looks take it -- half-closed,
and its deposit back once the half-close timeout has passed (the provider may settle
it sooner). Longer than the forward's backoff (8 s at most between tries that spend
nothing), so that a forward with local clients coming keeps it."""


class Refunds:
    """The daemon's settlements of its forwarders' connections (see the module's
    docstring). :meth:`attempt` gives each open its journal; :meth:`run` is the task,
    which looks at the book at once (a previous run's connections) and then every
    ``interval`` seconds, at a connection's deadline, or when a link ends, until
    cancelled. ``weigh_gas`` (``gas_aware_ends``): a refund smaller than the gas of
    taking it back is left on the ledger, logged. ``clock``: the monotonic seconds of
    the holds and of the looks' waits (a test's own)."""

    def __init__(
        self,
        ledger: Ledger,
        identity: HostIdentity,
        state_dir: Path,
        interval: float = REFUND_INTERVAL,
        gas: GasWatch | None = None,
        *,
        weigh_gas: bool = True,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.gas = gas
        self.interval = interval
        self.weigh_gas = weigh_gas
        """``gas_aware_ends``: the forwarders' half-closes are weighed the same way."""
        self.book = OpenedBook(state_dir / CONNECTIONS_FILE)
        engine = RefundEngine(interval=interval, retry=interval, weigh_gas=weigh_gas)
        self.refunder = Refunder(
            ledger, identity, self.book, engine, wake=self._wake_up, clock=clock
        )
        self._wake = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.refunded = 0
        """MIST this run got back by settling its own connections."""
        self.settled = 0
        """Connections this run settled itself."""
        self.skipped = 0
        """Connections this run left on the ledger: their refund was below its gas."""
        for entry in self.book.entries():
            if entry.unserved and entry.connection_id is not None and entry.due_ms is None:
                # a previous run's forward left it (Open as far as the book knows): its
                # forward of this run may take it up before the first look half-closes it
                self.refunder.hold(entry.connection_id, HOLD_TIME)

    # -- what the forwarders call -------------------------------------------------------

    def attempt(self, forward: str) -> OpenAttempt:
        """The journal of one open of ``forward``: unserved in the book until its
        connect succeeded (:meth:`OpenAttempt.served`)."""
        return OpenAttempt(self.refunder, forward, unserved=True)

    def held(self, forward: str) -> list[OpenAttempt]:
        """The connections of ``forward`` the book holds unserved and known by their
        ID, oldest first -- each a connect that failed (or is under way), this run's or
        a previous one's -- as attempts to hold, release or connect on again."""
        return [
            OpenAttempt.of(self.refunder, entry)
            for entry in self.book.entries()
            if entry.unserved and entry.label == forward and entry.connection_id is not None
        ]

    def _wake_up(self) -> None:
        """A link ended (any thread): look at once."""
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
                # (a fault, not the ledger's: with its traceback) caught, so that the
                # task goes on refunding deposits until the daemon stops
                logger.exception("looking at the forwarders' connections failed")
                wait = self.interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()

    async def look(self) -> float:
        """One look at every connection of the book no link uses (in a worker thread:
        the ledger's calls block). Returns the seconds until the next look. Cancelled,
        it ends after the ledger call under way, waited for, and what it did is logged
        all the same: the book and the ledger are closed after the task."""
        job = asyncio.ensure_future(asyncio.to_thread(self.refunder.look))
        try:
            look = await asyncio.shield(job)
        except asyncio.CancelledError:
            self.refunder.stop()
            with contextlib.suppress(Exception):
                for event in (await job).events:
                    self._note(event)
            raise
        for event in look.events:
            quiet = False
            if isinstance(event, refund.StepFailed) and self.gas is not None:
                quiet = await self.gas.explains(event.error)  # (out of gas: said once)
            self._note(event, quiet=quiet)
        return look.wait

    def _note(self, event: refund.LookEvent, *, quiet: bool = False) -> None:
        """Log (and count) what a look did; ``quiet``: a failure the gas watch explains."""
        if isinstance(event, refund.LookFailed):
            if event.first:
                logger.warning(
                    "cannot look at the forwarders' connections (tried again later)",
                    extra=kv(error=str(event.error)),
                )
            return
        if isinstance(event, refund.LookRecovered):
            logger.info("the forwarders' connections can be looked at again")
            return
        fields = _fields(event.entry)
        if isinstance(event, refund.Settled):
            self.settled += 1
            self.refunded += event.refunded
            logger.info(
                "deposit refunded: the connection settled after its half-close timeout",
                extra=kv(**fields, refunded=event.refunded),
            )
        elif isinstance(event, refund.HalfClosed):
            logger.info("connection half-closed: no longer used", extra=kv(**fields))
        elif isinstance(event, refund.Skipped):
            self.skipped += 1
            logger.warning(
                "deposit left on the ledger: taking it back costs more gas than it gives "
                f"(dtp refund {event.entry.name} takes it back)",
                extra=kv(**fields, balance=event.balance, gas=event.cost),
            )
        elif isinstance(event, refund.FoundSettled | refund.Forgotten):
            logger.debug("connection settled, or never opened: forgotten", extra=kv(**fields))
        elif isinstance(event, refund.StepFailed):
            error = event.error
            logger.log(
                logging.DEBUG if quiet or event.too_early else logging.WARNING,
                f"cannot {event.action.value} a connection (tried again later)"
                if not event.dropped
                else "a connection this daemon cannot settle: forgotten",
                extra=kv(**fields, error=f"{type(error).__name__}: {error}"),
                exc_info=(type(error), error, error.__traceback__) if event.unexpected else None,
            )

    def waiting(self) -> int:
        """The connections of the book: in use, or waiting for their settlement (0 once
        the book is closed)."""
        return len(self.book)

    def close(self) -> None:
        """Close the book's file (after the task ended)."""
        self.refunder.stop()
        with contextlib.suppress(sqlite3.Error):
            self.book.close()


def _fields(entry: Opened) -> dict[str, str]:
    fields = {"forward": entry.label, "connection": entry.name}
    if entry.connection_id is None and entry.cap_id is not None:
        fields["spending_cap"] = entry.cap_id
    return fields
