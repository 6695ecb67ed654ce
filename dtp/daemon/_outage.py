"""A forward's way to a new DTP connection through an outage of its target: nothing is
spent on the ledger until the target's endpoint answers, and while it does not, the
tries back off; a target that answers and then refuses locks one deposit at most
(docs/daemon.md, "Tunnels").

- :class:`OpenBackoff` (sans I/O: every call is given ``now``): when the next open may
  be tried, what local clients coming before then are refused with, and whether an
  outage began or ended (logged once each, not per client).
- :func:`probe_target`: the cheap look before any transaction -- the Host read (a
  ledger read, no gas) and a TCP connect to its published endpoints, closed at once.
- :class:`ForwardDeposits`: which deposit the next connection goes with: an open that
  failed after the probe passed (it cost a spending cap and an open: it backs off
  longer, :data:`SPENT_BACKOFF_FIRST`) leaves its connection Open and held for the
  forward's next tries (:func:`held_step`), and no other is opened until it is settled
  (docs/daemon.md, "One deposit locked per target").
- :func:`connect_forward`: the connect itself, on a held connection or a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime

from dtp.daemon._config import ForwardConfig
from dtp.daemon._fees import OWN_BILLING
from dtp.daemon._refunds import HOLD_TIME, OpenAttempt, Refunds
from dtp.errors import ChainError, DTPError, ObjectNotFound, TunnelError
from dtp.hostid._address import HostAddress
from dtp.hostid._asyncio import open_kept_connection
from dtp.hostid._connect import tcp_endpoints
from dtp.identity.keys import HostIdentity
from dtp.ledger._connections import client_settles_at
from dtp.ledger._objects import ConnectionState, TransportControl
from dtp.ledger.interface import Ledger
from dtp.protocol.connection import ConnectionConfig
from dtp.transport.asyncio._streams import DTPStreamReader, DTPStreamWriter

__all__ = [
    "OPEN_BACKOFF_FIRST",
    "OPEN_BACKOFF_MAX",
    "PROBE_TIMEOUT",
    "SPENT_BACKOFF_FIRST",
    "SPENT_BACKOFF_MAX",
    "BackingOff",
    "DepositLocked",
    "DepositTry",
    "ForwardDeposits",
    "HeldStep",
    "OpenBackoff",
    "TargetUnreachable",
    "connect_forward",
    "held_step",
    "probe_target",
]

OPEN_BACKOFF_FIRST = 0.5
"""Seconds after a failed open (or probe) before the next is tried; doubled after each
further failure, up to :data:`OPEN_BACKOFF_MAX`, and reset once a tunnel opened (a
connection opened with a deposit too small for one tunnel fails too)."""
OPEN_BACKOFF_MAX = 8.0
"""The longest wait after failures that spent nothing (a probe refused, a ledger read
failing): a target back from an outage is reached within it, for a TCP connect's
worth of probing meanwhile."""
SPENT_BACKOFF_FIRST = 30.0
"""The least wait after an open that failed once its transactions went through (the
target answered the probe, then refused the DTP connection): such a try cost the gas
of two transactions, and its deposit stays in escrow until settled. (The tries on the
connection it left, which spend nothing, back off as failures that spent nothing.)"""
SPENT_BACKOFF_MAX = 300.0
"""The longest wait after such failures."""
PROBE_TIMEOUT = 5.0
"""Seconds a probe's TCP connect to one endpoint may take (within the forward's
``open_timeout``): a silent host is an outage too."""


class TargetUnreachable(TunnelError):
    """The probe found none of the target host's endpoints answering: nothing was
    spent on the ledger."""


class BackingOff(TunnelError):
    """A local client refused at once during the backoff after a failure (which it
    names): the failure was logged once, not once per client."""


class DepositLocked(TunnelError):
    """No new connection is opened while the deposit a failed connect of the forward
    locked is on its way back (half-closed, not settled yet): one deposit locked per
    target at a time."""


@dataclass
class OpenBackoff:
    """One forward's backoff between tries of a new connection. Sans I/O: ``now`` is the
    caller's clock (the event loop's), in seconds."""

    failure: BaseException | None = None
    """The last try's failure, while its backoff runs (None: the next try may go)."""
    delay: float = 0.0
    """Seconds the last failure made the next try wait (0: none failed since a tunnel
    opened)."""
    retry_at: float = 0.0
    """When the next try may go."""
    failures: int = 0
    """Tries failed in a row."""
    outage: bool = False
    """The target did not answer the last probe, and has not answered one since."""

    def refusal(self, now: float) -> BackingOff | None:
        """What a local client coming at ``now`` is refused with: the last failure,
        while its backoff runs (None: a try may go, one at a time -- the caller holds
        the others back until it ends)."""
        failure = self.failure
        if failure is None or now >= self.retry_at:
            return None
        wait = self.retry_at - now
        error = BackingOff(f"{failure} (tried again in {wait:.1f} s)")
        error.__cause__ = failure
        return error

    def failed(self, now: float, error: BaseException, *, spent: bool = False) -> float:
        """A try failed at ``now`` with ``error``: returns the seconds until the next.
        ``spent``: its transactions went through (the deposit is in escrow), which
        backs off at least :data:`SPENT_BACKOFF_FIRST`."""
        self.failure = error
        self.failures += 1
        if spent:
            self.delay = min(max(2 * self.delay, SPENT_BACKOFF_FIRST), SPENT_BACKOFF_MAX)
        else:
            self.delay = min(2 * self.delay, OPEN_BACKOFF_MAX) or OPEN_BACKOFF_FIRST
        self.retry_at = now + self.delay
        return self.delay

    def repeats(self, error: BaseException) -> bool:
        """Whether ``error`` says what the last failure said (a held connection refused
        again, a deposit still on its way back): such a failure is logged once, as it
        begins, not at every try."""
        return self.failure is not None and str(error) == str(self.failure)

    def unreachable(self, now: float, error: BaseException) -> tuple[float, bool]:
        """The probe found the target not answering at ``now``: the failure, and whether
        this begins an outage (the first in a row: the caller logs it once)."""
        began = not self.outage
        self.outage = True
        return self.failed(now, error), began

    def reached(self) -> bool:
        """The probe found the target answering: whether this ends an outage."""
        ended, self.outage = self.outage, False
        return ended

    def opened(self) -> None:
        """A connection opened: the next try may go at once should it be needed, but
        the delay stays until a tunnel opened on it (:meth:`tunnel_opened`)."""
        self.failure = None

    def tunnel_opened(self) -> None:
        """A tunnel opened: the backoff starts over."""
        self.failure = None
        self.delay = 0.0
        self.failures = 0


