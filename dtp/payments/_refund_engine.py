"""The decisions of a client's refunds, sans I/O (docs/escrow.md §7, §7.1): what to do
with a connection of the book that nothing uses any more, and when to look again.

Where the server does not settle, only the client may, once the connection's
half-close timeout has passed since the first close. By the ledger's state
(:func:`refund_step`) a connection nothing uses is half-closed, then settled past the
timeout, then forgotten (its objects deleted first when worth it:
:func:`worth_deleting`); a step costing more gas than it returns is skipped, left for
``dtp refund``.

:class:`RefundEngine` holds the state between looks (connections in use, waits after a
failure, whether the ledger could be read); :class:`dtp.payments._refunds.Refunder`
does the ledger calls.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from dtp.errors import InvalidArgument, finite_float, shown
from dtp.ledger._connections import client_settles_at
from dtp.ledger._deletion import StorageRebate
from dtp.ledger._gas import EndGas
from dtp.ledger._objects import ConnectionState, TransportControl
from dtp.payments._refund_book import Opened

__all__ = [
    "LOOK_SOON",
    "OPEN_LEASE",
    "SETTLE_MARGIN_MS",
    "Forgotten",
    "FoundSettled",
    "HalfClosed",
    "LookEvent",
    "LookFailed",
    "LookRecovered",
    "RefundAction",
    "RefundEngine",
    "RefundEvent",
    "RefundStep",
    "Settled",
    "Skipped",
    "StepFailed",
    "next_look",
    "refund_cost",
    "refund_step",
    "worth_deleting",
    "worth_gas",
]

LOOK_SOON: Final = 0.05
"""The least wait between two looks (seconds): a deadline just passed is looked at after
it, not in a tight loop."""

SETTLE_MARGIN_MS: Final = 1000
"""Milliseconds past the timeout before a client settles on a ledger that charges gas,
where a refused settlement (``ETimeoutNotReached``) is paid for all the same."""

OPEN_LEASE: Final = 600.0
"""Seconds a connection recorded by its spending cap alone counts as in use: its open
lands well within this, or failed; past it, a look finds out which by the cap."""


class RefundAction(enum.Enum):
    """What to do with a connection of the book that nothing uses."""

    WAIT = "wait"
    """Nothing yet: the half-close timeout has not passed (:attr:`RefundStep.at_ms`)."""
    HALF_CLOSE = "half-close"
    """Still Open: half-close it, which starts the timeout (the server settles it
    meanwhile as a rule)."""
    SETTLE = "settle"
    """Closed or half-closed, and the timeout has passed: the client may settle it
    alone, and takes the escrow's balance back."""
    FORGET = "forget"
    """Settled (by the server, or by us), or not on the ledger (an open that never
    landed): nothing left to do."""
    SKIP = "skip"
    """What the half-close and settlement give back does not cover their gas: left on
    the ledger (``dtp refund`` takes it back by hand)."""


@dataclass(frozen=True)
class RefundStep:
    """:func:`refund_step`'s verdict (:meth:`RefundEngine.step`'s, gas weighed)."""

    action: RefundAction
    at_ms: int | None = None
    """WAIT: the ledger time from which the client may settle (the timeout's end)."""
    cost: int = 0
    """HALF_CLOSE, SETTLE, SKIP: the gas taking the deposit back costs from here (0 on
    a ledger without gas, or gas not weighed)."""
    balance: int | None = None
    """SKIP: what the escrow holds, below :attr:`cost`."""


def refund_step(connection: TransportControl | None, now_ms: int, margin_ms: int = 0) -> RefundStep:
    """What to do with a connection of ours nothing uses (None: not on the ledger), by
    ``transport_control::settle``'s rule, settled ``margin_ms`` after its timeout."""
    if connection is None or connection.settled:
        return RefundStep(RefundAction.FORGET)
    if connection.state == ConnectionState.OPEN:
        return RefundStep(RefundAction.HALF_CLOSE)
    at = client_settles_at(connection)
    if at is None:  # (closed with no time: not a state the ledger leaves)
        return RefundStep(RefundAction.SETTLE)
    if now_ms >= at + margin_ms:
        return RefundStep(RefundAction.SETTLE)
    return RefundStep(RefundAction.WAIT, at)


def refund_cost(action: RefundAction, gas: EndGas) -> int:
    """The gas a client pays to take its deposit back from ``action`` on: an Open
    connection's half-close and settlement, a due one's settlement (0 for any other
    action, or on a ledger that charges no gas)."""
    if not gas.charged:
        return 0
    if action is RefundAction.HALF_CLOSE:
        return gas.client_refund
    if action is RefundAction.SETTLE:
        return gas.settle_refund
    return 0


def worth_gas(step: RefundStep, balance: int) -> RefundStep:
    """``step`` with the escrow's ``balance`` known: SKIP when the balance is below the
    step's :attr:`~RefundStep.cost` (taking it back would cost more than it gives)."""
    if step.cost and balance < step.cost:
        return RefundStep(RefundAction.SKIP, cost=step.cost, balance=balance)
    return step


