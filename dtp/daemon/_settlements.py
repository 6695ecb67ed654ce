"""The services daemon's settlements: every claim and refund of the connections it
served or refused goes through :class:`Settlements`, which counts it in the status once
(``fees_claimed``, ``refunded``, ``fees_earned``, ``receipts_held``) and tries a failed one
again until it lands or the daemon stops."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from dtp.daemon._config import ServiceConfig
from dtp.daemon._fees import ServerFees, Settled
from dtp.daemon._gas import GasWatch
from dtp.daemon._logs import kv, log_failure
from dtp.daemon._served import ServedConnection, service_row
from dtp.daemon._state import ServiceStats, StatusBook
from dtp.daemon._tasks import cancel_and_wait
from dtp.hostid._served import ServedConnections
from dtp.ledger.receipt import Receipt
from dtp.payments._ends import EndChoice
from dtp.payments._live_claims import LiveClaim

__all__ = ["SETTLE_RETRY", "SETTLE_RETRY_MAX", "ServedSide", "Settlements", "next_settle_retry"]

logger = logging.getLogger("dtp.daemon._services")  # (the exposing side logs under one name)

SETTLE_RETRY = 30.0
"""Seconds after a failed settlement (the ledger away, a refusal) before it is tried
again, doubled after each failure up to :data:`SETTLE_RETRY_MAX`
(:func:`next_settle_retry`); tried at once when the Host can be read again after an
outage, or the daemon's gas is funded again. Left for the next start, it could come
too late: the connection's half-close timeout (10 min unless the service set longer)
after a half-close, the client may settle alone and take its whole deposit back, the
receipted fee lost."""

SETTLE_RETRY_MAX = 60.0
"""The longest wait between two tries of a settlement: whenever the client's
half-close timeout ends, the last try before it came at most this long before (with 4
minutes, the tries after a failure at a half-close came at 30, 90, 210, 450 and 690 s:
a ledger back at 460 s waited past the 600 s at which the client could settle alone,
tests/daemon/test_settlement_retry_deadline.py)."""


BATCH_CHECK = 5.0
"""Seconds between two looks at the ends waiting to be settled together (whether
their batch pays for itself yet, whether a window ended)."""


def next_settle_retry(delay: float) -> float:
    """Seconds before the next try of a settlement that failed again, ``delay`` the
    wait before this try: twice that, at most :data:`SETTLE_RETRY_MAX`."""
    return min(2 * delay, SETTLE_RETRY_MAX)


@dataclass
class Retry:
    """A connection whose settlement failed, to be tried again."""

    escrow_id: str | None
    service: ServiceConfig | None
    """The service its outcome is counted under (None: found by its port)."""
    delay: float
    """Seconds between the last failure and the next try."""
    due: float
    """When (the loop's clock) it is tried next."""
    served: bool = False
    """Whether its receipts were earned in this run (see :meth:`Settlements.settle`)."""
    fee: int = 0
    """MIST its receipt can claim, as far as this run knows (the status's fees owed)."""


class Settlements:
    """The settlements of one services daemon, counted and retried.

    ``services`` is the host's service table as configured now (updated in place by
    a reload), ``conns`` the connections it serves now, ``served`` its reservations of
    ledger connections (a retry leaves a connection served again alone), ``fees`` gives
    the daemon's :class:`ServerFees`; ``gas``, when
    given, reports a settlement failing for want of gas and has the waiting ones tried
    at once when funded again."""

    def __init__(
        self,
        book: StatusBook,
        services: Mapping[int, ServiceConfig],
        conns: Mapping[str, ServedConnection],
        served: ServedConnections,
        fees: Callable[[], ServerFees],
        gas: GasWatch | None = None,
    ) -> None:
        self.book = book
        self.services = services
        self.conns = conns
        self.served = served
        self.gas = gas
        if gas is not None:
            gas.on_funded(self.retry_now)
        self.fees = fees
        """The daemon's fees (set once the host is on the ledger, before clients can
        connect)."""
        self.running: set[asyncio.Future[Any]] = set()
        """Settlements running on their own (refused connections' refunds, retries): a
        stopping daemon waits for them, as for its connection handlers."""
        self.settling: dict[str, asyncio.Future[None]] = {}
        """Connections being settled (:meth:`settle`), each until its settlement ended:
        one settlement of a connection at a time."""
        self.retries: dict[str, Retry] = {}
        """Connections whose settlement failed, tried again by :meth:`_retry_loop`."""
        self.stopped = False
        """Set by :meth:`stop`: a settlement failing from then on is left for the next
        start."""
        self._retry_task: asyncio.Task[None] | None = None
        self._retry_wake = asyncio.Event()
        self._held_names: set[str] = set()
        """Services whose status row counts receipts held (see :meth:`count_held`)."""
        self.deferred: dict[str, tuple[ServiceConfig | None, int | None, bool]] = {}
        """Connections whose end waits in the fees' batch: the service, port and
        ``served`` their settlement is counted with once the batch settles them."""
        self._batch_task: asyncio.Task[None] | None = None
        self._batch_wake = asyncio.Event()
        self.unplaced_failures = 0
        """Failed settlements whose service could not be told (no status row)."""
        self._claim_task: asyncio.Task[None] | None = None

    def start_claims(self) -> None:
        """Claim the served connections' receipts while they live (the fees'
        :meth:`~dtp.daemon._fees.ServerFees.run_claims`, docs/escrow.md §7.1), each
        claim counted as a settlement's is (:meth:`count_claim`), until :meth:`stop`."""
        if self._claim_task is None and not self.stopped:
            self._claim_task = asyncio.ensure_future(self.fees().run_claims(self.count_claim))

    def count_claim(self, connection_id: str, claim: LiveClaim, port: int | None) -> None:
        """A claim made while ``connection_id`` lived (on service ``port``): in its
        service's ``claims`` and ``fees_claimed``; its end's settlement adds what it
        claims beyond."""
        conn = self.conns.get(connection_id)
        row = self._settled_row(conn.service if conn is not None else None, port)
        if row is None:
            logger.warning(
                "claim not counted: its service is unknown",
                extra=kv(connection=connection_id, claimed=claim.paid),
            )
            return
        if claim.paid:
            row.claims += 1
            row.fees_claimed += claim.paid
            self.book.touch()

    def settle_refused(self, connection_id: str, service: ServiceConfig | None = None) -> None:
        """Close and settle (refund) a ledger connection refused at admission (a receipt
        an earlier run left of it is claimed, and counted, on the way)."""
        task = asyncio.ensure_future(self.settle(connection_id, service=service))
        self.running.add(task)
        task.add_done_callback(self.running.discard)

    async def settle(
        self,
        connection_id: str,
        escrow_id: str | None = None,
        service: ServiceConfig | None = None,
        *,
        retry: bool = False,
        served: bool = False,
    ) -> Settled:
        """Every settlement of the daemon goes through here: it waits for one of the
        same connection under way, settles (:meth:`ServerFees.settle`), counts what it
        claimed and refunded in the status once -- under ``service``, or the service
        of the connection's port -- and has one that failed tried again later
        (:meth:`_retry_loop`); counted here, so that no path (a refusal, a cut
        connection, a restart's claim) can forget to. ``served``: the connection
        was served in this run, its receipts counted as earned as they were kept (its
        claim does not raise ``fees_earned``: see :meth:`_count_settled`).

        A ``retry`` finds the connection served again (an admission that took its ID
        after the retry was scheduled, before this first step: it found nothing being
        settled) and leaves it to that connection's own settlement: not settled, not
        counted, tried again later (:meth:`_retry_loop` pushed it back). Settled, the
        ledger connection was closed under the client being served."""
        while (running := self.settling.get(connection_id)) is not None:
            await asyncio.wait({running})
        if retry and connection_id in self.served:
            return Settled(0, 0)
        ended = asyncio.get_running_loop().create_future()
        self.settling[connection_id] = ended
        owed = self.fees().owed(connection_id)  # (before the settlement forgets it)
        try:
            settled = await self.fees().settle(connection_id, escrow_id, quiet=retry)
        finally:
            del self.settling[connection_id]
            ended.set_result(None)
        self._count_settled(connection_id, settled, service, served)
        if self.gas is not None:
            self.gas.show_spent()
        if settled.choice is EndChoice.BATCH:
            self.deferred[connection_id] = (service, settled.port, served)
            self._batch_wake.set()
            if self._batch_task is None and not self.stopped:
                self._batch_task = asyncio.ensure_future(self._batch_loop())
        self.follow_up(connection_id, settled, escrow_id, service, served, owed)
        return settled

    def _count_settled(
        self,
        connection_id: str,
        settled: Settled,
        service: ServiceConfig | None,
        served: bool = False,
    ) -> None:
        """Add a settlement's claim and refund to its service's status row (and, for a
        connection not ``served`` in this run, raise its ``fees_earned`` to its
        ``fees_claimed``); an end left to its client counts in ``ends_left`` and
        ``fees_left``."""
        left = settled.choice is EndChoice.LEAVE
        if not (settled.claimed or settled.refunded or left):
            return
        row = self._settled_row(service, settled.port)
        if row is None:  # (a claim or a refund read the connection: not expected)
            logger.warning(
                "settlement not counted: its service is unknown",
                extra=kv(connection=connection_id, **settled.moved),
            )
            return
        if left:
            row.ends_left += 1
            row.fees_left += settled.fee
        if settled.claimed:
            row.claims += 1
        row.fees_claimed += settled.claimed
        row.refunded += settled.refunded
        if not served:
            # a receipt of an earlier run, stored just before it ended, may not have
            # reached the saved status: what was claimed was earned. Not for one served
            # here: its receipts count as they are kept, and one claimed while still on
            # its way to the disk (the store slow) would be counted twice, raised to here
            # by the claim and added again by its "kept" callback (earn)
            row.fees_earned = max(row.fees_earned, row.fees_claimed)
        self.book.touch()

    async def settle_served(
        self, conn: ServedConnection, service: ServiceConfig, stats: ServiceStats
    ) -> Settled:
        """:meth:`settle` for a connection served in this run (TCP or UDP), once it
        ended. Its newest accepted receipt, when claimed, is earned even should its
        write not land: a served connection's claim does not raise ``fees_earned``
        (:meth:`_count_settled`), and its "kept" callback never runs for a write
        dropped."""
        settled = await self.settle(conn.connection_id, conn.terms.escrow_id, service, served=True)
        if settled.claimed:
            self.earn(stats, conn, conn.accepted)
        return settled

    def kept(self, stats: ServiceStats, conn: ServedConnection, receipt: Receipt) -> None:
        """A receipt of ``conn`` is on disk: it counts (``receipts``, ``fees_earned``)."""
        stats.receipts += 1
        self.earn(stats, conn, receipt.total_amount)
        self.book.touch()

    @staticmethod
    def earn(stats: ServiceStats, conn: ServedConnection, total: int) -> None:
        """Count in ``stats.fees_earned`` what ``conn``'s receipt of ``total`` adds to
        what it counted: at each receipt kept, and at its settlement's claim of a receipt
        not kept yet (whose "kept" then adds nothing)."""
        if total > conn.earned:
            stats.fees_earned += total - conn.earned
            conn.earned = total

    def count_held(self) -> None:
        """Set each service's ``receipts_held``: its connections served now that hold a
        receipt not claimed yet."""
        held = dict.fromkeys((s.name for s in self.services.values()), 0)
        # and the services a reload removed that still had some: their count goes to
        # 0 once all are claimed, as a configured service's does
        held.update(dict.fromkeys(self._held_names - held.keys(), 0))
        for conn in self.conns.values():
            if conn.paid_bytes or self.fees().held(conn.connection_id) is not None:
                held[conn.service.name] = held.get(conn.service.name, 0) + 1
        for name, count in held.items():
            self.book.service(name).receipts_held = count
        self._held_names = {name for name, count in held.items() if count}

    def _settled_row(self, service: ServiceConfig | None, port: int | None) -> ServiceStats | None:
        """The status row a settlement counts under: ``service``'s, else that of the
        service configured on ``port``, else the row a removed service on ``port`` left
        in the status, else a new row for that port."""
        if service is not None:
            return service_row(self.book, service)
        if port is None:
            return None
        configured = self.services.get(port)
        if configured is not None:
            return service_row(self.book, configured)
        for _, row in sorted(self.book.services.items()):
            if row.port == port:
                return row
        row = self.book.service(f"port {port} (removed)")
        row.port = port
        return row

    def follow_up(
        self,
        connection_id: str,
        settled: Settled,
        escrow_id: str | None,
        service: ServiceConfig | None,
        served: bool = False,
        fee: int = 0,
    ) -> None:
        """After a settlement: drop the connection from the retries when it is done;
        otherwise count the failure and schedule its next try (the first failure logged
        as a warning, the repeats at debug level). ``fee``: what its receipt can claim."""
        entry = self.retries.get(connection_id)
        if settled.done:
            if entry is not None:
                del self.retries[connection_id]
                logger.info(
                    "settled after a failure",
                    extra=kv(
                        connection=connection_id,
                        **settled.moved,
                    ),
                )
            return
        now = asyncio.get_running_loop().time()
        self._count_failure(service or (entry.service if entry else None), settled.port)
        if entry is None:
            entry = Retry(escrow_id, service, SETTLE_RETRY, now + SETTLE_RETRY, served, fee)
            self.retries[connection_id] = entry
            out_of_gas = self.gas is not None and self.gas.out  # (said once, by the watch)
            logger.log(
                logging.DEBUG if out_of_gas else logging.WARNING,
                "settlement failed",
                extra=kv(
                    connection=connection_id,
                    retry="at the next start" if self.stopped else f"in {SETTLE_RETRY:g} s",
                ),
            )
        else:
            entry.escrow_id = entry.escrow_id or escrow_id
            entry.service = entry.service or service
            entry.served = entry.served or served
            entry.fee = max(entry.fee, fee)
            entry.delay = next_settle_retry(entry.delay)
            entry.due = now + entry.delay
            logger.debug(
                "settlement failed again",
                extra=kv(connection=connection_id, retry=f"in {entry.delay:g} s"),
            )
        if not self.stopped:
            if self._retry_task is None:
                self._retry_task = asyncio.ensure_future(self._retry_loop())
            self._retry_wake.set()  # (its next try may come before the one waited for)

    def _count_failure(self, service: ServiceConfig | None, port: int | None) -> None:
        """Count a failed settlement under its service (``claim_failures``), or in
        :attr:`unplaced_failures` when its service cannot be told (its port unread)."""
        if service is None and port is None:
            self.unplaced_failures += 1
            return
        row = self._settled_row(service, port)
        if row is not None:
            row.claim_failures += 1
            self.book.touch()

    def owed(self) -> dict[str, int]:
        """MIST the daemon's receipts can still claim, by service name, as far as this
        run knows: the connections served now, the ends waiting to be settled together,
        the settlements waiting to be tried again. (Those a previous run left are
        claimed at the start, before this is first asked.)"""
        fees = self.fees()
        owed: dict[str, int] = {}

        def add(name: str, amount: int) -> None:
            if amount > 0:
                owed[name] = owed.get(name, 0) + amount

        for conn in self.conns.values():
            add(conn.service.name, fees.owed(conn.connection_id))
        waiting = {d.connection_id: d.fee for d in fees.batch.waiting()}
        for cid, (service, port, _) in self.deferred.items():
            add(self._name(service, port), waiting.get(cid, 0))
        for entry in self.retries.values():
            add(self._name(entry.service, None), entry.fee)
        return owed

    def _name(self, service: ServiceConfig | None, port: int | None) -> str:
        """The status row's name of a settlement's service (as :meth:`_settled_row`
        finds it, without making a row)."""
        if service is not None:
            return service.name
        configured = self.services.get(port) if port is not None else None
        if configured is not None:
            return configured.name
        return f"port {port} (removed)" if port is not None else "unknown"

    async def _retry_loop(self) -> None:
        """Try the failed settlements again as they fall due, one at a time, until the
        drain cancels this: each try is one of :attr:`running` (the drain waits for one
        under way, as for the connections' own settlements, so its claim is counted),
        and a connection served again, or being settled, is left to that settlement."""
        loop = asyncio.get_running_loop()
        while True:
            self._retry_wake.clear()
            now = loop.time()
            due = [cid for cid, entry in self.retries.items() if entry.due <= now]
            if not due:
                nearest = min((entry.due for entry in self.retries.values()), default=None)
                # (asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the
                # wake's result when the drain's cancel comes as the wake is set, the
                # cancel swallowed, and the drain would wait for this loop for good)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(None if nearest is None else nearest - now):
                        await self._retry_wake.wait()
                continue
            for cid in due:
                entry = self.retries.get(cid)
                if entry is None:  # (settled meanwhile)
                    continue
                # (pushed back first: a try that ends without its follow-up must not be
                # made again at once, over and over)
                entry.due = loop.time() + entry.delay
                if cid in self.served or cid in self.settling:
                    continue
                attempt = asyncio.ensure_future(
                    self.settle(
                        cid, entry.escrow_id, entry.service, retry=True, served=entry.served
                    )
                )
                self.running.add(attempt)
                attempt.add_done_callback(self.running.discard)
                await asyncio.wait({attempt})  # (a cancel here leaves the try running)
                if not attempt.cancelled() and (error := attempt.exception()) is not None:
                    log_failure(logger, "settlement retry failed", error, connection=cid)

    async def _batch_loop(self) -> None:
        """Every :data:`BATCH_CHECK` seconds while ends wait in the fees' batch: settle
        it once it pays for itself, leave the ends whose window ended (each counted as
        a settlement is); until :meth:`stop` cancels it."""
        while True:
            if not self.deferred:
                self._batch_wake.clear()
                await self._batch_wake.wait()
                continue
            await asyncio.sleep(BATCH_CHECK)
            task = asyncio.ensure_future(self.flush_batch())
            self.running.add(task)
            task.add_done_callback(self.running.discard)
            await asyncio.wait({task})  # (a cancel here leaves the flush running)

    async def flush_batch(self, *, final: bool = False) -> None:
        """Settle the fees' batch if it pays, leave the ends whose window ended
        (``final``: all of them, the daemon stopping), and count what became of each."""
        if not self.deferred:  # (every end in the batch came through settle())
            return
        fees = self.fees()
        settled, left = await fees.settle_batch(final=final)
        for cid, settlement in settled:
            service, port, served = self.deferred.pop(cid, (None, None, False))
            outcome = Settled(settlement.paid, settlement.refunded, port, True)
            self._count_settled(cid, outcome, service, served)
        for cid, end in left:
            service, port, served = self.deferred.pop(cid, (None, None, False))
            outcome = Settled(0, 0, port, True, EndChoice.LEAVE, end.fee)
            self._count_settled(cid, outcome, service, served)
        if self.gas is not None:
            self.gas.show_spent()
        # (what a failed batch put back waits on; what nobody waits for is forgotten)
        waiting = {e.connection_id for e in fees.batch.waiting()}
        for cid in [c for c in self.deferred if c not in waiting]:
            del self.deferred[cid]

    def retry_now(self) -> None:
        """The ledger is back after an outage, or the daemon's gas funded again: the
        settlements that failed meanwhile are tried again now rather than at their
        backoff's end (up to :data:`SETTLE_RETRY_MAX` later: a client's half-close
        timeout may end meanwhile)."""
        if not self.retries or self.stopped:
            return
        now = asyncio.get_running_loop().time()
        for entry in self.retries.values():
            entry.due = min(entry.due, now)
        self._retry_wake.set()

    async def stop(self) -> None:
        """Stop trying failed settlements again (a try under way goes on: it is one of
        :attr:`running`, which the drain waits for); one failing from now on is left
        for the next start."""
        self.stopped = True
        claims, self._claim_task = self._claim_task, None
        if claims is not None and (error := await cancel_and_wait(claims)) is not None:
            log_failure(logger, "claiming while connections live failed", error)
        batch, self._batch_task = self._batch_task, None
        if batch is not None and (error := await cancel_and_wait(batch)) is not None:
            log_failure(logger, "settling the batch failed", error)
        task, self._retry_task = self._retry_task, None
        # (cancel_and_wait, not "await task" in a suppress(CancelledError), which takes
        # the drain's own cancellation for the loop's, and the drain would go on)
        if task is not None and (error := await cancel_and_wait(task)) is not None:
            # logged, not raised: the drain goes on to make its settlements
            log_failure(logger, "settlement retries failed", error)

    def left_unsettled(self) -> None:
        """Log each connection whose settlement still fails (at the end of a drain),
        once."""
        for cid in self.retries:
            logger.warning(
                "connection left unsettled",
                extra=kv(
                    connection=cid,
                    reason="its settlement failed: a receipt held is claimed at the next "
                    "start; without one, its client settles it after its timeout",
                ),
            )
        self.retries.clear()  # (said once)


@dataclass(eq=False)
class ServedSide:
    """What a connection's TCP or UDP side shares with its host: the status ``book``,
    ``fees`` (read when used: set after the sides are made), the ``settlements`` that
    count the receipts kept, and ``end``, which ends a served connection (forgets it,
    closes it, settles it) once its tunnels or flow are done."""

    book: StatusBook
    fees: Callable[[], ServerFees]
    settlements: Settlements
    end: Callable[[ServedConnection], Awaitable[Settled]]
