"""A paid server's receipts: its store's lifecycle (open, recover, release), the
settlement of its connections as they end, and the retries of those that failed
(docs/escrow.md §6.1); shared by the blocking and asyncio paid servers."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from dtp.errors import (
    ChainError,
    MalformedReceipt,
    ReceiptStoreError,
)
from dtp.ledger._objects import Escrow, Settlement, TransportControl, normalize_id
from dtp.ledger.receipt import Receipt
from dtp.payments._ends import EndBatch, EndDeferred, EndLeft, EndRule
from dtp.payments._gate import (
    ConnectionIds,
)
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
) -> Settlement | EndLeft | EndDeferred | None:
    """A paid server's settlement of a connection that ended (:func:`claim_and_settle`;
    ``escrow`` and ``connection`` as the server read them, if it did), its gas weighed
    first with ``rule`` (:func:`end_connection`: left to its client, or put in ``batch``
    at ``now``, when claiming it alone costs more gas than it pays). The claim is made
    from the receipt writer: its last receipt may still be on its way to the disk (the
    claim on the ledger does not wait for the fsync; the writer marks the claim in the
    store once the receipt is written). ``final``, the receipt the client's CLOSE came
    with, is handed to the writer should the settlement not claim it, kept for a later
    claim (the server's :class:`SettlementRetries`, to which it hands a settlement that
    returned None; recover_unclaimed at the next start). A ChainError, or a
    ReceiptStoreError (the store unreadable and no final receipt), is logged: None; so is
    anything else (a bug, a ledger error that is not a ChainError), with its traceback:
    the server's release of the connection -- its socket, its place in the limits, its
    cap share -- goes on after it, and the receipt stays for the retry. A claimed mark the
    writer cannot take (closed meanwhile) is logged, and the settlement made returned
    all the same (:func:`claim_and_settle`)."""
    settlement: Settlement | EndLeft | EndDeferred | None = None
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
    """Keep a final receipt the settlement did not claim, for a later claim: through the
    writer, or -- the writer closed meanwhile (a server stopped before this settlement
    ended) -- straight in its store; failing that, it is logged whole, for an operator
    to claim by hand (the RuntimeError from the closed writer would lose it silently)."""
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
    """Why ``connection_id`` (reserved by the caller, so that no DTP connection on it is
    live) may not be served again, or None when its store holds no receipt of it.

    A ledger connection whose settlement failed (the ledger unavailable as it ended)
    stays Open, its receipts kept for a later claim; a client back on it
    would be served on a new gate seeded from the escrow (:func:`gate_for`), which knows
    nothing of them: a fresh allowance on top of the usage they cover, and its next
    receipts judged against the escrow's claims instead of the kept receipt. So a
    connection with receipts is refused, and so is one whose receipts cannot be read
    (the store unreadable: logged): serving it on the escrow's word is that same gate.
    (Raised, the ReceiptStoreError ended the handler with a traceback, the client told
    only of an internal error.)"""
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
    """A paid server's :func:`recover_unclaimed` of what dead server runs left in its
    store (:meth:`ReceiptStore.orphaned`): at its start (``alone``, as
    :meth:`ReceiptStore.attach_server` said: then every other run is dead) and every
    :data:`RECOVERY_INTERVAL` after (``alone`` False). A server killed while another
    was live on the same store left its receipts unclaimed for as long as any was
    (its restart was not alone either), and its clients' half-close timeouts refunded
    the fees they had paid. The receipts of live servers are never claimed: they are
    their connections', settled under them the service they go on giving is never
    paid. Once ``stopped()`` is true no further receipt is claimed. ``backoff``: the
    live server's memory of its failed claims (a call is one of its rounds): a receipt
    that failed is tried again only after 1, 2, 4 rounds... (at most
    :data:`RETRY_MAX_ROUNDS`), not in every round by every live server; the start's
    recovery has none, and tries every receipt once. With ``deferred`` (the server's
    :class:`DeferredEnds`), each end's gas is weighed as the server weighs its own
    connections' (:func:`dtp.payments._settlement.end_connection`)."""
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
    (:attr:`~dtp.payments._ends.EndChoice.BATCH`: each worth a place in a batch, not a
    transaction of its own): its :class:`Recovery` settles them every round once their
    fees cover a batch's gas, and leaves those whose window ended; its release, once
    every connection has ended, settles what pays and leaves the rest
    (:meth:`flush`). What is settled goes to ``settlements``, what is left to ``left``.
    The claims are marked through ``writer`` (behind the receipts still on their way to
    the disk). Thread-safe."""

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
        every end, the server stopping). A ledger that cannot be read, or a batch it
        refuses, leaves them waiting (their receipts unclaimed in the store: a restart's
        recovery weighs them again)."""
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


