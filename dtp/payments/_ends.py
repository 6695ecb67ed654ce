"""Gas-aware ends of connections (docs/escrow.md §7.1): whether a server claims and
settles a connection that ended, waits to settle it with others in one transaction, or
leaves it to its client -- and what a service's prices say about it.

A fee below the gas of claiming it loses the server money, so (:meth:`EndRule.choose`):
**settle** when the fee covers a settlement's gas (:class:`~dtp.ledger._gas.EndGas`);
**batch** when it covers what one more adds to
:meth:`~dtp.ledger.interface.Ledger.settle_batch`, waiting up to
:attr:`EndRule.batch_window` (:class:`EndBatch`); **leave** otherwise, for the client to
settle after the half-close timeout (the
:class:`~dtp.payments._refunds.RefundCollector`). Without gas (LocalLedger) or with
``EndRule(weigh_gas=False)``, every end settles. Sans-I/O: the servers make the
transactions (:func:`dtp.payments._settlement.end_connection`).
"""

from __future__ import annotations

import enum
import math
import threading
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from dtp.errors import InvalidArgument
from dtp.ledger._objects import normalize_id
from dtp.ledger.receipt import fee as sla_fee

if TYPE_CHECKING:
    from dtp.ledger._gas import EndGas
    from dtp.ledger._objects import Sla
    from dtp.ledger.receipt import Receipt

__all__ = [
    "BATCH_WINDOW",
    "TYPICAL_BYTES",
    "TYPICAL_REQUESTS",
    "BatchPlan",
    "Deferred",
    "EndBatch",
    "EndChoice",
    "EndDeferred",
    "EndLeft",
    "EndRule",
    "PriceCheck",
    "check_prices",
    "check_seconds",
]

#: Seconds an end below one settlement's gas waits for others to share a transaction
#: with: far inside the 10-minute half-close timeout after which its client may settle.
BATCH_WINDOW: Final = 60.0

#: What a "typical" connection carries, for :func:`check_prices`: 1 MiB in both
#: directions together, in one request (the first stream; for the daemon, one tunnel).
TYPICAL_BYTES: Final = 1 << 20
TYPICAL_REQUESTS: Final = 1


def check_seconds(what: str, value: object, *, zero: bool) -> None:
    """Refuse (InvalidArgument naming ``what``) a duration that is not seconds above 0
    (at least 0 with ``zero``) within threading.TIMEOUT_MAX, NaN included: else the
    error comes in a waiting thread, long after the setting was made."""
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not math.isfinite(value)
        or not 0 <= value <= threading.TIMEOUT_MAX
        or (value == 0 and not zero)
    ):
        low = "from 0" if zero else "above 0 and"
        raise InvalidArgument(
            f"{what} must be a number of seconds {low} up to "
            f"{threading.TIMEOUT_MAX:.0f}, got {value!r}"
        )


class EndChoice(enum.Enum):
    """What a server does at a connection's end (see the module docs)."""

    SETTLE = "settle"
    """Claim its receipt (if any) and settle now, in one transaction."""
    BATCH = "batch"
    """Settle it within :attr:`EndRule.batch_window`, with others, in one transaction;
    or leave it, when no batch pays for itself by then."""
    LEAVE = "leave"
    """No transaction: its client settles after the half-close timeout, and the
    unclaimed fee is refunded to it with the rest."""


@dataclass(frozen=True)
class EndRule:
    """How a server weighs a connection's end against its gas."""

    weigh_gas: bool = True
    """False: every end is settled, whatever its gas (as before gas was weighed)."""
    batch_window: float = BATCH_WINDOW
    """Seconds an end worth a place in a batch, but not a transaction of its own, waits
    for one (0: none waits; such ends are left)."""

    def __post_init__(self) -> None:
        if not isinstance(self.weigh_gas, bool):
            raise InvalidArgument(f"EndRule.weigh_gas must be a bool, got {self.weigh_gas!r}")
        check_seconds("EndRule.batch_window", self.batch_window, zero=True)

    def choose(self, fee: int, gas: EndGas) -> EndChoice:
        """The end of a connection whose receipts can still claim ``fee`` MIST, on a
        ledger whose ends cost ``gas``."""
        if not self.weigh_gas or not gas.charged:
            return EndChoice.SETTLE
        if fee > 0 and fee >= gas.settle_claim:
            return EndChoice.SETTLE
        if self.batch_window > 0 and fee > 0 and fee >= gas.batch_claim:
            return EndChoice.BATCH
        return EndChoice.LEAVE


@dataclass(frozen=True)
class EndLeft:
    """A connection's end left to its client: no transaction was made. ``fee`` (the MIST
    the server's receipts could still claim) goes back to the client at its own
    settlement; ``gas`` is what claiming it would have cost."""

    fee: int
    gas: int


@dataclass(frozen=True)
class EndDeferred:
    """A connection's end put in the server's :class:`EndBatch`: settled with others by
    ``due`` (monotonic seconds), or left then."""

    fee: int
    due: float


@dataclass(frozen=True)
class Deferred:
    """A connection waiting in an :class:`EndBatch`."""

    connection_id: str
    receipt: Receipt
    fee: int
    """MIST its receipt claims beyond what the escrow paid already."""
    due: float
    """When (monotonic seconds) it is settled in a batch or left."""
    escrow_id: str | None = None
    cap_id: str | None = None


