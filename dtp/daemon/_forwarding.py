"""What the daemon's two forwards share (:class:`dtp.daemon._forwarder.Forwarder` over
TCP, :class:`dtp.daemon._udp_forward.UdpForward` over UDP): what each is given, its row
in the status book, its clock, and the look at the target before a new connection
(:mod:`dtp.daemon._outage`), so that the way to a new connection is written once."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Awaitable, Callable
from typing import ClassVar

from dtp.daemon._config import ForwardConfig
from dtp.daemon._gas import GasWatch
from dtp.daemon._logs import kv
from dtp.daemon._outage import (
    PROBE_TIMEOUT,
    ForwardDeposits,
    OpenBackoff,
    TargetUnreachable,
)
from dtp.daemon._refunds import Refunds
from dtp.daemon._state import ForwardStats, StatusBook
from dtp.errors import ChainError, DTPError, TunnelError
from dtp.hostid._address import HostAddress
from dtp.identity.keys import HostIdentity
from dtp.ledger.interface import Ledger

#: :func:`dtp.daemon._outage.probe_target`'s kind: (ledger, target, timeout) -> answered
Probe = Callable[[Ledger, HostAddress, float], Awaitable[bool]]


class Forward:
    """A forward of the daemon: listens on ``config.listen`` and reaches
    ``config.target`` over DTP connections it opens on the ledger. ``clock``: the
    seconds its backoff is given as ``now`` (a test's own; the event loop's by
    default)."""

    #: the logger its lines go to (its module's)
    _log: ClassVar[logging.Logger]
    #: whether a ledger that refuses the target's read counts as a denial in its row
    _LEDGER_DENIALS: ClassVar[bool]

    def __init__(
        self,
        config: ForwardConfig,
        ledger: Ledger,
        identity: HostIdentity,
        book: StatusBook,
        *,
        gas: GasWatch | None = None,
        refunds: Refunds | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.identity = identity
        self.book = book
        self.gas = gas
        """The daemon's gas watch: an open failing for want of gas is its to report."""
        self.refunds = refunds
        """The daemon's book of connections, each written there before its deposit
        moves and settled by it once no link uses it (None: none kept)."""
        self.backoff = OpenBackoff()
        """When the next connection may be tried, after failures (an outage)."""
        self.deposits = ForwardDeposits(config.name, ledger, refunds)
        """Which deposit the next connection goes with (one locked at a time)."""
        self.opens_in_flight = 0
        """New DTP connections being opened now (probe, ledger open, handshake)."""
        self.clock = clock
        self._own_fields()

    def _own_fields(self) -> None:
        """Set what the forward holds of its own (its listener, its connections)."""
        raise NotImplementedError

    @property
    def stats(self) -> ForwardStats:
        # the row is shared by name with the forwards a reload put in our place: its
        # target is set once, at start (set here, a retired forward's last receipts put
        # its old target back in the status)
        return self.book.forward(self.config.name)

    def _now(self) -> float:
        return self.clock() if self.clock is not None else asyncio.get_running_loop().time()

    def _backed_off(
        self, exc: BaseException, *, spent: bool, quiet: bool = False, said: bool = True
    ) -> bool:
        """No new connection until the backoff after this failed open has passed; said
        (unless not ``said``) at debug level when ``quiet``, or when it spent nothing and
        repeats the last failure (a held connection refused again, a deposit still on its
        way back); ``spent``: its transactions went through. Returns whether quietly."""
        quiet = quiet or (not spent and self.backoff.repeats(exc))
        delay = self.backoff.failed(self._now(), exc, spent=spent)
        if said:
            self._log.log(
                logging.DEBUG if quiet else logging.WARNING,
                "cannot open a connection",
                extra=kv(
                    forward=self.config.name,
                    error=str(exc) if isinstance(exc, DTPError | OSError) else repr(exc),
                    retry_in=delay,
                ),
            )
        return quiet

    async def _probe_by(self, probe: Probe) -> None:
        """The look at the target (by ``probe``) before anything is spent on the
        ledger: raises :class:`TargetUnreachable` (the backoff counted, the outage's
        start logged once) when its endpoint does not answer."""
        target = self.config.target
        timeout = min(PROBE_TIMEOUT, self.config.open_timeout)
        try:
            await probe(self.ledger, target, timeout)
        except (ChainError, OSError, sqlite3.Error) as exc:
            # the Host's read: refused (no such host: a denial, as an open's), or the
            # ledger failing (a LocalLedger's disk): the tunnel's error, not a raw one
            if self._LEDGER_DENIALS and isinstance(exc, ChainError):
                self.stats.deny("ledger")
            raise TunnelError(f"cannot connect to {target}: {exc}") from exc
        except TargetUnreachable as exc:
            delay, began = self.backoff.unreachable(self._now(), exc)
            self._log.log(
                logging.WARNING if began else logging.DEBUG,
                "target unreachable: no connection is opened on the ledger until it answers",
                extra=kv(forward=self.config.name, error=str(exc), retry_in=delay),
            )
            raise
        if self.backoff.reached():
            self._log.info("target reachable again", extra=kv(forward=self.config.name))