async def probe_target(ledger: Ledger, target: HostAddress, timeout: float) -> bool:
    """Whether ``target``'s host answers on one of its published TCP endpoints (tried
    in order, ``timeout`` seconds each): the Host is read (in a thread), then a TCP
    connect, closed at once. Nothing is written to the ledger. False when the host
    publishes no TCP endpoint (it is reached over the ledger carrier, which no probe
    can look at: the open goes ahead). Raises :class:`TargetUnreachable` naming every
    endpoint when none answers, and what the Host's read raises (the ledger away)."""
    host = await asyncio.to_thread(ledger.get_host, target.host_id)
    endpoints = tcp_endpoints(host)
    if not endpoints:
        return False
    failures = []
    for address, port in endpoints:
        try:
            async with asyncio.timeout(timeout):
                _reader, writer = await asyncio.open_connection(address, port)
        except TimeoutError:
            failures.append(f"{address}:{port}: no answer within {timeout:g} s")
            continue
        except OSError as exc:
            failures.append(f"{address}:{port}: {exc.strerror or exc}")
            continue
        writer.close()
        with contextlib.suppress(OSError, DTPError):
            await writer.wait_closed()
        return True
    raise TargetUnreachable(
        f"cannot reach {target}: host {target.host_id} does not answer "
        f"({'; '.join(failures)}); nothing was spent on the ledger"
    )


# -- which deposit the next connection goes with -------------------------------------------


class HeldStep(enum.Enum):
    """What a forward does with a connection a failed connect of its own left, by its
    state on the ledger (:func:`held_step`)."""

    RECONNECT = "reconnect"
    """Open: the next try connects on it again (nothing spent)."""
    WAIT = "wait"
    """Closed or half-closed and not settled: its deposit is on its way back; no
    other is opened meanwhile (:class:`DepositLocked`)."""
    GONE = "gone"
    """Settled, not on the ledger (an open that never landed), or to another target (a
    reload changed it): nothing of this target's locked; the looks forget or settle it."""


def held_step(connection: TransportControl | None, target: HostAddress) -> HeldStep:
    """:class:`HeldStep` for ``connection`` (None: not on the ledger), a connection a
    failed connect of a forward to ``target`` left unserved. Sans I/O."""
    if connection is None or connection.settled:
        return HeldStep.GONE
    if connection.host != target.host_id or connection.port != target.port:
        return HeldStep.GONE
    if connection.state == ConnectionState.OPEN:
        return HeldStep.RECONNECT
    return HeldStep.WAIT


@dataclass(eq=False)
class DepositTry:
    """One try of a forward's new connection: its attempt in the book (None: the daemon
    keeps no book) and whether it connects on a connection a failed connect left."""

    attempt: OpenAttempt | None
    held: bool = False

    @property
    def reconnect(self) -> str | None:
        """The ledger connection it connects on again (None: it opens one)."""
        if not self.held or self.attempt is None:
            return None
        return self.attempt.connection_id


