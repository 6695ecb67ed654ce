"""Fee and receipt accounting of the daemon (what it does, when it claims and settles:
docs/daemon.md, "How it works", "Fees"), behind two small classes so that the shared
in-band metering runtime can replace them later without touching the tunnels.

- :class:`ClientFees` (forwarder side): counts tunnel bytes and tunnels on a
  :class:`dtp.payments.receipts.Meter` and hands out signed cumulative receipts, sent
  on stream 0 as :meth:`dtp.ledger.receipt.Receipt.encode` records of
  :data:`RECEIPT_SIZE` bytes.
- :class:`ServerFees` (daemon side): checks each receipt, keeps the newest in a
  :class:`ReceiptStore` (durable before it counts anywhere, written by a
  :class:`dtp.payments._receipt_writer.ReceiptWriter` thread so that the fsync never
  stalls the event loop), claims it as it falls due (:meth:`ServerFees.run_claims`) and
  settles the connection at its end; :meth:`ServerFees.claim_leftovers` takes up what a
  crashed daemon left. Each settlement's :class:`Settled` says what it moved, on which
  service port, and whether it is done: :class:`dtp.daemon._settlements.Settlements`
  counts it and retries one not done.

Ledger calls block: the async methods run them in worker threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from dtp.errors import ChainError, DTPError, ObjectNotFound
from dtp.hostid.udp import DEFAULT_LOSS_ALLOWANCE, UdpBilling
from dtp.ledger._connections import half_close_timeout_ms
from dtp.ledger._objects import Escrow, Settlement, Sla, TransportControl, normalize_id
from dtp.ledger.receipt import RECEIPT_ENCODED_SIZE, Receipt, ReceiptScope, fee
from dtp.payments._ends import EndBatch, EndChoice, EndDeferred, EndLeft, EndRule
from dtp.payments._live_claims import CLAIM_RETRY, ClaimRule, LiveClaim, LiveClaims, claim_live
from dtp.payments._live_claims import END_WAIT as CLAIM_END_WAIT
from dtp.payments._receipt_writer import ReceiptWriter
from dtp.payments._settlement import end_connection, settle_deferred
from dtp.payments.metering import MeteringConfig
from dtp.payments.receipt_store import ReceiptStore
from dtp.payments.receipts import ConnectionTerms, Meter, check_receipt

if TYPE_CHECKING:
    from dtp.daemon._gas import GasWatch
    from dtp.hostid._admission import Admitted
    from dtp.identity.keys import HostIdentity
    from dtp.ledger.interface import Ledger

__all__ = ["OWN_BILLING", "RECEIPT_SIZE", "ClientFees", "ConnectionTerms", "ServerFees", "Settled"]

from dtp.daemon._logs import kv

logger = logging.getLogger("dtp.daemon._fees")

RECEIPT_SIZE = RECEIPT_ENCODED_SIZE

OWN_BILLING = MeteringConfig(enabled=False)
"""The metering the daemon's forwarders connect with: the daemon bills its tunnels
itself (this module, docs/udp.md), so no transport receipts on top."""


RECEIPT_MS = 1000
"""A forwarder's receipt cadence in time: at most this long after the last receipt while
usage is unpaid (looked at as bytes are counted, and by the connection's timer)."""


REQUESTS_PER_RECEIPT = 8
"""A forwarder's receipt cadence in requests (tunnels) on a service priced by the
request: half the requests a daemon lets run ahead of the receipts
(``dtp.daemon._served_tunnels.UNPAID_REQUESTS``)."""


def _now_ms() -> int:
    return int(time.monotonic() * 1000)


#: Seconds a settlement waits for the connection's newest receipt to reach the disk
#: before claiming it anyway (from the writer's queue).
SETTLE_FLUSH_WAIT = 2.0


class ClientFees:
    """The forwarder's meter for one DTP connection (free services: no receipts)."""

    def __init__(
        self,
        identity: HostIdentity,
        scope: ReceiptScope,
        sla: Sla,
        deposit: int,
        every_bytes: int,
    ) -> None:
        self.paid = sla.paid
        self.meter = Meter(
            identity,
            scope,
            sla,
            deposit,
            every_bytes=every_bytes,
            # (a daemon holds new tunnels once more than UNPAID_REQUESTS of them are
            # ahead of the receipts: signed every few, honest tunnels never wait)
            every_requests=REQUESTS_PER_RECEIPT if sla.price_per_request else 0,
            every_ms=RECEIPT_MS,
        )

    def record(self, nbytes: int = 0, requests: int = 0) -> Receipt | None:
        """Count usage; a receipt to send when one is due. Raises
        :class:`dtp.errors.InsufficientFunds` when the deposit does not cover it."""
        if not self.paid:
            return None
        return self.meter.record(_now_ms(), nbytes, requests)

    def affordable(self, nbytes: int = 0, requests: int = 0) -> bool:
        """Whether the deposit still covers this much more usage."""
        if not self.paid:
            return True
        meter = self.meter
        cost = fee(meter.sla, meter.total_bytes + nbytes, meter.total_requests + requests)
        return cost <= meter.deposit

    def affordable_bytes(self) -> int:
        """How many more bytes the deposit covers (free services: no limit, as 2**64)."""
        return self.meter.affordable_bytes() if self.paid else 1 << 64

    def flush(self) -> Receipt | None:
        """A receipt for all usage so far, unless one already covers it."""
        return self.meter.flush(_now_ms()) if self.paid else None

    def poll(self) -> Receipt | None:
        """A receipt when the cadence says so now, with no new usage (a timer's look:
        the time cadence is otherwise looked at only as bytes are counted)."""
        return self.meter.poll(_now_ms()) if self.paid else None


@dataclass(frozen=True)
class Settled:
    """The outcome of closing one connection on the ledger. Its value is what moved
    (``claimed``, ``refunded``); ``port`` and ``done`` say where to count it and whether
    to try again, ``choice`` and ``fee`` what became of an end not worth its own
    transaction; they take no part in comparisons."""

    claimed: int
    """MIST paid to the daemon's host by this call."""
    refunded: int
    """MIST returned to the client (0 if the settlement did not happen here)."""
    port: int | None = field(default=None, compare=False)
    """The connection's service port, when this call read the connection on the ledger
    (always, when it claimed or refunded anything without being given the escrow)."""
    done: bool = field(default=False, compare=False)
    """Whether the connection is settled now (here, earlier, or by its client), or
    left to its client, or waiting for a batch: False when a step failed and the
    settlement is still to do (a retry's, or the next start's)."""
    choice: EndChoice = field(default=EndChoice.SETTLE, compare=False)
    """What became of the end: settled (or failed: see ``done``), waiting in the batch
    (counted once the batch settles or leaves it), or left to its client (its fee
    below the gas of claiming it: the client gets it back when it settles)."""
    fee: int = field(default=0, compare=False)
    """The fee of an end left to its client or waiting in the batch."""

    @property
    def moved(self) -> dict[str, int]:
        """What moved, as the log lines give it."""
        return {"claimed": self.claimed, "refunded": self.refunded}


class ServerFees:
    """The daemon's receipts: checked, stored, claimed. Use from one event loop."""

    def __init__(
        self,
        ledger: Ledger,
        identity: HostIdentity,
        host_id: str,
        path: Path,
        *,
        gas: GasWatch | None = None,
        rule: EndRule | None = None,
        claims: ClaimRule | None = None,
    ) -> None:
        self.ledger = ledger
        self.gas = gas
        """The daemon's gas watch: a claim failing for want of gas is logged by it
        (once, not per connection)."""
        self.identity = identity
        self.host_id = host_id
        self.store = ReceiptStore(path)
        self.writer = ReceiptWriter(self.store)
        self.rule = rule or EndRule()
        """How a connection's end is weighed against its gas."""
        self.batch = EndBatch(self.rule)
        """The ends waiting to be settled together (:meth:`settle_batch`)."""
        # per live connection: the newest receipt checked (perhaps not stored yet) and
        # the MIST already claimed, so a receipt is checked without a read of the store
        self._checked: dict[str, tuple[Receipt | None, int]] = {}
        self.claims = LiveClaims(claims or ClaimRule())
        """The claims of the served connections' receipts while they live
        (:meth:`run_claims`, docs/escrow.md §7.1)."""
        # the claim of each connection under way (its end waits for it), and what wakes
        # run_claims when a receipt stored may make a claim due (set once it runs)
        self._claiming: dict[str, asyncio.Future[LiveClaim | None]] = {}
        self._claim_wake: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None
        self._ports: dict[str, int] = {}  # (each watched connection's service port)
        self.writer.on_stored = self._stored

    async def terms(
        self, connection_id: str, admitted: Admitted | None = None, *, served: bool = False
    ) -> ConnectionTerms:
        """A connection's fee terms: from what its admission read (``admitted``: on Sui
        every read is a round trip to the node), else read from the ledger. ``served``
        (it is served from now on): its receipts are claimed while it lives, until
        :meth:`settle` ends it."""
        if admitted is not None and admitted.of(connection_id):
            tc, escrow = admitted.connection, admitted.escrow
        else:
            tc, escrow = await asyncio.to_thread(self._objects, connection_id)
        if not served:
            return ConnectionTerms.from_objects(tc, escrow, self.ledger.package_id)
        self._ports[tc.id] = tc.port
        self.claims.watch(
            tc.id,
            escrow.id,
            half_close_timeout_ms(tc),
            time.monotonic(),
            claimed=escrow.claimed,
            latest_nonce=escrow.latest_nonce,
        )
        return ConnectionTerms.from_objects(tc, escrow, self.ledger.package_id)

    def _objects(self, connection_id: str) -> tuple[TransportControl, Escrow]:
        tc = self.ledger.get_connection(connection_id)
        return tc, self.ledger.get_escrow(tc.escrow)

    def _stored(self, receipt: Receipt) -> None:
        """A receipt is on disk (the writer's thread): :meth:`run_claims` looks when it
        may make a claim due."""
        if self.claims.kept(receipt, time.monotonic()) and self._claim_wake is not None:
            loop, wake = self._claim_wake
            with contextlib.suppress(RuntimeError):  # (the loop is gone)
                loop.call_soon_threadsafe(wake.set)

    async def run_claims(self, claimed: Callable[[str, LiveClaim, int | None], None]) -> None:
        """Claim the served connections' receipts while they live, as the claims fall
        due (:class:`~dtp.payments._live_claims.LiveClaims`), one at a time, each in a
        worker thread; ``claimed(connection_id, claim, port)`` counts each one made (on
        the connection's service port). Until cancelled (a claim under way then goes
        on: its connection's end waits for it)."""
        wake = asyncio.Event()
        self._claim_wake = (asyncio.get_running_loop(), wake)
        while True:
            wake.clear()
            now = time.monotonic()
            at = self.claims.next_due(now)
            if at is None or at > now:
                # (asyncio.timeout, not wait_for: see Settlements._retry_loop)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(None if at is None else at - now):
                        await wake.wait()
                continue
            try:
                gas = await asyncio.to_thread(self.ledger.end_gas)
            except ChainError as exc:
                logger.debug("live claims wait: the gas cannot be read", extra=kv(error=str(exc)))
                await asyncio.sleep(CLAIM_RETRY)
                continue
            for due in self.claims.due(time.monotonic(), gas):
                if not self.claims.still_due(due):
                    continue  # (its end began meanwhile: released)
                cid = due.connection_id
                job = asyncio.ensure_future(
                    asyncio.to_thread(claim_live, self.ledger, self.identity, self.claims, due)
                )
                self._claiming[cid] = job
                job.add_done_callback(functools.partial(self._claim_over, cid))
                claim = await asyncio.shield(job)
                if claim is None:
                    continue
                known = self._checked.get(cid)
                if known is not None:
                    self._checked[cid] = (known[0], max(known[1], claim.total_amount))
                claimed(cid, claim, self._ports.get(cid))

    def _claim_over(self, connection_id: str, _: asyncio.Future[LiveClaim | None]) -> None:
        self._claiming.pop(connection_id, None)

    async def _claims_ended(self, connection_id: str) -> None:
        """No claim of ``connection_id`` while it lives from now on (its settlement
        follows); one under way is waited for, up to its end's wait."""
        key = normalize_id(connection_id, "connection ID")
        if self.claims.end(key) is None:
            if (job := self._claiming.get(key)) is not None:
                await asyncio.wait({job}, timeout=CLAIM_END_WAIT)
            self.claims.end(key, abandon=True)
        self._ports.pop(key, None)

    def accept(
        self, terms: ConnectionTerms, data: bytes, on_kept: Callable[[Receipt], None]
    ) -> Receipt:
        """Check one encoded receipt and have it stored; raises :class:`InvalidReceipt`
        (with the ``escrow::claim`` error name) when it would not be claimable.
        ``on_kept(receipt)`` runs on this event loop once the receipt is on disk (only
        then does it count); a newer receipt may replace it before that."""
        receipt = Receipt.decode(data)
        cid = terms.connection_id
        known = self._checked.get(cid)
        if known is None:
            stored = self.store.latest(cid)
            known = (stored.receipt, stored.claimed_amount) if stored else (None, 0)
        newest, claimed = known
        check_receipt(
            receipt,
            scope=terms.scope,
            sla=terms.sla,
            public_key=terms.client_public_key,
            deposited=terms.deposited,
            # nor below the newest receipt: a later, smaller one would become the one
            # held (and claimed) in place of the one the client was served on
            claimed=max(claimed, newest.total_amount if newest else 0),
            latest_nonce=newest.nonce if newest else 0,
        )
        self._checked[cid] = (receipt, claimed)
        loop = asyncio.get_running_loop()

        def kept(stored: Receipt) -> None:  # in the writer's thread
            loop.call_soon_threadsafe(on_kept, stored)

        self.writer.submit(receipt, kept)
        return receipt

    def udp_billing(
        self,
        terms: ConnectionTerms,
        credit_datagrams: int,
        on_kept: Callable[[Receipt], None],
        loss_allowance: float = DEFAULT_LOSS_ALLOWANCE,
    ) -> UdpBilling:
        """The billing of a UDP flow on ``terms``: its receipts are stored as
        :meth:`accept` stores them, and each counts (pays for datagrams, extends the
        credit) once it is on disk, when ``on_kept(receipt)`` runs too."""
        billing: UdpBilling

        def kept(receipt: Receipt) -> None:
            billing.kept(receipt)
            on_kept(receipt)

        def keep(receipt: Receipt) -> None:
            try:
                self.accept(terms, receipt.encode(), kept)
            except DTPError as exc:  # checked already; the store may disagree
                logger.warning("UDP receipt not kept", extra=kv(error=str(exc)))

        billing = UdpBilling(
            terms.scope,
            terms.sla,
            terms.client_public_key,
            terms.deposited,  # (reserved on the client's cap: claimable whole)
            credit_datagrams=credit_datagrams,
            loss_allowance=loss_allowance,
            on_receipt=keep,
            counts_when_kept=True,
        )
        return billing

    def owed(self, connection_id: str) -> int:
        """MIST the newest receipt checked of a live connection can still claim (0 for
        one this run has no receipt of in memory): what the status calls owed."""
        known = self._checked.get(connection_id)
        if known is None or known[0] is None:
            return 0
        return max(0, known[0].total_amount - known[1])

    def held(self, connection_id: str) -> Receipt | None:
        """The newest receipt of a connection checked so far (stored, or being)."""
        known = self._checked.get(connection_id)
        if known is not None:
            return known[0]
        stored = self.store.latest(connection_id)
        return stored.receipt if stored else None

    async def settle(
        self, connection_id: str, escrow_id: str | None = None, *, quiet: bool = False
    ) -> Settled:
        """End a connection on the ledger: claim the latest receipt and settle, refunding
        the client the rest, in one transaction (``settle_with_receipt``; closing it
        when still Open) -- its gas weighed first (:attr:`rule`, docs/escrow.md §7.1):
        one whose fee does not cover the gas of that transaction waits in
        :attr:`batch` to be settled with others, or is left to its client (no
        transaction; the outcome's ``fee`` is the fee given up). Never raises (but a
        cancellation): a failure -- a ledger refusal, the store unreadable, a bug -- is
        logged (a traceback for one that is no :class:`DTPError`; at debug level when
        ``quiet``, a retry's repeat), the outcome says it is not ``done``, and its
        receipt stays unclaimed in the store for a retry or the next start's
        :meth:`claim_leftovers`: a receipt is marked claimed only once its connection
        is settled, so one an earlier run claimed without settling is settled then (its
        claim found on the ledger, not made twice, not counted twice). Raised, it would
        skip the caller's bookkeeping after it, and end a start's recovery before the
        other connections. (``escrow_id``: the connection's escrow, when known; read
        again all the same, with the connection.)"""
        level = logging.DEBUG if quiet else logging.WARNING
        watched = self._ports.get(connection_id)  # (its port, if served: forgotten next)
        await self._claims_ended(connection_id)
        # its newest receipt on disk first, as a rule (its callbacks have run when this
        # returns), but not for long: a failing store held this up for the writer's
        # whole flush timeout, and then the claim took an older receipt. The newest,
        # written or still queued, is claimed either way: the claim on the ledger is
        # its durable copy
        try:
            await asyncio.to_thread(self.writer.flush, connection_id, SETTLE_FLUSH_WAIT)
            self.writer.latest(connection_id)  # (readable, or the settlement waits)
        except Exception as exc:
            # (a ReceiptStoreError, a MalformedReceipt: its row damaged) settled without
            # its latest receipt, the client would be refunded what it owes
            _failed("settle postponed: its receipt cannot be read", connection_id, exc, level)
            return Settled(0, 0)
        finally:
            self._checked.pop(connection_id, None)
        ports: list[int] = []

        def end() -> Settlement | EndLeft | EndDeferred | None:
            tc: TransportControl | None
            try:
                tc = self.ledger.get_connection(connection_id)
            except ObjectNotFound:
                # (settled and deleted by its client, docs/escrow.md §7: end_connection
                # reads the settlement's event and writes the receipt off)
                tc = None
                if watched is not None:
                    ports.append(watched)
            else:
                ports.append(tc.port)
            return end_connection(
                self.ledger,
                self.identity,
                connection_id,
                self.writer,
                rule=self.rule,
                batch=self.batch,
                now=time.monotonic(),
                connection=tc,
            )

        try:
            outcome = await asyncio.to_thread(end)
        except Exception as exc:
            if self.gas is not None and await self.gas.explains(exc):
                level = logging.DEBUG  # (the daemon out of gas: reported once, by the watch)
            if isinstance(exc, ChainError):
                # (a refusal, the ledger away: the daemon's settlements warn once)
                logger.log(
                    min(level, logging.INFO),
                    "settle skipped",
                    extra=kv(connection=connection_id, reason=str(exc)),
                )
            else:
                _failed("settle failed", connection_id, exc, level)
            return Settled(0, 0, ports[-1] if ports else None, False)
        port = ports[-1] if ports else None
        if isinstance(outcome, Settlement):
            return Settled(outcome.paid, outcome.refunded, port, True)
        if isinstance(outcome, EndLeft):
            return Settled(0, 0, port, True, EndChoice.LEAVE, outcome.fee)
        if isinstance(outcome, EndDeferred):
            return Settled(0, 0, port, True, EndChoice.BATCH, outcome.fee)
        return Settled(0, 0, port, True)  # (settled already, its receipt written off)

    async def settle_batch(
        self, *, final: bool = False
    ) -> tuple[list[tuple[str, Settlement]], list[tuple[str, EndLeft]]]:
        """The ends waiting in :attr:`batch`: settled in one transaction once their
        fees cover its gas, left to their clients once their window ended (``final``:
        every window, the daemon stopping). Never raises (but a cancellation): a ledger
        that cannot be read or a batch it refuses leaves them waiting, their receipts
        unclaimed in the store (the next start weighs them again)."""
        if not len(self.batch):
            return [], []

        def flush() -> tuple[list[tuple[str, Settlement]], list[tuple[str, EndLeft]]]:
            plan = self.batch.plan(time.monotonic(), self.ledger.end_gas(), final=final)
            if not plan:
                return [], []
            return settle_deferred(self.ledger, self.identity, self.writer, plan, self.batch)

        try:
            return await asyncio.to_thread(flush)
        except Exception as exc:
            logger.warning(
                "the ends waiting for a batch are not settled yet",
                extra=kv(error=str(exc) or type(exc).__name__),
                exc_info=not isinstance(exc, DTPError),
            )
            return [], []

    async def claim_leftovers(
        self,
        stopped: Callable[[], bool] | None = None,
        settle: Callable[[str], Awaitable[Settled]] | None = None,
    ) -> list[tuple[str, Settled]]:
        """Claim and settle every stored receipt with MIST still unclaimed (after a
        restart nothing is live yet). Once ``stopped()`` is true no further connection
        is started on (those left stay in the store); returns the outcome of each one
        tried. ``settle(connection_id)`` settles one (default :meth:`settle`; the
        daemon's counts what it moved, and retries it when it failed)."""
        settle = settle or self.settle
        done: list[tuple[str, Settled]] = []
        for stored in list(self.store.unclaimed()):
            if stopped is not None and stopped():
                break
            cid = stored.receipt.connection_id
            done.append((cid, await settle(cid)))
        return done

    def close(self) -> None:
        """Stop the receipt writer, then close the store, as a paid server's release
        does (:func:`dtp.payments._serving.release_receipts`): a writer still writing after the wait
        keeps the store open under it (closed, the receipts it holds would be dropped), and
        receipts it gave up are logged whole for a claim by hand."""
        from dtp.payments._serving import release_receipts  # (the paid servers': loaded late)

        release_receipts(self.writer, self.store, own_store=True)


def _failed(what: str, connection_id: str, exc: Exception, level: int = logging.WARNING) -> None:
    """Log a settlement step that failed: a :class:`DTPError` (a ledger refusal, the
    store unreadable) by its message, anything else (a bug, an error the ledger did not
    wrap) with its traceback."""
    logger.log(
        level,
        what,
        extra=kv(connection=connection_id, error=str(exc) or type(exc).__name__),
        exc_info=not isinstance(exc, DTPError),
    )