#: The most recovery rounds a retried settlement (:class:`SettlementRetries`), or a dead
#: run's receipt whose claim (:func:`recover_store`) keeps failing, waits before its next
#: try: after its n-th failure it waits 2**(n-1) rounds, at most this many -- every 2
#: minutes at the default :data:`RECOVERY_INTERVAL`, so that one the ledger refuses for
#: good (a bad receipt) costs a try every 2 minutes, not every 30 s, while one failing for
#: an outage is still tried 6 times within the 10-minute half-close timeout after which its
#: client may take the whole deposit back.
RETRY_MAX_ROUNDS = 4


class SettlementRetries:
    """A live paid server's own failed settlements, tried again in its :class:`Recovery`
    rounds. A connection whose settlement failed as it ended (the ledger unavailable, a
    connection that could not be read) stays Open on the ledger, its receipt kept
    in the store; the dead-run recovery never claims a live run's rows, so the receipt
    waited for the server's next start -- while the client, which half-closed the
    connection as it left, may settle alone once the half-close timeout has passed and
    take back the whole deposit, the receipted fee with it.

    :meth:`add` is called by the server's settlement that claimed nothing (its reservation
    of the connection ID still held). Each round, a connection due is reserved in
    ``serving`` as a new DTP connection on it would be (one being served or settled right
    now is left for the next round), its latest receipt read from ``writer`` (which knows
    the final receipt still on its way to the disk and the claims not yet marked), and,
    when part of it is unclaimed, claimed and settled as the settlement would have
    (:func:`claim_and_settle`: a connection settled meanwhile -- its client settled alone
    -- has the receipt written off and marked, never claimed twice); what it settles goes
    to ``settlements``. Only the connections this server settled are retried: the rows of
    its run may also be another live server's on the same store handle. A retry that
    fails waits 1, 2, 4 rounds... (at most :data:`RETRY_MAX_ROUNDS`); its first failure is
    logged as a warning, the later ones at debug level (the settlement's own failure was
    a warning already). Lost with the server: a restart's recovery claims what is left."""

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

    def __contains__(self, connection_id: object) -> bool:
        if not isinstance(connection_id, str):
            return False
        with self._lock:
            return normalize_id(connection_id, "connection ID") in self._pending

    def __len__(self) -> int:
        with self._lock:
            return len(self._pending)

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
    """A live paid server's recovery of what dead server runs left unclaimed in its
    store (:func:`recover_store`), and of its own settlements that failed
    (``retries``: :class:`SettlementRetries`), every :data:`RECOVERY_INTERVAL`, in a
    thread of its own: elsewhere its ledger transactions (one per receipt) would hold
    up the policy refreshes -- the firewall's enforcement on open connections -- for as
    long as they take, and go on after the server closed. :meth:`stop` ends it between two claims;
    :meth:`join` waits for that, before the store is released. What it settles of dead
    runs is appended to ``recovered``; ``retries`` appends its own to the server's
    settlements. A dead run's receipt whose claim fails is tried again after 1, 2, 4
    rounds... (:attr:`backoff`), its first failure logged as a warning, the later ones
    at debug level."""

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
    """A closed paid server's last step: stop the receipt writer (after it wrote
    everything, within :data:`RELEASE_WRITER_WAIT`), then run ``then`` (the server's
    :meth:`ReceiptStore.detach_server`) and close the store if the server opened it.
    Receipts the writer gave up (the store refused them, or was closed under it) are
    logged whole by the writer, and counted here: the store is closed all the same, as
    nothing writes to it any more.

    A writer still writing after the wait (a stalled disk, a commit blocked on a lock)
    keeps the store, and ``then`` and the close wait for it: they run in its thread once
    it stops (:meth:`ReceiptWriter.when_stopped`). Detached before, the run's lock file
    was let go of (or removed) while the writer still held receipts of it: another
    server taking the run for a dead one claimed the older receipt stored for a
    connection whose settlement had failed, and the newer one written after was worth
    nothing; and closed under the writer, the store lost what it held."""
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
