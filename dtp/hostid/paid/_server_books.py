"""The books both paid servers keep, made once: the receipt store and its writer, the
claims made while connections live, the settlements and what they left, the retries
of failed ones and the ends waiting for a batch, and the server-wide rules
(:class:`~dtp.hostid.paid._server_core.PaidServerCore`) that record into them.

:class:`ServerBooks` is the base of the blocking
(:class:`~dtp.hostid.paid._blocking_server.PaidServer`) and the asyncio
(:class:`~dtp.hostid.paid._asyncio_server.PaidAioServer`) server: what it makes is the
same in both; when a settlement runs (inline, or in the loop's executor) is theirs.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from dtp.hostid.paid._server_core import SETTLEMENTS_KEPT, PaidServerCore, _Served
from dtp.hostid.paid._server_steps import release_store, writer_done
from dtp.payments._live_claims import LiveClaim, LiveClaimer, LiveClaims
from dtp.payments._receipt_writer import ReceiptWriter
from dtp.payments._serving import (
    DeferredEnds,
    Recovery,
    SettlementRetries,
    recover_store,
    settle_ended,
)

if TYPE_CHECKING:
    from dtp.hostid._admission import Admitted
    from dtp.hostid.paid._policy import ServicePolicy
    from dtp.hostid.paid._server_admission import PaidAdmission
    from dtp.identity.keys import HostIdentity
    from dtp.ledger._objects import Settlement
    from dtp.ledger.interface import Ledger
    from dtp.ledger.receipt import Receipt
    from dtp.payments._ends import EndDeferred, EndLeft
    from dtp.payments._gate import ConnectionIds
    from dtp.payments._ratelimit import RateLimiter
    from dtp.payments.receipt_store import ReceiptStore

__all__ = ["ServerBooks", "Settling"]

_C = TypeVar("_C", bound=_Served)

Settling = Callable[[], "Settlement | EndLeft | EndDeferred | None"]
"""A settlement of one ended connection, ready to run (a ledger transaction)."""


class ServerBooks(Generic[_C]):
    """What a paid server keeps of the money of the connections it serves (``_C``: its
    served connection's class)."""

    ledger: Ledger
    identity: HostIdentity
    policy: ServicePolicy
    core: PaidServerCore[_C]
    limiter: RateLimiter
    settlements: deque[tuple[str, Settlement]]
    left: deque[tuple[str, EndLeft]]
    _serving: ConnectionIds
    store: ReceiptStore
    _own_store: bool
    receipt_writer: ReceiptWriter
    live_claims: deque[tuple[str, LiveClaim]]
    claimer: LiveClaimer
    retries: SettlementRetries
    deferred: DeferredEnds
    _recovery: Recovery | None
    recovered: list[tuple[str, Settlement]]
    admission: PaidAdmission[Any] | None

    def _keep_books(
        self,
        ledger: Ledger,
        identity: HostIdentity,
        policy: ServicePolicy,
        store: ReceiptStore,
        own_store: bool,
    ) -> None:
        """Make the books on ``store`` (closed with the server when ``own_store``)."""
        self.core = PaidServerCore(policy)
        self.ledger = ledger
        self.identity = identity
        self.policy = policy
        self.limiter = self.core.limiter
        self.settlements = self.core.settlements
        """The most recent settlements: (connection ID, outcome)."""
        self.left = self.core.left
        """The most recent ends left to their clients: (connection ID, fee and gas)."""
        self._serving = self.core.serving
        self.store = store
        self._own_store = own_store
        self.receipt_writer = ReceiptWriter(store)
        self.live_claims = deque(maxlen=SETTLEMENTS_KEPT)
        """The most recent claims made while connections lived (docs/escrow.md §7.1):
        (connection ID, claim)."""
        #: The claims of receipts while their connections live, in a thread of its own
        self.claimer = LiveClaimer(
            ledger, identity, LiveClaims(policy.claim_rule), self.live_claims
        )
        self.receipt_writer.on_stored = self.claimer.kept
        #: The settlements that failed, retried by the recovery thread (it reserves
        #: each connection ID in ``_serving`` as a DTP connection would)
        self.retries = SettlementRetries(
            ledger, identity, self.receipt_writer, self._serving, self.settlements
        )
        #: The ends waiting to be settled together (their fees below a transaction's
        #: gas), settled or left in the recovery rounds and at the release
        self.deferred = DeferredEnds(
            ledger, identity, self.receipt_writer, policy.end_rule, self.settlements, self.left
        )
        self._recovery = None  # (once the start's recovery is done)
        self.recovered = []
        """(connection ID, settlement) of what dead server runs left unclaimed: at the
        start, then every :data:`~dtp.payments._serving.RECOVERY_INTERVAL` (this
        server's own settlements retried then go to :attr:`settlements`)."""

    def _take_admitted(self, cid: str) -> Admitted | None:
        """What admission read of ledger connection ``cid``, taken (None: read again)."""
        return None if self.admission is None else self.admission.take_view(cid)

    def _opening(
        self, cid: str | None, client: str | None, log: logging.Logger
    ) -> tuple[Admitted | None, str | None]:
        """A connection the DTP server handed over: what admission read of it (taken
        first, whatever follows: one refused leaves no entry), and the reason to abort
        it with (:meth:`PaidServerCore.serve_refusal`, its warning logged on ``log``,
        the server's own logger) or None, its ID reserved, to serve it."""
        admitted = None if cid is None else self._take_admitted(cid)
        refused = self.core.serve_refusal(cid, client)
        if refused is None:
            return admitted, None
        if refused.warning is not None:
            log.warning(refused.warning)
        return admitted, refused.reason

    def _recovered(self, alone: bool) -> list[tuple[str, Settlement]]:
        """Claim what dead server runs left unclaimed in the store, attached by this
        server (``alone``: by this server only): a ledger transaction each, the ends
        whose fees are below their gas left to :attr:`deferred`."""
        return recover_store(self.ledger, self.identity, self.store, alone, deferred=self.deferred)

    def _make_recovery(self) -> Recovery:
        """The recovery thread (made, not started): it claims again what :meth:`_recover`
        found and the settlements that failed, and settles the deferred ends."""
        self._recovery = Recovery(
            self.ledger, self.identity, self.store, self.recovered, self.retries, self.deferred
        )
        return self._recovery

    def _release_books(self, claims_wait: float, recovery_wait: float | None = None) -> None:
        """The release of a closed server with no work left: the live claims end
        (waited for ``claims_wait`` seconds at most: every connection has ended, none is
        due), then :func:`~dtp.hostid.paid._server_steps.release_store`."""
        self.claimer.join(claims_wait)
        release_store(
            self.core,
            self.receipt_writer,
            self.store,
            self._own_store,
            self._recovery,
            recovery_wait,
        )

    def _writer_done(self, wait: float) -> bool:
        """After the release: whether the receipt writer no longer uses the store
        (:func:`~dtp.hostid.paid._server_steps.writer_done`)."""
        return writer_done(self.receipt_writer, wait)

    def _settling(
        self,
        cid: str,
        final: Receipt | None,
        known: Admitted | None = None,
        final_is_newest: bool = False,
    ) -> Settling:
        """The settlement of ended connection ``cid`` (``final``: the receipt its CLOSE
        came with; ``known``: what admission read of it; ``final_is_newest``: as
        :func:`~dtp.payments._settlement.claim_and_settle`'s), made now, to run where the
        server runs ledger transactions."""
        return functools.partial(
            settle_ended,
            self.ledger,
            self.identity,
            cid,
            self.receipt_writer,
            final,
            escrow=None if known is None else known.escrow,
            connection=None if known is None else known.connection,
            rule=self.deferred.rule,
            batch=self.deferred.batch,
            now=time.monotonic(),
            claims=self.claimer,
            final_is_newest=final_is_newest,
        )

    def _record(self, cid: str, settlement: Settlement | EndLeft | EndDeferred | None) -> None:
        """Record how the settlement of ``cid`` ended; one that claimed nothing is
        retried by the recovery thread."""
        if not self.core.settled(cid, settlement):
            self.retries.add(cid)