def worth_deleting(rebate: StorageRebate, weigh_gas: bool = True) -> bool:
    """Whether the client deletes a settled connection's objects: when their storage
    rebate is worth more than the deleting transaction's gas (always on a ledger that
    charges none, or gas not weighed), docs/escrow.md §7.1."""
    return not weigh_gas or rebate.worth


def next_look(deadlines: Iterable[float], now_ms: int, interval: float) -> float:
    """Seconds until the next look: ``interval``, or a connection's earlier deadline,
    at least :data:`LOOK_SOON` (the interval bounds how late a ledger clock's jump is seen)."""
    wait = interval
    for at in deadlines:
        wait = min(wait, (at - now_ms) / 1000)
    return max(wait, LOOK_SOON)


# -- what a look did (the drivers log them) --------------------------------------------------


@dataclass(frozen=True)
class RefundEvent:
    """Something a look did to (or found of) one connection of the book."""

    entry: Opened
    """The connection's entry, as the look read it."""


@dataclass(frozen=True)
class HalfClosed(RefundEvent):
    """Half-closed by the client: its timeout runs from now."""

    due_ms: int | None
    """When the client may settle it (None: the server settled it meanwhile)."""


@dataclass(frozen=True)
class Settled(RefundEvent):
    """Settled by the client after its timeout."""

    refunded: int
    """MIST back to the client."""
    deleted: bool = False
    """Its objects deleted in the same transaction (their storage rebate the client's)."""


@dataclass(frozen=True)
class FoundSettled(RefundEvent):
    """Found settled by someone else (its server, as a rule): forgotten."""

    refunded: int | None
    """What that settlement refunded (None: not read)."""
    deleted: bool = False
    """Its objects deleted by the client (their storage rebate the client's)."""


@dataclass(frozen=True)
class Forgotten(RefundEvent):
    """Not on the ledger (an open that never landed): forgotten."""


@dataclass(frozen=True)
class Skipped(RefundEvent):
    """Taking the deposit back would cost more gas than it gives: left on the ledger,
    and forgotten."""

    balance: int
    """What the escrow holds."""
    cost: int
    """The gas of its half-close (when still Open) and its settlement."""
    opened: bool
    """Still Open (its half-close counted in :attr:`cost`)."""


@dataclass(frozen=True)
class StepFailed(RefundEvent):
    """A step refused or failed: tried again after the engine's ``retry``, unless
    :attr:`dropped`."""

    action: RefundAction
    error: BaseException
    dropped: bool = False
    """The ledger says this client cannot settle it (not a participant, another
    escrow): forgotten."""
    unexpected: bool = False
    """Not an error of the ledger's (a fault: logged with its traceback)."""
    too_early: bool = False
    """The ledger refused a settlement as before the timeout (its clock behind the one
    read): when, read again at the next try, which is all it needs (not worth a line)."""


@dataclass(frozen=True)
class LookFailed:
    """The look could not read the ledger (or the book): tried again after ``retry``."""

    error: BaseException
    first: bool
    """The first failure since the ledger could last be read (said once)."""
    gave_up: bool = False
    """The ledger stayed unreadable longer than the engine's ``give_up``."""


@dataclass(frozen=True)
class LookRecovered:
    """The ledger can be read again after :class:`LookFailed`."""


LookEvent = RefundEvent | LookFailed | LookRecovered
"""What a look reports, each for its driver to log (and count)."""


# -- the engine ----------------------------------------------------------------------------


