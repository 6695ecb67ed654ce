"""The daemon's gas: the SUI its address holds to pay for its transactions (host
set-up, claims, settlements, a forwarder's opens), shown in the status, warned about
when it runs low, and reported once -- not once per connection -- when it runs out
(what the daemon does meanwhile: docs/daemon.md, "On Sui", "Gas and the low-gas
warning"). A LocalLedger charges no gas: the balance is shown, never warned about.

What ``dtp status`` shows of it (``gas``: the states ``ok``, ``low``, ``out``,
``unknown``; ``gas.spent``, over every run of the state directory): docs/daemon.md,
"How it works", after the status tables. Each paid service whose prices cannot cover
the gas of a typical connection's end is warned about at start and at a reload
(:func:`warn_prices`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from dtp.daemon._logs import kv, log_failure
from dtp.daemon._state import StatusBook
from dtp.errors import ChainError, InsufficientFunds
from dtp.ledger._gas import END_KINDS, EndGas, GasSpent
from dtp.payments._ends import TYPICAL_BYTES, TYPICAL_REQUESTS, check_prices

if TYPE_CHECKING:
    from dtp.daemon._config import ServiceConfig

__all__ = ["GAS_CHECK", "LOW_GAS_TRANSACTIONS", "GasWatch", "insufficient_gas", "warn_prices"]

logger = logging.getLogger("dtp.daemon._gas")

GAS_CHECK = 30.0
"""Seconds between two reads of the balance (one ``ListOwnedObjects`` on Sui)."""

GAS_CHECK_OUT = 5.0
"""Seconds between two reads while out of gas: funded again, the daemon resumes soon."""

RECHECK = 1.0
"""Seconds within which a failure's look at the balance takes the last one read."""

LOW_GAS_TRANSACTIONS = 100
"""The default ``low_gas``: this many transactions at the ledger's gas budget."""


def insufficient_gas(address: str, balance: int, budget: int) -> InsufficientFunds:
    """The error of a daemon whose gas ran out: an :class:`InsufficientFunds` named
    ``InsufficientGas``."""
    return InsufficientFunds(
        f"{address} holds {balance} MIST, less than one transaction's gas budget "
        f"({budget} MIST): no claim, settlement or new connection goes through until it "
        "is funded; what is open and paid for goes on",
        name="InsufficientGas",
        module="daemon",
    )


def _coin_shortfall(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it) is a Sui signer's coins not covering a
    transaction (``InsufficientCoinBalance``: the gas budget, plus a deposit if any)."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, InsufficientFunds) and exc.name == "InsufficientCoinBalance":
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


