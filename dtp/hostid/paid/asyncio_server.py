"""Serving a paid DTP service with asyncio: :func:`dtp.aio.serve`, the twin of
:mod:`dtp.hostid.paid` (same policy, gate, rate limits, host refresh and settlement).

The callback gets a :class:`PaidReader` / :class:`PaidWriter` pair: reads and
``drain()`` wait for payment and for the rate limits first (no flow-control credit goes
back meanwhile, so the client's writes block), and ``write()`` lets out only what the
receipt gate allows, holding the rest until payment comes. Ledger calls and
receipt-store writes run in threads, never on the event loop.

:class:`PaidAioServer` is made of parts, each in a module of its own over the attributes
:mod:`~dtp.hostid.paid.asyncio_server_state` declares: the admission and handing over
(:mod:`~dtp.hostid.paid.asyncio_server_handover`), the host's policy refresh
(:mod:`~dtp.hostid.paid.asyncio_server_policy`) and the lifetime, its start included
(:mod:`~dtp.hostid.paid.asyncio_server_lifetime`); this module has the constructor, the
serving and end of a connection, and :func:`serve`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from dtp.errors import (
    ChainError,
    DTPError,
)
from dtp.hostid.admission import Admitted, checked_open_grace
from dtp.hostid.paid.asyncio import (
    PaidCallback,
    PaidConnection,
    PaidReader,
    PaidWriter,
    protocol_of,
)
from dtp.hostid.paid.asyncio_server_handover import AioServerHandover
from dtp.hostid.paid.asyncio_server_lifetime import AioServerLifetime
from dtp.hostid.paid.asyncio_server_policy import AioHostPolicyRefresh
from dtp.hostid.paid.policy import CLOSED_REFUSAL, ServicePolicy, gate_for
from dtp.hostid.paid.request_billing import (
    AsyncRequestServer,
    Billing,
    bill_for,
    checked_billing,
    request_server,
)
from dtp.hostid.paid.server_admission import PaidAdmission
from dtp.hostid.paid.server_core import (
    EndPhase,
    EndStep,
    HandleStep,
    PaidServerCore,
    ServerOptions,
)
from dtp.ledger.objects import normalize_id
from dtp.ledger.receipt import Receipt
from dtp.payments.ends import EndDeferred, EndLeft
from dtp.payments.receipt_store import ReceiptStore
from dtp.payments.receipt_writer import ReceiptWriter
from dtp.payments.serving import (
    DeferredEnds,
    Recovery,
    SettlementRetries,
    closes_store,
    open_store,
    served_refusal,
    settle_ended,
)
from dtp.transport.handshake_slots import (
    DEFAULT_MAX_HANDSHAKES,
    DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
    DEFAULT_MAX_WAITING_PER_ADDRESS,
)

if TYPE_CHECKING:
    from dtp.identity.keys import HostIdentity
    from dtp.ledger.interface import Ledger
    from dtp.ledger.objects import Settlement
    from dtp.protocol.connection import ConnectionConfig
    from dtp.transport.asyncio.protocol import Protocol as _Protocol
    from dtp.transport.asyncio.server import DTPServer
    from dtp.transport.asyncio.streams import DTPStreamReader, DTPStreamWriter


logger = logging.getLogger(__name__)

_LINGER = 5.0  # seconds dtp.aio's close waits for queued data to leave


class PaidAioServer(AioServerHandover, AioHostPolicyRefresh, AioServerLifetime):
    """The asyncio paid server (see :func:`serve`)."""

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
        self.ledger = ledger
        self._open_grace = checked_open_grace(open_grace)  # (the admission's, made in _start)
        self.identity = identity
        self.host_id = normalize_id(host_id, "host ID")
        self.port = port
        self.callback = callback
        self.store = store
        self._own_store = close_store  # closed with the server (one serve() opened)
        self.receipt_writer = ReceiptWriter(store)
        self.policy = policy
        #: The server-wide rules (called from the event loop only)
        self.core: PaidServerCore[PaidConnection] = PaidServerCore(policy)
        self.server: DTPServer | None = None
        #: The ledger admission (made as the server starts)
        self.admission: PaidAdmission[Awaitable[str | None]] | None = None
        # settlements of connections refused at a connection limit (held: the loop
        # keeps only weak references to tasks)
        self._refunds: set[asyncio.Task[None]] = set()
        self.limiter = self.core.limiter
        self.recovered: list[tuple[str, Settlement]] = []
        self.settlements = self.core.settlements
        #: the tasks running a callback (wait_released() there would wait for its own
        #: connection; a task a callback starts is another, free to wait)
        self._callback_tasks: set[asyncio.Task[Any]] = set()
        self._serving = self.core.serving
        #: The settlements that failed, retried by the recovery thread (it reserves
        #: each connection ID in ``_serving`` as a DTP connection would)
        self.retries = SettlementRetries(
            ledger, identity, self.receipt_writer, self._serving, self.settlements
        )
        self.left = self.core.left
        """The most recent ends left to their clients: (connection ID, fee and gas)."""
        #: The ends waiting to be settled together (their fees below a transaction's
        #: gas), settled or left in the recovery rounds and at the release
        self.deferred = DeferredEnds(
            ledger, identity, self.receipt_writer, policy.end_rule, self.settlements, self.left
        )
        self._policy_task: asyncio.Task[None] | None = None
        self._recovery: Recovery | None = None  # (started with the policy task)
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
        # (taken first, whatever follows: a connection refused below leaves no entry)
        admitted = None if cid is None else self._take_admitted(cid)
        refused = self.core.serve_refusal(cid, client)
        if refused is not None:
            if refused.warning is not None:
                logger.warning(refused.warning)
            writer.abort(refused.reason)
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
            if refused.settle and await self._settle_surely(cid, None, admitted):
                raise asyncio.CancelledError from None
            return
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
                bill = await asyncio.to_thread(bill_for, paid.gate, key, self.store, self.ledger)
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
        """The end phase of a served connection: the core's :class:`EndPhase` gives its
        steps in order, each made here; one that raises is logged, and the later ones
        run all the same (the top-up read and the settlement protect money). A
        cancellation (asyncio.run ending the loop, which cancels each task once) cuts
        the waits short, but not the settlement: it is re-raised once settled."""
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
            if await self._settle_surely(cid, paid.final, admitted):
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

    async def _settle_surely(
        self, cid: str, final: Receipt | None, known: Admitted | None = None
    ) -> bool:
        """:meth:`_settle`, waited for to the end even when cancelled: whether it was."""
        try:
            await self._settle(cid, final, known)
        except asyncio.CancelledError:
            return True
        return False

    @staticmethod
    def _release_carrier(proto: _Protocol) -> None:
        proto.hold_carrier = False
        if proto.session.terminated is not None:
            proto.close_carrier()

    async def _settle(self, cid: str, final: Receipt | None, known: Admitted | None = None) -> None:
        # The settlement reads and marks the receipt store from its thread, which goes
        # on when this task is cancelled (asyncio.run ending the loop with the server
        # still settling): it counts as a handler until the thread is done, so that the
        # store is not closed under it (a crash in SQLite, or the claim's mark lost).
        loop = asyncio.get_running_loop()
        job = loop.run_in_executor(
            None,
            functools.partial(
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
            ),
        )
        self.core.work_starts()
        job.add_done_callback(self._settled)
        cancelled = False
        while True:
            try:
                settlement = await asyncio.shield(job)
                break
            except asyncio.CancelledError:
                # waited for all the same (the thread goes on: what it settled is
                # recorded), the cancellation re-raised after
                if job.cancelled():
                    raise
                cancelled = True
        if not self.core.settled(cid, settlement):
            self.retries.add(cid)
        if cancelled:
            raise asyncio.CancelledError

    def _settled(self, job: asyncio.Future[Settlement | EndLeft | EndDeferred | None]) -> None:
        self._done()

    async def __aenter__(self) -> PaidAioServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


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
    """The asyncio twin of :func:`dtp.socket.serve`: a started :class:`PaidAioServer`;
    ``callback(reader, writer)`` runs per admitted client.

    ``billing``: as :func:`dtp.socket.serve`'s. ``"bytes"`` (the default) meters each
    connection by its transport and ``callback`` gets a paid stream pair;
    ``"requests"`` bills per request: ``callback`` is an
    :class:`~dtp.messaging.rpc.AsyncRpcServer` made without ``payments``, each of its
    requests paid by the receipt it carries (docs/messaging.md §2.5), kept before it is
    served and claimed when the connection ends. TypeError / ValueError for a callback
    that is not such a server (a blocking RpcServer included), before the ledger is
    read or written.

    ``max_handshakes``, ``backlog`` (the longest line of connections waiting for one of
    those handshakes to end), ``max_handshakes_per_address`` and
    ``max_waiting_per_address``: the bounds on handshakes in progress, as
    :func:`dtp.aio.start_server`'s (same defaults; refused as there -- ValueError,
    TypeError for a backlog that is no integer -- but before the ledger is read or
    written). ``open_grace``: the admission's grace for an open still landing, as
    :func:`dtp.aio.start_server`'s (InvalidArgument, before the ledger is read or
    written). ``websocket=(host, port)`` and ``origins``: also serve over the WebSocket
    carrier, as :func:`dtp.aio.start_server`'s (the Host publishes the TCP endpoint
    only); its address is ``server.server.websocket_addresses``."""
    # every option checked before the ledger is read or written (as dtp.socket.serve):
    # the store's recovery claims on it (tests/paid/test_server_options.py)
    checked_billing(billing)  # (the callback is checked with it as the server is made)
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
    )
    store, opened = open_store(receipts)
    try:
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
    except BaseException:
        if opened:
            store.close()
        raise
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