class RefundEngine:
    """The state of a client's refunds between looks, sans I/O: ``now`` is the
    caller's monotonic time in seconds, ``now_ms`` the ledger's clock.

    ``interval``: the longest wait between two looks; ``retry``: seconds before a
    connection whose step failed, or a look that could not read the ledger, is tried
    again; ``give_up``: seconds the ledger may stay unreadable before the looks stop
    (:attr:`LookFailed.gave_up`; None: never); ``weigh_gas``: skip a refund smaller
    than its gas. Not thread-safe: its owner locks."""

    def __init__(
        self,
        *,
        interval: float,
        retry: float,
        give_up: float | None = None,
        weigh_gas: bool = True,
    ) -> None:
        for name, value in (("interval", interval), ("retry", retry), ("give_up", give_up)):
            seconds = finite_float(value)
            if (seconds is None or seconds <= 0) and not (name == "give_up" and value is None):
                raise InvalidArgument(
                    f"{name} must be a positive number of seconds, not {shown(value)}"
                )
        if not isinstance(weigh_gas, bool):
            raise InvalidArgument(f"weigh_gas must be a bool, not {weigh_gas!r}")
        self.interval = float(interval)
        self.retry = float(retry)
        self.give_up = give_up
        self.weigh_gas = weigh_gas
        #: the IDs (spending caps, connections) of connections in use, each with all
        #: the IDs of its connection and the time its use ends unreleased (inf: until
        #: released)
        self._in_use: dict[str, tuple[tuple[str, ...], float]] = {}
        #: entry key -> when (now) it may be looked at again after a failure
        self._retry_at: dict[int, float] = {}
        #: since when (now) the ledger could not be read (None: it can)
        self._unreadable_since: float | None = None
        #: whether the ledger charged gas at the last look (a margin before settling)
        self.charged = False

    # -- in use ----------------------------------------------------------------------------

    def use(self, entry: Opened, now: float, until: float | None = None) -> None:
        """``entry``'s connection is in use until released or ``until`` (a lease); by its
        cap alone, for :data:`OPEN_LEASE` at most."""
        if until is None:
            until = math.inf if entry.connection_id is not None else now + OPEN_LEASE
        ids = entry.ids
        for some_id in ids:
            self._in_use[some_id] = (ids, until)

    def release(self, ids: Iterable[str]) -> None:
        """The connection known by any of these IDs is no longer used: looked at from
        now on."""
        for some_id in ids:
            known = self._in_use.pop(some_id, None)
            if known is not None:
                for other in known[0]:
                    self._in_use.pop(other, None)

    def in_use(self, entry: Opened, now: float) -> bool:
        return any(self._in_use.get(i, ((), -math.inf))[1] > now for i in entry.ids)

    def leased(self, now: float) -> bool:
        """Whether a connection is in use on a lease (one known by its spending cap
        alone, or one its keeper holds on to): its end is a look's work to come."""
        return any(now < until < math.inf for _, until in self._in_use.values())

    def forget(self, entry: Opened) -> None:
        """``entry`` left the book."""
        self._retry_at.pop(entry.key, None)
        self.release(entry.ids)

    # -- a look ----------------------------------------------------------------------------

    def to_look(self, entries: Iterable[Opened], now: float) -> list[Opened]:
        """The entries a look takes now: nothing uses them, and none waits after a
        failure."""
        return [
            e
            for e in entries
            if not self.in_use(e, now) and self._retry_at.get(e.key, -math.inf) <= now
        ]

    def idle(self, entries: Iterable[Opened], now: float) -> list[Opened]:
        """The entries nothing uses (whether or not they wait after a failure)."""
        return [e for e in entries if not self.in_use(e, now)]

    def margin_ms(self) -> int:
        return SETTLE_MARGIN_MS if self.charged else 0

    def needs_ledger(self, entry: Opened, now_ms: int) -> bool:
        """Whether a look must read ``entry``'s connection (else it waits for a time
        already known)."""
        return entry.due_ms is None or now_ms >= entry.due_ms + self.margin_ms()

    def step(self, connection: TransportControl | None, now_ms: int, gas: EndGas) -> RefundStep:
        """:func:`refund_step`, with the gas of what it asks for (:attr:`RefundStep.cost`:
        its half-close and settlement for an Open one, its settlement for one due)."""
        self.charged = gas.charged
        step = refund_step(connection, now_ms, self.margin_ms())
        cost = refund_cost(step.action, gas) if self.weigh_gas else 0
        return RefundStep(step.action, step.at_ms, cost) if cost else step

    def failed(self, entry: Opened, now: float) -> None:
        """``entry``'s step failed: looked at again after :attr:`retry`."""
        self._retry_at[entry.key] = now + self.retry

    def succeeded(self, entry: Opened) -> None:
        self._retry_at.pop(entry.key, None)

    def look_failed(self, error: BaseException, now: float) -> LookFailed:
        first = self._unreadable_since is None
        if first:
            self._unreadable_since = now
        since = self._unreadable_since
        assert since is not None
        gave_up = self.give_up is not None and now - since > self.give_up
        return LookFailed(error, first, gave_up)

    def look_succeeded(self) -> LookRecovered | None:
        """The ledger was read: :class:`LookRecovered` after a failure."""
        if self._unreadable_since is None:
            return None
        self._unreadable_since = None
        return LookRecovered()

    def wait(self, entries: Iterable[Opened], now_ms: int | None, now: float) -> float:
        """Seconds until the next look: the earliest of the interval, each idle
        connection's deadline, the end of each wait or lease; at once for a connection
        whose time is not known; :attr:`retry` after a look that could not read the ledger."""
        if self._unreadable_since is not None:
            return self.retry
        soonest = self.interval
        for some_id, (_, until) in list(self._in_use.items()):
            if until <= now:
                del self._in_use[some_id]  # (a lease that ended: idle now)
            elif until != math.inf:
                soonest = min(soonest, until - now)
        deadlines: list[int] = []
        margin = self.margin_ms()
        for entry in self.idle(entries, now):
            retry = self._retry_at.get(entry.key)
            if retry is not None and retry > now:
                soonest = min(soonest, retry - now)
            elif entry.due_ms is None or now_ms is None:
                soonest = 0.0
            else:
                deadlines.append(entry.due_ms + margin)
        if now_ms is None:
            return max(LOOK_SOON, soonest)
        return next_look(deadlines, now_ms, soonest)