class GasWatch:
    """Reads what ``address`` holds (``read()``, blocking: run in a thread), keeps it
    in ``book.info["gas"]`` and logs each change of state once. ``budget``: MIST one
    transaction may cost (0: the ledger charges no gas); ``low``: the warning threshold
    (None: :data:`LOW_GAS_TRANSACTIONS` budgets). Use from one event loop.

    :meth:`on_funded` registers what is to run when the daemon, out of gas, is funded
    again (the settlements waiting on their backoff are tried then: a fee waits for
    none of it, docs/daemon.md "On Sui")."""

    def __init__(
        self,
        address: str,
        read: Callable[[], int],
        budget: int,
        book: StatusBook,
        low: int | None = None,
        spent: Callable[[], GasSpent] | None = None,
    ) -> None:
        self.address = address
        self.read = read
        self.spent = spent or GasSpent
        """What the daemon paid in gas in this run (the ledger's count)."""
        self.spent_before = _spent_before(book.info.get("gas"))
        """What earlier runs of the state directory paid, carried over."""
        self.budget = budget
        self.low = LOW_GAS_TRANSACTIONS * budget if low is None else low
        self.book = book
        self.balance: int | None = None
        self.state = "unknown"
        self.error: str | None = None
        """Why the last read failed (the ledger away), or None."""
        self._read_at = 0.0
        self._checked: float | None = None  # (wall time of the last good read)
        self._reading: asyncio.Future[None] | None = None
        self._funded: list[Callable[[], None]] = []
        self._show()

    def on_funded(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (in the watch's event loop) each time a read finds the
        daemon, out of gas until then, able to pay for a transaction again."""
        self._funded.append(callback)

    @property
    def out(self) -> bool:
        """Whether the daemon cannot pay for one more transaction (as last read)."""
        return self.state == "out"

    async def run(self) -> None:
        """Read the balance now, then every :data:`GAS_CHECK` seconds (every
        :data:`GAS_CHECK_OUT` while out of gas), until cancelled."""
        while True:
            await self.check(fresh=True)
            await asyncio.sleep(GAS_CHECK_OUT if self.out else GAS_CHECK)

    async def check(self, *, fresh: bool = False) -> str:
        """Read the balance (unless read within :data:`RECHECK` seconds and not
        ``fresh``; a read under way is joined) and update the state; returns it. A
        ledger that cannot be read keeps the last balance and state, the reason shown."""
        if self._reading is not None:
            await asyncio.shield(self._reading)
            return self.state
        if not fresh and time.monotonic() - self._read_at < RECHECK:
            return self.state
        self._reading = asyncio.get_running_loop().create_future()
        try:
            balance = await asyncio.to_thread(self.read)
        except ChainError as exc:
            if self.error is None:
                logger.info("cannot read the gas balance", extra=kv(error=str(exc)))
            self.error = str(exc)
            self._show()
            return self.state
        finally:
            self._read_at = time.monotonic()
            done, self._reading = self._reading, None
            done.set_result(None)
        self.error = None
        self._checked = time.time()
        self._update(balance)
        return self.state

    async def explains(self, exc: BaseException) -> bool:
        """Whether a failed ledger call's ``exc`` is this daemon running out of gas:
        then the watch has logged it, once for the change of state, and the caller logs
        its own failure at debug level. (A deposit the coins cannot cover while the gas
        can is not: the caller reports that one.)"""
        if not self.budget or not _coin_shortfall(exc):
            return False
        return await self.check() == "out"

    def _update(self, balance: int) -> None:
        was, self.balance = self.state, balance
        if self.budget and balance < self.budget:
            state = "out"
        elif self.budget and balance < self.low:
            state = "low"
        else:
            state = "ok"
        self.state = state
        self._show()
        if state == was:
            return
        fields: dict[str, Any] = {"address": self.address, "balance": balance}
        if state == "out":
            error = insufficient_gas(self.address, balance, self.budget)
            logger.error(
                "out of gas",
                extra=kv(
                    **fields,
                    budget=self.budget,
                    error=str(error),
                    error_type=type(error).__name__,
                    name=error.name,
                ),
            )
        elif state == "low":
            logger.warning(
                "gas is running low",
                extra=kv(
                    **fields,
                    low_gas=self.low,
                    transactions=balance // self.budget,
                    hint=f"fund {self.address}",
                ),
            )
        elif was in ("low", "out"):
            logger.info("gas funded again", extra=kv(**fields))
        if was == "out":
            for callback in self._funded:
                try:
                    callback()
                except Exception as exc:  # (the watch goes on: it is the status's too)
                    log_failure(logger, "gas funded: a follow-up failed", exc)

    def spent_total(self) -> dict[str, int]:
        """What the daemon has paid in gas over every run: ``total``, ``transactions``
        and one entry per kind (``ends``, ``opens``, ``host``, ``other``)."""
        now = self.spent()
        shown = {"total": now.total, "transactions": now.transactions}
        for kind in (*END_KINDS, "other"):
            shown[kind] = now.by_kind.get(kind, 0)
        return {key: value + self.spent_before.get(key, 0) for key, value in shown.items()}

    def show_spent(self) -> None:
        """Put what the daemon has paid in gas in the status now (a settlement's gas
        shows at once, not at the next read of the balance)."""
        gas = self.book.info.get("gas")
        if isinstance(gas, dict):
            gas["spent"] = self.spent_total()
            self.book.touch()

    def _show(self) -> None:
        self.book.info["gas"] = {
            "address": self.address,
            "balance": self.balance,
            "budget": self.budget,
            "low_gas": self.low if self.budget else None,
            "state": self.state,
            "error": self.error,
            "checked": self._checked,
            "spent": self.spent_total(),
        }
        self.book.touch()


def _spent_before(gas: object) -> dict[str, int]:
    """What the status file of the last run said the daemon had paid (nothing when it
    says nothing readable)."""
    spent = gas.get("spent") if isinstance(gas, Mapping) else None
    if not isinstance(spent, Mapping):
        return {}
    return {
        str(key): value
        for key, value in spent.items()
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0
    }


def warn_prices(services: Iterable[ServiceConfig], gas: EndGas) -> list[str]:
    """Warn (one line each) about the paid services whose prices do not cover the gas
    of a typical connection's end (:func:`dtp.payments._ends.check_prices`: 1 MiB in one
    request), with the numbers and the prices that would; the names of those warned
    about. Nothing on a ledger that charges no gas, nor for a free service."""
    warned: list[str] = []
    for service in services:
        check = check_prices(service.sla(), gas)
        if check is None or check.covered:
            continue
        fields: dict[str, Any] = {
            "service": service.name,
            "price_per_kib": service.price_per_kib,
            "price_per_request": service.price_per_request,
            "typical": f"{TYPICAL_BYTES // 1024} KiB in {TYPICAL_REQUESTS} request",
            "typical_fee": check.typical_fee,
            "end_gas": check.end_gas,
            "gas_estimated_from": "this daemon's settlements"
            if gas.observed
            else "the network's gas price",
        }
        if check.bytes_needed is not None:
            fields["bytes_needed"] = check.bytes_needed
        fields["hint"] = (
            f"price_per_request = {check.end_gas} alone covers every connection's end "
            "(a connection that carries anything makes one request at least)"
        )
        logger.warning("prices below the gas of a connection's end", extra=kv(**fields))
        warned.append(service.name)
    return warned