@dataclass(eq=False)
class ForwardDeposits:
    """Which deposit one forward's next connection goes with: a connection a failed
    connect of the forward left Open (held in the book, this run's or a previous one's),
    else a new one -- never while such a connection's deposit is on its way back.
    Several tries may run at once (a UDP forward's flows): each takes its own."""

    name: str
    """The forward's name: its connections' label in the book."""
    ledger: Ledger
    refunds: Refunds | None
    _trying: set[OpenAttempt] = field(default_factory=set)

    async def next(self, target: HostAddress) -> DepositTry:
        """The next try's deposit (the ledger read for each held connection, in a
        thread). Raises :class:`DepositLocked` while a held one's deposit is on its way
        back, TunnelError when the ledger or the book cannot be read."""
        refunds = self.refunds
        if refunds is None:
            return DepositTry(None)
        try:
            chosen, locked = await self._choose(refunds, target)
            if chosen is not None:
                chosen.hold()  # (in use while it is tried, and while served)
                return self._trying_with(DepositTry(chosen, held=True))
            if locked is None:
                return self._trying_with(DepositTry(refunds.attempt(self.name)))
        except sqlite3.Error as exc:  # (the book's file failing: no open without it)
            raise TunnelError(f"cannot connect to {target}: {exc}") from exc
        due = client_settles_at(locked)
        when = (
            ""
            if due is None
            else f" from {datetime.fromtimestamp(due / 1000, UTC):%Y-%m-%d %H:%M:%S} UTC"
        )
        raise DepositLocked(
            f"no new connection to {target} while the deposit of connection {locked.id}, "
            f"which a failed connect left, is on its way back (the forwarder settles "
            f"it{when} unless the provider does first): one deposit locked per target "
            "at a time"
        )

    async def _choose(
        self, refunds: Refunds, target: HostAddress
    ) -> tuple[OpenAttempt | None, TransportControl | None]:
        """Of the forward's held connections (another try's aside), the first still
        Open, and the first whose deposit is on its way back; every other is released
        to the book's looks (half-closed, settled when due, or forgotten)."""
        busy = {t.key for t in self._trying}
        chosen: OpenAttempt | None = None
        locked: TransportControl | None = None
        for attempt in refunds.held(self.name):
            if attempt.key in busy:
                continue  # (another flow's try under way)
            connection = await self._read(attempt, target)
            step = held_step(connection, target)
            if step is HeldStep.RECONNECT and chosen is None:
                chosen = attempt
                continue
            if step is HeldStep.WAIT and locked is None:
                locked = connection
            attempt.release()
        return chosen, locked

    def _trying_with(self, deposit: DepositTry) -> DepositTry:
        if deposit.attempt is not None:
            self._trying.add(deposit.attempt)
        return deposit

    async def _read(self, attempt: OpenAttempt, target: HostAddress) -> TransportControl | None:
        cid = attempt.connection_id
        assert cid is not None  # (Refunds.held gives those known by their ID)
        try:
            return await asyncio.to_thread(self.ledger.get_connection, cid)
        except ObjectNotFound:
            return None
        except (ChainError, OSError, sqlite3.Error) as exc:
            raise TunnelError(f"cannot connect to {target}: {exc}") from exc

    def failed(self, deposit: DepositTry | None) -> bool:
        """``deposit``'s try failed (None: before it had one): its connection, Open
        unless the server settled it, is held for the next try when it was opened and
        never served, else the looks' (released). Returns whether this try spent (a new
        open may have landed), for the backoff."""
        if deposit is None or deposit.attempt is None:
            return False
        attempt = deposit.attempt
        self._trying.discard(attempt)
        if attempt.spent and attempt.unserved:
            attempt.hold(HOLD_TIME)
            return not deposit.held
        attempt.release()
        return False

    async def served(self, deposit: DepositTry) -> None:
        """``deposit``'s connection was made: no longer unserved in the book (a synced
        write, in a thread; its user releases it once it ended)."""
        if deposit.attempt is not None:
            self._trying.discard(deposit.attempt)
            await asyncio.to_thread(deposit.attempt.served)


async def connect_forward(
    config: ForwardConfig, ledger: Ledger, identity: HostIdentity, deposit: DepositTry
) -> tuple[DTPStreamReader, DTPStreamWriter]:
    """A new DTP connection of the forward ``config`` to its target, with ``deposit``:
    on the connection it holds, or opened with its attempt as the journal -- left Open
    should the connect fail (half-closed where the daemon keeps no book)."""
    return await open_kept_connection(
        config.target,
        ledger=ledger,
        identity=identity,
        on_open=deposit.attempt,
        reconnect=deposit.reconnect,
        deposit=config.deposit,
        config=ConnectionConfig(
            identity=identity, is_client=True, idle_timeout=config.connection_idle_timeout
        ),
        # (the ledger open, the carrier connect and the handshake: on Sui the open
        # alone is two transactions, each seconds long under load)
        timeout=config.open_timeout,
        metering=OWN_BILLING,
    )
