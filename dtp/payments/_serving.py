"""A paid server's receipts: its store's lifecycle (open, recover, release), the
settlement of its connections as they end, and the retries of those that failed
(docs/escrow.md §6.1); shared by the blocking and asyncio paid servers."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from dtp.errors import (
    ChainError,
    MalformedReceipt,
    ReceiptStoreError,
)
from dtp.ledger._objects import Escrow, Settlement, TransportControl, normalize_id
from dtp.ledger.receipt import Receipt
from dtp.payments._ends import EndBatch, EndDeferred, EndLeft, EndRule, _ByConnection
from dtp.payments._gate import (
    ConnectionIds,
)
from dtp.payments._live_claims import LiveClaimer
from dtp.payments._receipt_writer import ReceiptWriter
from dtp.payments._settlement import (
    ClaimBackoff,
    claim_and_settle,
    claimed,
    end_connection,
    recover_unclaimed,
    settle_deferred,
)
from dtp.payments.receipt_store import ReceiptStore

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity
    from dtp.ledger.interface import Ledger


logger = logging.getLogger(__name__)


def _stored(receipt: Receipt) -> None:
    """A receipt nothing waits on is stored."""


def settle_ended(
    ledger: Ledger,
    identity: HostIdentity,
    connection_id: str,
    writer: ReceiptWriter,
    final: Receipt | None,
    *,
    escrow: Escrow | None = None,
    connection: TransportControl | None = None,
    rule: EndRule | None = None,
    batch: EndBatch | None = None,
    now: float = 0.0,
    claims: LiveClaimer | None = None,
    final_is_newest: bool = False,
) -> Settlement | EndLeft | EndDeferred | None:
    """A paid server's settlement of a connection that ended (:func:`claim_and_settle`,
    its gas weighed with ``rule``: :func:`end_connection`), once the live ``claims``
    stopped. The claim is made from the receipt writer (no wait for the fsync).
    ``final``, if not claimed, is kept for a later claim (:class:`SettlementRetries`,
    or the next start's recovery). Any error is logged, with None returned: the
    server's release of the connection goes on, the receipt kept for the retry."""
    settlement: Settlement | EndLeft | EndDeferred | None = None
    if claims is not None and claims.end(connection_id):
        escrow = None  # (claimed from since the caller read it)
    try:
        # (a ledger that charges no gas: every end is settled, as before gas was weighed)
        if rule is None or not rule.weigh_gas or not ledger.end_gas().charged:
            settlement = claim_and_settle(
                ledger,
                identity,
                connection_id,
                writer,
                escrow=escrow,
                connection=connection,
                final=final,
                final_is_newest=final_is_newest,
            )
        else:
            settlement = end_connection(
                ledger,
                identity,
                connection_id,
                writer,
                rule=rule,
                batch=batch,
                now=now,
                escrow=escrow,
                connection=connection,
                final=final,
                final_is_newest=final_is_newest,
            )
    except (ChainError, ReceiptStoreError) as exc:
        # (a ReceiptStoreError: no final receipt, and its latest could not be read) it
        # stays for the server's retry (or the next start), which reads the store again
        logger.warning("could not settle connection %s: %s", connection_id, exc)
    except Exception:
        logger.exception("settling connection %s failed", connection_id)
    finally:
        # (one left to its client kept its final receipt already, then wrote it off)
        if (
            final is not None
            and not isinstance(settlement, EndLeft)
            and not claimed(settlement if isinstance(settlement, Settlement) else None, final)
        ):
            _keep_final(writer, final)
    return settlement


def _keep_final(writer: ReceiptWriter, final: Receipt) -> None:
    """Keep a final receipt not claimed: through the writer, or (closed) straight in
    its store; failing that it is logged whole, for an operator to claim by hand."""
    try:
        writer.submit(final, _stored)
        return
    except RuntimeError:
        pass
    try:
        writer.store.keep(final)
    except Exception as exc:
        logger.error(
            "final receipt of connection %s not stored (%s); receipt: %s",
            final.connection_id,
            exc,
            final.encode().hex(),
        )


def open_store(receipts: ReceiptStore | str | Path | None) -> tuple[ReceiptStore, bool]:
    """The paid server's receipt store, and whether it was opened here (from a file
    path, or in memory for None) rather than passed in: one passed in stays its
    owner's to close."""
    if isinstance(receipts, ReceiptStore):
        return receipts, False
    if receipts is not None and not isinstance(receipts, str | Path):
        raise TypeError(
            f"receipts must be a ReceiptStore, a file path or None, got {type(receipts).__name__}"
        )
    return ReceiptStore(receipts or ":memory:"), True


@contextlib.contextmanager
def server_store(
    receipts: ReceiptStore | str | Path | None,
) -> Iterator[tuple[ReceiptStore, bool]]:
    """:func:`open_store`'s store and whether it was opened here, for making a paid
    server: one opened here is closed again when the making fails (nobody else holds
    it then)."""
    store, opened = open_store(receipts)
    try:
        yield store, opened
    except BaseException:
        if opened:
            store.close()
        raise


def _receipts_held(writer: ReceiptWriter, connection_id: str) -> bool:
    """Whether the store holds receipts of ``connection_id`` (it was served): a damaged
    row (MalformedReceipt) counts, as the row is there (raised, it ended the handler
    with a traceback instead of refusing the connection)."""
    try:
        return writer.latest(connection_id) is not None
    except MalformedReceipt:
        return True


#: The abort reason of a DTP connection naming a ledger connection ID served before (or
#: being served): one DTP connection per ledger connection, and none after its receipts
SERVED_REFUSAL = "this connection ID is already served"
#: The abort reason when the receipt store cannot tell whether it was served before
UNKNOWN_RECEIPTS_REFUSAL = (
    "the server cannot read its receipts of this connection ID now; try again later"
)


def served_refusal(writer: ReceiptWriter, connection_id: str) -> str | None:
    """Why ``connection_id`` (reserved by the caller) may not be served again, or None
    when its store holds no receipt of it: a connection whose settlement failed keeps
    its receipts, and a new gate seeded from the escrow (:func:`gate_for`) would know
    nothing of them (a fresh allowance on top). One whose receipts cannot be read is
    refused too (logged)."""
    try:
        held = _receipts_held(writer, connection_id)
    except ReceiptStoreError as exc:
        logger.warning(
            "cannot read the receipts of connection %s (refused: it may have been served): %s",
            connection_id,
            exc,
        )
        return UNKNOWN_RECEIPTS_REFUSAL
    if held:
        logger.warning("refused connection %s: already served", connection_id)
        return SERVED_REFUSAL
    return None


def closes_store(receipts: ReceiptStore | str | Path | None) -> bool:
    """Whether a paid server's close() closes the store it opened: only one on a file.
    An in-memory store (None) holds no file, and ``server.store`` is the only place its
    receipts can still be read from after close (for :func:`recover_unclaimed`)."""
    return not isinstance(receipts, ReceiptStore) and bool(receipts)


def recover_store(
    ledger: Ledger,
    identity: HostIdentity,
    store: ReceiptStore,
    alone: bool,
    stopped: Callable[[], bool] | None = None,
    backoff: ClaimBackoff | None = None,
    deferred: DeferredEnds | None = None,
) -> list[tuple[str, Settlement]]:
    """A paid server's :func:`recover_unclaimed` of what dead runs left in its store
    (:meth:`ReceiptStore.orphaned`): at its start (``alone``, as
    :meth:`ReceiptStore.attach_server` said) and every :data:`RECOVERY_INTERVAL` after,
    so a run killed beside a live one is not left to its clients' refunds. Live runs'
    receipts are never claimed. ``backoff``: :class:`ClaimBackoff`; ``deferred``: each
    end's gas weighed as the server's own (:func:`dtp.payments._settlement.end_connection`)."""
    with store.orphaned(alone) as receipts:
        if backoff is not None:
            backoff.next_round()
            backoff.prune(store, receipts)
        if not receipts:
            return []
        if deferred is None:
            return recover_unclaimed(ledger, identity, store, receipts, stopped, backoff)
        return recover_unclaimed(
            ledger,
            identity,
            store,
            receipts,
            stopped,
            backoff,
            rule=deferred.batch.rule,
            batch=deferred.batch,
            now=time.monotonic(),
        )


class DeferredEnds:
    """A live paid server's ends waiting to be settled together
    (:attr:`~dtp.payments._ends.EndChoice.BATCH`): settled by its :class:`Recovery` once
    their fees cover a batch's gas, left once their window ended, and flushed at the
    release (:meth:`flush`). Thread-safe."""

    def __init__(
        self,
        ledger: Ledger,
        identity: HostIdentity,
        writer: ReceiptWriter,
        rule: EndRule,
        settlements: deque[tuple[str, Settlement]],
        left: deque[tuple[str, EndLeft]],
    ) -> None:
        self.ledger, self.identity, self.writer = ledger, identity, writer
        self.batch = EndBatch(rule)
        self._settlements = settlements
        self._left = left
        self._lock = threading.Lock()

    @property
    def rule(self) -> EndRule:
        return self.batch.rule

    def flush(self, final: bool = False) -> None:
        """Settle the batch if it pays, leave the ends whose window ended (``final``:
        all); a ledger error leaves them waiting."""
        with self._lock:
            if not len(self.batch):
                return
            try:
                gas = self.ledger.end_gas()
            except ChainError as exc:
                logger.warning("cannot weigh the ends waiting for a batch: %s", exc)
                return
            plan = self.batch.plan(time.monotonic(), gas, final=final)
            if not plan:
                return
            settled, left = settle_deferred(
                self.ledger, self.identity, self.writer, plan, self.batch
            )
            self._settlements.extend(settled)
            self._left.extend(left)


#: How often a live paid server looks for server runs on its receipt store that died
#: with receipts unclaimed, and claims them (seconds; in its :class:`Recovery` thread). Well
#: below the 10-minute half-close timeout after which a client takes its deposit back.
RECOVERY_INTERVAL = 30.0


#: How long close() waits for a recovery claim under way before it leaves the release
#: to a thread of its own (seconds)
RECOVERY_CLOSE_WAIT = 5.0


#: The most rounds a failing claim waits (2**(n-1) after its n-th failure): every 2
#: minutes at the default interval, yet 6 tries within the 10-minute half-close timeout.
RETRY_MAX_ROUNDS = 4


class SettlementRetries(_ByConnection):
    """A live paid server's own failed settlements, tried again in its :class:`Recovery`
    rounds: the dead-run recovery never claims a live run's rows, and the client may
    take the whole deposit back once the half-close timeout has passed.

    Each round a connection due is reserved in ``serving`` (one in use waits), its
    latest receipt read from ``writer`` and, if part of it is unclaimed, claimed and
    settled (:func:`claim_and_settle`; one settled meanwhile is written off). A retry
    that fails backs off as :class:`ClaimBackoff` does. Lost with the server: a
    restart's recovery claims what is left."""

    def __init__(
        self,
        ledger: Ledger,
        identity: HostIdentity,
        writer: ReceiptWriter,
        serving: ConnectionIds,
        settlements: deque[tuple[str, Settlement]],
    ) -> None:
        self.ledger, self.identity, self.writer = ledger, identity, writer
        self._serving = serving
        self._settlements = settlements
        self._pending: set[str] = set()  # the connections to retry
        # (their failures and when each is due: the dead runs' receipts' schedule)
        self._backoff = ClaimBackoff(RETRY_MAX_ROUNDS)
        self._lock = threading.Lock()

    def add(self, connection_id: str) -> None:
        """The settlement of ``connection_id`` claimed nothing: tried again from the next
        round, unless by then nothing of its receipts is unclaimed (none came, or the
        connection was found settled and its receipt written off)."""
        key = normalize_id(connection_id, "connection ID")
        with self._lock:
            self._pending.add(key)

    def _table(self) -> set[str]:
        return self._pending

    @property
    def rounds(self) -> int:
        """How many rounds have started."""
        return self._backoff.rounds

    def run(self, stopped: Callable[[], bool] | None = None) -> list[tuple[str, Settlement]]:
        """One round: retry each settlement due (none once ``stopped()`` is true); what
        was settled."""
        self._backoff.next_round()
        with self._lock:
            due = [cid for cid in self._pending if self._backoff.due(cid)]
        done: list[tuple[str, Settlement]] = []
        for cid in due:
            if stopped is not None and stopped():
                break
            if not self._serving.reserve(cid):
                continue  # served or settled right now (its settlement adds it again)
            try:
                settlement = self._retry(cid)
            finally:
                self._serving.release(cid)
            if settlement is not None:
                done.append((cid, settlement))
                self._settlements.append((cid, settlement))
        return done

    def _retry(self, cid: str) -> Settlement | None:
        """Claim and settle ``cid`` (reserved) if its receipts hold MIST unclaimed."""
        try:
            if not self._unclaimed(cid):
                self._forget(cid)
                return None
            settlement = claim_and_settle(self.ledger, self.identity, cid, self.writer)
        except (ChainError, ReceiptStoreError) as exc:
            self._failed(cid, str(exc), trace=False)
            return None
        except Exception as exc:  # (a bug, a ledger's surprise: with its traceback)
            self._failed(cid, repr(exc), trace=True)
            return None
        tries = self._forget(cid)
        if settlement is not None:
            logger.info(
                "connection %s settled on retry %d: %d MIST claimed, %d refunded",
                cid,
                tries + 1,
                settlement.claimed,
                settlement.refunded,
            )
        return settlement

    def _unclaimed(self, cid: str) -> bool:
        stored = self.writer.latest(cid)
        return stored is not None and stored.unclaimed > 0

    def _forget(self, cid: str) -> int:
        """Nothing left to retry of ``cid``: how many retries of it had failed."""
        with self._lock:
            self._pending.discard(cid)
            failures = self._backoff.failures(cid)
            self._backoff.forget(cid)
        return failures

    def _failed(self, cid: str, why: str, *, trace: bool) -> None:
        with self._lock:
            self._pending.add(cid)
            failures = self._backoff.failed(cid)
        if failures == 1:
            logger.warning(
                "retrying the settlement of connection %s failed (its receipt stays kept; "
                "tried again with backoff, further failures logged at debug level): %s",
                cid,
                why,
                exc_info=trace,
            )
        else:
            logger.debug(
                "retry %d of the settlement of connection %s failed: %s",
                failures,
                cid,
                why,
                exc_info=trace,
            )


class Recovery:
    """A live paid server's recovery (:func:`recover_store`) and ``retries``
    (:class:`SettlementRetries`) every :data:`RECOVERY_INTERVAL`, in a thread of its own
    so that its ledger transactions hold up no policy refresh. :meth:`stop` ends it
    between two claims; :meth:`join` waits for that before the store is released."""

    def __init__(
        self,
        ledger: Ledger,
        identity: HostIdentity,
        store: ReceiptStore,
        recovered: list[tuple[str, Settlement]],
        retries: SettlementRetries | None = None,
        deferred: DeferredEnds | None = None,
    ) -> None:
        self.ledger, self.identity, self.store = ledger, identity, store
        self.recovered = recovered
        self.retries = retries
        #: The server's ends waiting for a batch: settled or left in each round
        self.deferred = deferred
        #: The dead runs' receipts whose claim failed in this server's rounds
        self.backoff = ClaimBackoff(RETRY_MAX_ROUNDS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dtp-paid-recovery", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(RECOVERY_INTERVAL):
            if self.retries is not None:
                # (first: these have a client whose half-close timeout runs)
                try:
                    self.retries.run(self._stop.is_set)
                except Exception:
                    logger.exception("retrying failed settlements failed")
            if self.deferred is not None:
                try:
                    self.deferred.flush()
                except Exception:
                    logger.exception("settling the ends waiting for a batch failed")
            try:
                self.recovered.extend(
                    recover_store(
                        self.ledger,
                        self.identity,
                        self.store,
                        False,
                        self._stop.is_set,
                        self.backoff,
                        self.deferred,
                    )
                )
            except ReceiptStoreError as exc:
                logger.warning("cannot look for receipts dead servers left: %s", exc)
            except Exception:
                # (a bug, or a ledger's surprise: logged, and looked at again next time)
                logger.exception("recovering receipts dead servers left failed")

    def stop(self) -> None:
        """No further claim (the one under way ends first)."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        """:meth:`stop`, then wait for the thread (it ends after the claim under way) up
        to ``timeout`` seconds; True once it has ended."""
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        return not self._thread.is_alive()


#: How long a closed paid server's release waits for its receipt writer to finish
#: (seconds): one still writing then (a stalled disk) is left the store, open, and the
#: rest of the release (the detach, closing the store) is the writer's last step.
RELEASE_WRITER_WAIT = 30.0


def release_receipts(
    writer: ReceiptWriter,
    store: ReceiptStore,
    own_store: bool,
    then: Callable[[], None] | None = None,
) -> None:
    """A closed paid server's last step: stop the receipt writer (within
    :data:`RELEASE_WRITER_WAIT`), then run ``then`` (:meth:`ReceiptStore.detach_server`)
    and close the store if the server opened it. A writer still writing keeps the store:
    ``then`` and the close run in its thread once it stops
    (:meth:`ReceiptWriter.when_stopped`), or another server would take the run for dead
    and claim an older receipt under it."""
    if not writer.close(RELEASE_WRITER_WAIT) and not writer.stopped:
        logger.error(
            "the receipt writer did not finish within %g s: the receipt store stays in "
            "use (and this server's run on it live) until it does",
            RELEASE_WRITER_WAIT,
        )
        writer.when_stopped(lambda: _writer_released(writer, store, own_store, then))
        return
    _writer_released(writer, store, own_store, then)


def _writer_released(
    writer: ReceiptWriter,
    store: ReceiptStore,
    own_store: bool,
    then: Callable[[], None] | None,
) -> None:
    """The rest of :func:`release_receipts` once the writer has stopped."""
    if writer.given_up:
        logger.error(
            "%d receipt(s) could not be stored and were given up (each logged whole "
            "above, to be claimed by hand): their fees are unclaimed",
            len(writer.given_up),
        )
    try:
        if then is not None:
            then()
    finally:
        if own_store:
            store.close()
