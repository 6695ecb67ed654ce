"""Serving a paid DTP service with asyncio: :func:`dtp.aio.serve`, the twin of
:mod:`dtp.hostid.paid` (same policy, gate, rate limits, host refresh and settlement).

The callback gets a :class:`PaidReader` / :class:`PaidWriter` pair: reads and
``drain()`` wait for payment and for the rate limits first (no flow-control credit goes
back meanwhile, so the client's writes block), and ``write()`` lets out only what the
receipt gate allows, holding the rest until payment comes. Ledger calls and
receipt-store writes run in threads, never on the event loop.

"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from dtp.errors import ChainError, DTPError, LocalProtocolError
from dtp.hostid._admission import Admitted, checked_open_grace
from dtp.hostid.paid import _server_steps as steps
from dtp.hostid.paid._asyncio import (
    PaidCallback,
    PaidConnection,
    PaidReader,
    PaidWriter,
    protocol_of,
)
from dtp.hostid.paid._policy import CLOSED_REFUSAL, ServicePolicy, gate_for, watch_claims
from dtp.hostid.paid._request_billing import (
    AsyncRequestServer,
    Billing,
    bill_for,
    checked_billing,
    request_server,
)
from dtp.hostid.paid._server_admission import PaidAdmission, ReportedConnections
from dtp.hostid.paid._server_books import ServerBooks
from dtp.hostid.paid._server_core import AdmitStep, EndPhase, EndStep, HandleStep, ServerOptions
from dtp.ledger._objects import normalize_id
from dtp.ledger.receipt import Receipt
from dtp.payments._ends import EndDeferred, EndLeft
from dtp.payments._serving import RECOVERY_CLOSE_WAIT, closes_store, served_refusal, server_store
from dtp.payments._settlement import publish_endpoint
from dtp.payments.receipt_store import ReceiptStore
from dtp.transport._admission import (
    DEFAULT_MAX_HANDSHAKES,
    DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
    DEFAULT_MAX_WAITING_PER_ADDRESS,
)

if TYPE_CHECKING:
    from dtp.hostid._admission import Admitted, PeerInfo
    from dtp.identity.keys import HostIdentity
    from dtp.ledger._objects import Settlement
    from dtp.ledger.interface import Ledger
    from dtp.protocol.connection import ConnectionConfig
    from dtp.transport.asyncio._protocol import Protocol as _Protocol
    from dtp.transport.asyncio._server import DTPServer
    from dtp.transport.asyncio._streams import DTPStreamReader, DTPStreamWriter

# the server's own logger, where an operator filters for its lines
# (tests/paid/test_policy_loop.py)
logger = logging.getLogger("dtp.hostid.paid._asyncio_server")

# seconds between wait_released()'s looks at a receipt writer still writing after the
# release (a stalled disk: rare, and then long)
_WRITER_POLL = 0.05

_LINGER = 5.0  # seconds dtp.aio's close waits for queued data to leave


class PaidAioServer(ServerBooks[PaidConnection]):
    """The asyncio paid server (see :func:`serve`)."""

    _open_grace: float | None
    host_id: str
    port: int
    callback: PaidCallback | AsyncRequestServer
    requests: AsyncRequestServer | None
    server: DTPServer | None
    admission: PaidAdmission[Awaitable[str | None]] | None
    _refunds: set[asyncio.Task[None]]
    _callback_tasks: set[asyncio.Task[Any]]
    _policy_task: asyncio.Task[None] | None
    _closing: asyncio.Event
    _lifetime: asyncio.Task[bool] | None
    _loop_ending: bool
    _released: asyncio.Event

    def __init__(
        self,
        host_id: str,
        port: int,
        callback: PaidCallback | AsyncRequestServer,
        *,
        ledger: Ledger,
        identity: HostIdentity,
        store: ReceiptStore,
        policy: ServicePolicy,
        close_store: bool = False,
        open_grace: float | None = None,
        billing: Billing = "bytes",
    ) -> None:
        #: With ``billing="requests"``: the callback, an AsyncRpcServer serving requests
        #: paid one by one (checked first: nothing is made for a handler refused)
        self.requests: AsyncRequestServer | None = (
            request_server(callback, asynchronous=True)
            if checked_billing(billing) == "requests"
            else None
        )
        self._open_grace = checked_open_grace(open_grace)  # (the admission's, made in _start)
        self.host_id = normalize_id(host_id, "host ID")
        self.port = port
        self.callback = callback
        # (the store is closed with the server when serve() opened it; the server-wide
        # rules, self.core, are called from the event loop only)
        self._keep_books(ledger, identity, policy, store, close_store)
        self.server: DTPServer | None = None
        #: The ledger admission (made as the server starts)
        self.admission: PaidAdmission[Awaitable[str | None]] | None = None
        # settlements of connections refused at a connection limit (held: the loop
        # keeps only weak references to tasks)
        self._refunds: set[asyncio.Task[None]] = set()
        #: the tasks running a callback (wait_released() there would wait for its own
        #: connection; a task a callback starts is another, free to wait)
        self._callback_tasks: set[asyncio.Task[Any]] = set()
        self._policy_task: asyncio.Task[None] | None = None  # (with the recovery)
        self._closing = asyncio.Event()
        self._lifetime: asyncio.Task[bool] | None = None
        #: The loop is ending (asyncio.run cancelled the lifetime task): the release
        #: runs inline then, not in a thread
        self._loop_ending = False
        #: Set by the release: closed, every connection ended and settled, the receipt
        #: writer stopped (what wait_released() waits for)
        self._released = asyncio.Event()

    async def _handle(self, reader: DTPStreamReader, writer: DTPStreamWriter) -> None:
        raw_cid = protocol_of(writer).conn.peer_connection_id
        cid = None if raw_cid is None else "0x" + raw_cid.hex()
        step = self.core.handling(cid)
        if step is HandleStep.SERVE:
            try:
                await self._serve(reader, writer)
            finally:
                self._done()
            return
        # a handshake that finished as the server closed (_admit refuses those it
        # sees): aborted, and settled at once as _admit does (REFUSE_AND_SETTLE)
        writer.abort(CLOSED_REFUSAL)
        if step is HandleStep.REFUSE_AND_SETTLE:
            assert cid is not None  # (handling() refuses a connection naming none)
            await self._settle_refused(cid, self._take_admitted(cid))

    async def _serve(self, reader: DTPStreamReader, writer: DTPStreamWriter) -> None:
        proto = protocol_of(writer)
        conn = proto.conn
        client = conn.peer_address
        raw_cid = conn.peer_connection_id
        cid = None if raw_cid is None else "0x" + raw_cid.hex()
        admitted, refused = self._opening(cid, client, logger)
        if refused is not None:
            writer.abort(refused)
            return
        assert cid is not None and client is not None  # (serve_refusal refuses them)
        # Nor may one come back after its receipts were kept (its settlement failed),
        # or when they cannot be read: its new gate would count them once more (the
        # store read in a thread, the ID reserved already).
        try:
            refusal = await asyncio.to_thread(served_refusal, self.receipt_writer, cid)
            if refusal is not None:
                writer.abort(refusal)
                return
            await self._serve_paid(reader, writer, proto, cid, client, admitted)
        finally:
            self._serving.release(cid)

    async def _serve_paid(
        self,
        reader: DTPStreamReader,
        writer: DTPStreamWriter,
        proto: _Protocol,
        cid: str,
        client: str,
        admitted: Admitted | None,
    ) -> None:
        """Serve and settle an admitted connection (its ID reserved by :meth:`_serve`;
        ``admitted``: what admission read of it, gone on with)."""
        try:
            gate = await asyncio.to_thread(
                gate_for, self.ledger, cid, self.policy, admitted=admitted
            )
        except ChainError as exc:
            refused = self.core.unmetered(cid, exc)
            logger.warning(refused.warning)
            writer.abort(refused.reason)
            if refused.settle and await self._settle(cid, None, admitted):
                raise asyncio.CancelledError from None
            return
        watch_claims(self.claimer, gate)  # (ended by its settlement, in _end)
        paid = PaidConnection(
            proto,
            gate,
            self.core.buckets(client, time.monotonic()),
            self.policy,
            self.receipt_writer,
            self.ledger,
        )
        paid.attach()
        proto.hold_carrier = True  # until settled, should the client close
        self.core.opened(paid)
        # a callback that failed while the connection goes on: the client must read an
        # error, not a clean end that makes a reply cut short look whole (dtp.aio's)
        failed = False
        task = asyncio.current_task()
        if task is not None:
            self._callback_tasks.add(task)
        try:
            await paid.throttle(requests=1)
            if self.requests is not None:
                # each RPC request pays by its receipt (request_billing), not the bytes
                # (the store read in a thread: the loop never waits on the disk)
                key = normalize_id(cid, "connection ID")
                bill = await asyncio.to_thread(
                    bill_for, paid.gate, key, self.store, self.ledger, self.claimer.kept
                )
                await self.requests.serve_billed(reader, writer, bill)
            else:
                callback = cast(PaidCallback, self.callback)
                result = callback(PaidReader(reader, paid), PaidWriter(writer, paid))
                if inspect.isawaitable(result):
                    await result
        except Exception as exc:
            raised = self.core.handler_raised(cid, exc, proto.session.terminated)
            logger.log(raised.level, raised.message, exc_info=raised.exc_info)
            failed = raised.failed
        finally:
            if task is not None:
                self._callback_tasks.discard(task)
            await self._end(writer, paid, cid, failed, admitted)

    async def _end(
        self,
        writer: DTPStreamWriter,
        paid: PaidConnection,
        cid: str,
        failed: bool,
        admitted: Admitted | None = None,
    ) -> None:
        """The end phase of a served connection, the steps of :class:`EndPhase`; a
        cancellation cuts the waits short, not the settlement, and is re-raised after."""
        phase = EndPhase(self.core, paid, failed)
        for step in phase:
            try:
                await self._end_step(step, phase, writer, paid, cid, admitted)
            except asyncio.CancelledError:
                phase.cancel()
            except Exception:
                logger.exception(step.failure, cid)
        if phase.cancelled:
            raise asyncio.CancelledError

    async def _end_step(
        self,
        step: EndStep,
        phase: EndPhase[PaidConnection],
        writer: DTPStreamWriter,
        paid: PaidConnection,
        cid: str,
        admitted: Admitted | None,
    ) -> None:
        proto = paid.proto
        if step is EndStep.FINAL_RECEIPT:
            if self.requests is None:  # (per request: each receipt came first)
                await self._final_receipt(paid)
        elif step is EndStep.TOP_UP:
            # (a read a datagram send started ends first: what it finds counts, and the
            # settlement and the release come after it)
            await paid.deposit_reads_ended()
            await paid.read_deposit(ending=True)
        elif step is EndStep.ENDING:
            phase.ending(proto.session.terminated)
            # the carrier, held until the settlement, releases the ID (docs/escrow.md §2)
            if self.admission is not None:
                self.admission.served.ended(cid)
        elif step is EndStep.SETTLE:
            # (the final receipt is the newest: as in the blocking server's _end)
            newest = self.requests is None and paid.final_is_newest()
            if await self._settle(cid, paid.final, admitted, newest):
                phase.cancel()
        else:  # (EndStep.CLOSE)
            self._release_carrier(proto)
            if proto.session.terminated is not None:
                return
            if phase.plan.abort is not None:
                writer.abort(phase.plan.abort)
                return
            writer.close()
            try:
                with contextlib.suppress(DTPError):
                    await writer.wait_closed()
            except asyncio.CancelledError:
                phase.cancel()
                writer.abort(CLOSED_REFUSAL)

    async def _final_receipt(self, paid: PaidConnection) -> None:
        """The final receipt asked for, once what the callback wrote and the gate held
        back went out and the first stream's close (PaidWriter.close) finished."""
        # what the callback wrote and the gate held back goes out before the end: a
        # client that does not pay is closed after the pause timeout; one that does not
        # read gets as long again as a closing stream waits for its queued data
        if paid.releasing:
            left = set(paid.releasing)
            _, late = await asyncio.wait(left, timeout=self.policy.pause_timeout + _LINGER)
            for task in late:
                task.cancel()
        if paid.closing is not None:
            # (it asks for the final receipt itself, then closes)
            with contextlib.suppress(DTPError):
                await asyncio.shield(paid.closing)
        if paid.proto.session.terminated is None:
            await paid.request_final_receipt()

    @staticmethod
    def _release_carrier(proto: _Protocol) -> None:
        proto.hold_carrier = False
        if proto.session.terminated is not None:
            proto.close_carrier()

    async def _settle(
        self,
        cid: str,
        final: Receipt | None,
        known: Admitted | None = None,
        final_is_newest: bool = False,
    ) -> bool:
        """Settle ``cid`` (:meth:`_settling`, in a thread), waited for to the end even
        when this task is cancelled: whether it was (the caller goes on with it)."""
        # the settlement's thread goes on when this task is cancelled: it counts as a
        # handler until done, so the store is not closed under it
        settling = self._settling(cid, final, known, final_is_newest)
        job = asyncio.get_running_loop().run_in_executor(None, settling)
        self.core.work_starts()
        job.add_done_callback(self._settled)
        cancelled = False
        while True:
            try:
                settlement = await asyncio.shield(job)
                break
            except asyncio.CancelledError:
                # waited for all the same (the thread goes on: what it settled is
                # recorded), the cancellation told after
                if job.cancelled():
                    return True
                cancelled = True
        self._record(cid, settlement)
        return cancelled

    def _settled(self, job: asyncio.Future[Settlement | EndLeft | EndDeferred | None]) -> None:
        self._done()

    async def __aenter__(self) -> PaidAioServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()

    # -- handing over: the admission's verdicts, a connection nobody will serve ----------------

    async def _admit(self, peer: PeerInfo, check: Callable[[PeerInfo], str | None]) -> str | None:
        """The admission of ``peer`` (``check`` in a thread), counted as work the release
        waits for; one admitted as the server closes is refused and settled at once."""
        if not self.core.admission_starts():
            return CLOSED_REFUSAL
        try:
            verdict = await asyncio.to_thread(check, peer)
            step = self.core.admitted(verdict, peer.connection_id)
            if step is not AdmitStep.SETTLE_AND_REFUSE or peer.connection_id is None:
                # (the callback, _handle, counts it next without yielding to the loop)
                return verdict
            await self._settle_unserved(peer.connection_id, self._take_admitted(peer.connection_id))
            return CLOSED_REFUSAL
        finally:
            self._done()

    def _refused_at_limit(self, cid: str) -> None:
        """The DTPServer refused ``cid`` at a connection limit: settled now, nothing
        claimed, the deposit back at once (docs/escrow.md §2); the release waits for it."""
        self.core.work_starts()
        # taken now, before the DTPServer's refusal drops what admission read of it
        task = asyncio.ensure_future(self._settle_refused(cid, self._take_admitted(cid)))
        self._refunds.add(task)
        task.add_done_callback(self._refunds.discard)

    async def _settle_refused(self, cid: str, admitted: Admitted | None) -> None:
        try:
            await self._settle_unserved(cid, admitted)
        finally:
            self._done()

    async def _settle_unserved(self, cid: str, admitted: Admitted | None) -> None:
        """Settle an admitted connection the server will not serve (nothing claimed),
        unless another one on it is served or settled."""
        key = self.core.reserve_unserved(cid)
        if key is None:
            return
        try:
            if await self._settle(key, None, admitted):
                raise asyncio.CancelledError
        finally:
            self._serving.release(key)

    def _done(self) -> None:
        """One _handle call, admission or settlement ended: the last one after close()
        releases the server."""
        if self.core.work_ends():
            self._release()

    # -- the host's policy refresh -------------------------------------------------------------

    async def _policy_loop(self) -> None:
        while True:
            await asyncio.sleep(self.policy.refresh_interval)
            try:
                await self.refresh_policy()
            except Exception:  # (not the end of the task: see refresh_failed)
                # (nobody retrieves the task's exception; a cancellation passes)
                steps.refresh_failed(self.host_id, self.policy.refresh_interval, logger)

    async def refresh_policy(self) -> None:
        """Read the Host now and apply its firewall to open connections."""
        host = await asyncio.to_thread(steps.host_to_refresh, self.ledger, self.host_id, logger)
        if host is None:
            return
        clients = frozenset(paid.client for paid in self.core.live())
        denied = (
            await asyncio.to_thread(steps.refused_clients, self.ledger, host, clients, logger)
            if clients
            else frozenset()
        )
        now = time.monotonic()
        refresh = self.core.refresh(host, now, denied)
        for paid in refresh.denied:
            paid.deny()
        due = refresh.ledger_checks
        if not due:
            return
        ended = await asyncio.to_thread(steps.ended_connections, self.ledger, due, logger)
        for paid in ended:
            paid.closed_on_ledger()
        # a connection opened with a subscription ends with it (docs/escrow.md §13)
        open_ones = [paid for paid in due if paid not in ended]
        if any(paid.subscription is not None for paid in open_ones):
            over = await asyncio.to_thread(
                steps.ended_subscriptions, self.ledger, open_ones, logger, host
            )
            for paid, why in over:
                paid.subscription_ended(why)

    @property
    def open_connections(self) -> int:
        return self.core.open_connections

    # -- lifetime: start, close, the release ---------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        assert self.server is not None
        return self.server.address

    @property
    def websocket_addresses(self) -> tuple[tuple[str, int], ...]:
        """The (host, port) each of the server's WebSocket listeners is bound to, in the
        order they were made (``websocket=(host, 0)`` picks a free port: this says which);
        empty for a server on TCP alone. A page's URL is ``ws://host:port/`` on one of
        them, any path (docs/web-frontend.md)."""
        assert self.server is not None
        return self.server.websocket_addresses

    async def _start(self, options: ServerOptions) -> None:
        """Recover the store, listen on the ``options``' address (with their handshake
        bounds, as :func:`dtp.aio.start_server`'s) and publish the endpoint."""
        from dtp.hostid._asyncio import start_server

        host = await asyncio.to_thread(steps.served_host, self.ledger, self.host_id, self.port)
        # in a thread (up to BUSY_TIMEOUT for the lock file), shielded: an attach made
        # after a cancellation is undone, or the store would count this server for good
        attaching = asyncio.ensure_future(asyncio.to_thread(self.store.attach_server))
        try:
            alone = await asyncio.shield(attaching)
        except asyncio.CancelledError:
            attaching.add_done_callback(self._attached_too_late)
            raise
        self.core.attached = True
        self.recovered = await asyncio.to_thread(self._recovered, alone)
        # a coroutine per verdict, which the DTPServer awaits: the verdict is given on
        # the event loop (_admit), where close() runs, and from there to the callback
        # nothing yields to the loop, so close() cannot come between the two
        self.admission = PaidAdmission(
            self._admit,
            ReportedConnections(self._refused_at_limit),
            self.ledger,
            self.host_id,
            self.port,
            self._open_grace,
            self.identity,
        )
        self.server = await start_server(
            self._handle,
            options.address[0],
            options.address[1],
            identity=self.identity,
            admit=self.admission,
            websocket=options.websocket,
            origins=options.origins,
            **options.listening(),
        )
        endpoint = options.endpoint or self.address
        await asyncio.to_thread(
            publish_endpoint, self.ledger, self.identity, self.host_id, endpoint
        )
        self.core.start(host, time.monotonic())
        self._policy_task = asyncio.ensure_future(self._policy_loop())
        self._make_recovery().start()
        self.claimer.start()
        # the server lives no longer than its loop: cancelled, it closes as close()
        # does, or its writer's thread and its store would stay open
        self._lifetime = asyncio.ensure_future(self._closing.wait())
        self._lifetime.add_done_callback(self._lifetime_ended)

    def _lifetime_ended(self, lifetime: asyncio.Task[bool]) -> None:
        """close() was called, or the loop is ending (the task cancelled): then the
        release runs on the loop at once, so that the store is closed before the loop
        is (in a thread, it raced the loop's end)."""
        if lifetime.cancelled():
            self._loop_ending = True
        self.close()

    def _attached_too_late(self, attaching: asyncio.Future[bool]) -> None:
        """The start was cancelled while attach_server() ran in its thread: what it
        attached, nobody detaches at the release, so it is detached here."""
        if not attaching.cancelled() and attaching.exception() is None:
            self.store.detach_server()

    async def serve_forever(self) -> None:
        assert self.server is not None
        await self.server.serve_forever()

    def close(self) -> None:
        """Stop accepting and refreshing. Open connections finish and settle; once the
        last has (at once when there are none), the receipt writer writes what it holds
        and stops (waited for in a thread, not on the event loop; inline only when the
        loop is ending), and a store :func:`serve` opened from ``receipts`` (a path) is
        closed. A :class:`ReceiptStore` passed in stays open: the caller's to close, once
        :meth:`wait_released` returned True. A client admitted as the server closes is
        refused and its ledger connection settled at once, nothing claimed, before the
        release."""
        release_now = self.core.close()
        if release_now is None:
            return
        self._closing.set()
        if self._policy_task is not None:
            self._policy_task.cancel()
        if self._recovery is not None:
            self._recovery.stop()
        if self.server is not None:
            self.server.close()
        if release_now:
            self._release()
        else:
            # what is waiting is written now, waited for in a thread: a stalled commit
            # froze the loop for the flush's timeout
            threading.Thread(
                target=self.receipt_writer.flush,
                kwargs={"timeout": 5.0},
                name="dtp-paid-aio-flush",
                daemon=True,
            ).start()

    def _release(self) -> None:
        """Stop the receipt writer and close our own store, once, in the loop's executor
        (asyncio.run waits for it), setting ``_released``; inline when the loop is
        ending."""
        job: asyncio.Future[None] | None = None
        if not self._loop_ending:
            with contextlib.suppress(RuntimeError):  # no loop, or its executor shut down
                job = asyncio.get_running_loop().run_in_executor(None, self._release_store)
        if job is None:
            try:
                self._release_store(inline=True)
            finally:
                # (as the executor's job: set when it failed too, the failure raised
                # here where the job's is logged; unset, wait_released() said False)
                self._released.set()
        else:
            job.add_done_callback(self._store_released)

    def _store_released(self, job: asyncio.Future[None]) -> None:
        if not job.cancelled() and job.exception() is not None:
            logger.error("releasing the receipt store failed", exc_info=job.exception())
        self._released.set()

    def _release_store(self, inline: bool = False) -> None:
        # (the wait for a recovery under way bounded inline, for the loop's own thread
        # runs this when the loop is ending: a claim that takes longer has its
        # "claimed" mark logged as not written, the claim made)
        self._release_books(RECOVERY_CLOSE_WAIT, RECOVERY_CLOSE_WAIT if inline else None)

    async def wait_closed(self) -> None:
        """Wait until the listener is closed (connections being served go on: see
        :meth:`wait_released`)."""
        if self.server is not None:
            await self.server.wait_closed()

    def wait_released(self, timeout: float | None = None) -> Coroutine[Any, Any, bool]:
        """After :meth:`close`: wait until every connection the server was serving
        ended and settled and the receipt writer stopped (True), or ``timeout`` seconds
        (False). Then a :class:`ReceiptStore` passed in may be closed: closed before,
        a settlement still to come failed on it, its fees unclaimed. Waits as long as a
        client keeps its connection open, and for a receipt writer the release left
        still writing. (False at once when the server is not closed.)

        Not from a callback: it would wait for its own connection
        (:class:`~dtp.errors.LocalProtocolError`, as the blocking server's; raised by
        the call itself, so ``asyncio.wait_for(server.wait_released(), t)`` there is
        refused too). A task the callback started (an admin "stop": close, wait, exit)
        may call it: it waits for the callback's connection too, which ends once the
        callback returns. So a callback must not await such a task: it would wait
        until ``timeout``."""
        # (checked at the call, in the caller's task: wait_for() on Python 3.11 runs
        # the coroutine in a task of its own)
        try:
            caller = asyncio.current_task()
        except RuntimeError:  # (made off the loop, for run_coroutine_threadsafe())
            caller = None
        if caller is not None and caller in self._callback_tasks:
            raise LocalProtocolError("wait_released() in a callback waits for its own connection")
        return self._await_released(timeout)

    async def _await_released(self, timeout: float | None) -> bool:
        if not self.core.closed:
            return False
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._released.wait(), timeout)
        if not self._released.is_set():
            return False
        # (_writer_done(0) only looks: the writer's thread is told to stop already)
        while not self._writer_done(0):
            if deadline is not None and loop.time() >= deadline:
                return False
            await asyncio.sleep(_WRITER_POLL)
        return True