@dataclass(frozen=True)
class BatchPlan:
    """What an :class:`EndBatch` says to do now (both taken out of the batch)."""

    settle: tuple[Deferred, ...]
    """Settle these in one transaction (``Ledger.settle_batch``): their fees cover its
    gas."""
    leave: tuple[Deferred, ...]
    """Leave these to their clients: their window ended, and no batch of the waiting
    ends pays for itself."""

    def __bool__(self) -> bool:
        return bool(self.settle or self.leave)


class _ByConnection:
    """A table of connections keyed by normalized ID, guarded by ``_lock``: ``in`` takes
    an ID in any spelling (anything but a str is in none), ``len`` counts them."""

    _lock: threading.Lock

    def _table(self) -> Collection[str]:
        raise NotImplementedError

    def __contains__(self, connection_id: object) -> bool:
        if not isinstance(connection_id, str):
            return False
        with self._lock:
            return normalize_id(connection_id, "connection ID") in self._table()

    def __len__(self) -> int:
        with self._lock:
            return len(self._table())


class EndBatch(_ByConnection):
    """The ends a server waits to settle together (:attr:`EndChoice.BATCH`), by
    connection ID. Thread-safe; sans-I/O: :meth:`plan` says what to do, the server does
    it (and puts back with :meth:`add` what a failed batch did not settle)."""

    def __init__(self, rule: EndRule | None = None, max_batch: int = 64) -> None:
        self.rule = rule or EndRule()
        self.max_batch = max_batch
        self._lock = threading.Lock()
        self._waiting: dict[str, Deferred] = {}

    def add(self, entry: Deferred) -> None:
        """Wait for a batch (replacing an entry of the same connection)."""
        key = normalize_id(entry.connection_id, "connection ID")
        with self._lock:
            self._waiting[key] = entry

    def discard(self, connection_id: str) -> Deferred | None:
        """Take a connection out of the batch (it is being settled otherwise)."""
        with self._lock:
            return self._waiting.pop(normalize_id(connection_id, "connection ID"), None)

    def _table(self) -> dict[str, Deferred]:
        return self._waiting

    def waiting(self) -> list[Deferred]:
        with self._lock:
            return list(self._waiting.values())

    def next_due(self) -> float | None:
        """The earliest ``due`` of the ends waiting (None: none)."""
        with self._lock:
            return min((e.due for e in self._waiting.values()), default=None)

    def plan(self, now: float, gas: EndGas, *, final: bool = False) -> BatchPlan:
        """What to do at ``now`` with ends costing ``gas`` (``final``: every window
        ended); the ends taken leave the batch. The most valuable go first, at most
        ``max_batch``, an end below ``gas.batch_claim`` never (a loss); when the batch
        does not cover ``gas.batch(n)``, the ends whose window ended are left."""
        with self._lock:
            ranked = sorted(self._waiting.values(), key=lambda e: e.fee, reverse=True)
            members = [e for e in ranked if e.fee >= gas.batch_claim][: self.max_batch]
            total = sum(e.fee for e in members)
            # (each member adds at least what it costs: the whole list is the best batch,
            # and one that alone covers a settlement makes it pay)
            settle = members if members and total >= gas.batch(len(members)) else []
            taken = {normalize_id(e.connection_id, "connection ID") for e in settle}
            leave = [
                e
                for e in ranked
                if (final or e.due <= now)
                and normalize_id(e.connection_id, "connection ID") not in taken
            ]
            for e in (*settle, *leave):
                self._waiting.pop(normalize_id(e.connection_id, "connection ID"), None)
        return BatchPlan(tuple(settle), tuple(leave))


@dataclass(frozen=True)
class PriceCheck:
    """A service's prices weighed against the gas of a connection's end."""

    typical_fee: int
    """What a typical connection (:data:`TYPICAL_BYTES` in :data:`TYPICAL_REQUESTS`
    request) pays."""
    end_gas: int
    """What claiming and settling one costs (``EndGas.settle_claim``)."""
    bytes_needed: int | None
    """The fewest bytes a one-request connection must carry for its fee to cover that
    gas (None: no number of bytes does, the service being free per byte)."""

    @property
    def covered(self) -> bool:
        return self.typical_fee >= self.end_gas


def check_prices(
    sla: Sla,
    gas: EndGas,
    typical_bytes: int = TYPICAL_BYTES,
    typical_requests: int = TYPICAL_REQUESTS,
) -> PriceCheck | None:
    """Whether ``sla``'s prices cover the gas of a typical connection's end; None for a
    free service (it claims nothing: its ends are left to the clients) and on a ledger
    that charges no gas."""
    if not gas.charged or not sla.paid:
        return None
    typical = sla_fee(sla, typical_bytes, typical_requests)
    rest = gas.settle_claim - sla.price_per_request * typical_requests
    needed: int | None
    if rest <= 0:
        needed = 0
    elif sla.price_per_kib == 0:
        needed = None
    else:
        needed = -(-rest * 1024 // sla.price_per_kib)  # fee(b) = ceil(b * price / 1024)
    return PriceCheck(typical, gas.settle_claim, needed)