async def serve(
    host_id: str,
    port: int,
    callback: PaidCallback | AsyncRequestServer,
    *,
    ledger: Ledger,
    identity: HostIdentity,
    address: tuple[str, int] = ("127.0.0.1", 0),
    receipts: ReceiptStore | str | Path | None = None,
    policy: ServicePolicy | None = None,
    config: ConnectionConfig | None = None,
    endpoint: tuple[str, int] | None = None,
    backlog: int = 128,
    max_handshakes: int = DEFAULT_MAX_HANDSHAKES,
    max_handshakes_per_address: int | None = DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
    max_waiting_per_address: int = DEFAULT_MAX_WAITING_PER_ADDRESS,
    open_grace: float | None = None,
    websocket: tuple[str, int] | None = None,
    origins: Iterable[str] | None = None,
    billing: Billing = "bytes",
) -> PaidAioServer:
    """Serve a paid DTP service on ``port`` of the Host ``host_id`` (:func:`dtp.aio.serve`,
    the asyncio twin of :func:`dtp.socket.serve`); ``callback(reader, writer)`` gets a
    paid stream pair per admitted client. Returns the running :class:`PaidAioServer`;
    docs/escrow.md says what a paid server does with each connection's money.

    ``billing``: as :func:`dtp.socket.serve`'s, ``"requests"`` billing each RPC request
    by the receipt it carries, ``callback`` then an
    :class:`~dtp.messaging.rpc.AsyncRpcServer` made without ``payments``
    (docs/messaging.md §2.5). The handshake bounds (``max_handshakes``, ``backlog``,
    ``max_handshakes_per_address``, ``max_waiting_per_address``), ``open_grace``, and
    ``websocket=(host, port)`` and ``origins`` (the WebSocket carrier beside TCP): as
    :func:`dtp.aio.start_server`'s (the Host publishes the TCP endpoint only; the
    WebSocket address is ``server.websocket_addresses``). Every option is refused
    before the ledger is read or written."""
    # every option checked before the ledger is read or written (as dtp.socket.serve):
    # the store's recovery claims on it (tests/paid/test_server_options.py)
    options = ServerOptions.checked(
        identity,
        address=address,
        endpoint=endpoint,
        policy=policy,
        config=config,
        backlog=backlog,
        max_handshakes=max_handshakes,
        max_handshakes_per_address=max_handshakes_per_address,
        max_waiting_per_address=max_waiting_per_address,
        open_grace=open_grace,
        websocket=websocket,
        origins=origins,
        ledger=ledger,
        billing=billing,
    )
    with server_store(receipts) as (store, opened):
        server = PaidAioServer(
            host_id,
            port,
            callback,
            ledger=ledger,
            identity=identity,
            store=store,
            policy=options.policy,
            close_store=closes_store(receipts),
            open_grace=options.open_grace,
            billing=billing,
        )
    try:
        await server._start(options)
    except BaseException:
        # whatever started so far stops with the error, the store too (in memory as
        # well: nobody gets this server); closed by the release, which waits for a
        # connection admitted while the endpoint was being published
        server._own_store = opened
        server.close()
        with contextlib.suppress(Exception):
            await server.wait_closed()
        raise
    return server
