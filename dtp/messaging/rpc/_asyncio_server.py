"""The asyncio RPC server (:class:`AsyncRpcServer`): each request a task, on the same
protocol, fees and checks as the blocking server."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import inspect
import logging
import types
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dtp.errors import DTPError
from dtp.messaging._framing import DEFAULT_MAX_MESSAGE
from dtp.messaging._protocol import (
    RECV_SIZE,
    AckReceived,
    NotificationReceived,
    ProtocolViolation,
    RequestCancelled,
    RequestReceived,
    RpcProtocol,
)
from dtp.messaging.method_rules import MethodRules
from dtp.messaging.rpc._engine import PayRequest, ServerCallFees, TakeEscrow
from dtp.messaging.rpc._fees import (
    RequestPayments,
    ResponseFeePolicy,
    stream_payments,
)
from dtp.messaging.rpc._server_base import (
    ONE_REQUEST,
    CallContext,
    Handler,
    ServerBase,
    answer_meta,
    call_notification,
    end_request,
    error_reply,
    failure_reply,
    note_counted,
    notification_failed,
    refusal_reply,
    refuse_missing,
    tell_client_ended,
)
from dtp.messaging.rpc._streams import LOOP_TURN, TAKE_PIECE, TAKE_TIME
from dtp.transport.asyncio._threads import threaded_or_released

if TYPE_CHECKING:
    from dtp.hostid.paid._request_billing import ConnectionBill
    from dtp.messaging.rpc._billed import BilledConnections

logger = logging.getLogger(__name__)


#: Exact types of what a plain handler returns that are no awaitable (nor a generator):
#: the inline answer's test for one is made with no call for these
_SETTLED: frozenset[type] = frozenset(
    {bytes, str, int, float, bool, type(None), list, dict, tuple, bytearray}
)


def _returning(outcome: Any) -> Handler:
    """A handler giving ``outcome``, what a plain handler returned that is still to be
    awaited (AsyncRpcServer.serve_stream's inline answers)."""
    return lambda _params: outcome


class AsyncRpcServer(ServerBase):
    """asyncio RPC server: handlers may be coroutines or plain functions; each request
    runs as its own task, so answers go out in completion order (a request for a plain
    function taking no context, read alone on a stream that pays nothing, is answered by
    the stream's task after a turn of the loop: it would complete at its task's first
    step). Notifications are handled in order by the stream's reading loop (an async
    notification handler is awaited there: a slow one delays the requests behind it).
    Use :meth:`serve_stream` as a :func:`dtp.aio.start_server` callback (or call it on
    any ``(reader, writer)``), or :meth:`serve_connection` to also answer on every
    stream the client opens.

    ``payments`` / ``response_fees`` as for :class:`RpcServer`; their ledger reads run in
    a worker thread. The options are checked here, as :class:`RpcServer`'s are.
    """

    def __init__(
        self,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE,
        max_pending: int = 1024,
        payments: RequestPayments | Callable[[str | None], RequestPayments | None] | None = None,
        response_fees: ResponseFeePolicy | None = None,
        rules: MethodRules | None = None,
    ) -> None:
        super().__init__(max_message_size, max_pending, payments, response_fees, rules)
        self.violations = 0
        self.served = 0
        self._billed: BilledConnections | None = None
        # handler -> whether it is a plain function (not a coroutine function): one
        # such, taking no context, answers a request read alone in the stream's own
        # task (_answer_inline), as the blocking server's inline loop answers it
        self._plain: dict[Handler, bool] = {}

    async def serve_connection(self, reader: Any, writer: Any) -> None:
        """:meth:`serve_stream` on the connection's first stream and on every stream the client
        opens on it (``writer.accept_stream()``), until the first stream ends; a
        :func:`dtp.aio.start_server` callback."""
        streams: set[asyncio.Task[None]] = set()

        async def accept_streams() -> None:
            while True:
                try:
                    r, w = await writer.accept_stream()
                except (DTPError, OSError):
                    return
                task = asyncio.get_running_loop().create_task(self.serve_stream(r, w))
                streams.add(task)
                task.add_done_callback(streams.discard)

        acceptor = asyncio.get_running_loop().create_task(accept_streams())
        try:
            await self.serve_stream(reader, writer)
        finally:
            acceptor.cancel()
            for task in list(streams):
                task.cancel()
            with contextlib.suppress(BaseException):
                await asyncio.gather(acceptor, *streams, return_exceptions=True)

    def bill_per_request(self) -> None:
        """Be the handler of a paid server billing per request (``dtp.aio.serve(...,
        billing="requests")``): its checks become this server's payments source
        (ValueError when it has ``payments`` of its own). Called by the paid server."""
        from dtp.messaging.rpc._billed import BilledConnections

        if self._billed is None:
            self._billed = BilledConnections(self)

    async def serve_billed(self, reader: Any, writer: Any, bill: ConnectionBill) -> None:
        """Serve a connection a paid server admitted, its requests checked against
        ``bill`` (after :meth:`bill_per_request`), until its first stream ends."""
        if self._billed is None:
            raise RuntimeError("bill_per_request() first")
        await self._billed.serve_async(reader, writer, bill)

    async def serve_stream(self, reader: Any, writer: Any) -> None:
        """Answer requests from ``reader``/``writer`` until the peer closes the stream;
        a :func:`dtp.aio.start_server` callback that serves the first stream only."""
        proto = RpcProtocol(max_message_size=self.max_message_size, max_incoming=self.max_pending)
        tasks: dict[int, asyncio.Task[None]] = {}
        # the running handlers' contexts, for the end of the client's side
        contexts: dict[int, CallContext] = {}
        loop = asyncio.get_running_loop()
        peer = getattr(writer, "peer_address", None)

        async def flush() -> None:
            data = proto.data_to_send()
            if data:
                writer.write(data)
                await writer.drain()

        # resolved in a thread, shielded: the resolution counts this stream as one of
        # its connection's users, released at the end below -- or, when this task is
        # cancelled meanwhile (a connection's first stream ending while its second
        # resolves), once the resolution is done; left counted, a failure cached for
        # the connection (its open still landing) would refuse its later streams for good
        connection_id = getattr(writer, "peer_connection_id", None)
        resolving = loop.run_in_executor(None, stream_payments, self._payments, writer)
        try:
            payments, payments_error = await asyncio.shield(resolving)
        except asyncio.CancelledError:
            resolving.add_done_callback(lambda _: self._payments.release(connection_id))
            raise

        fees = ServerCallFees(payments, payments_error, self.response_fees)

        async def run(event: RequestReceived, fn: Handler, wants_ctx: bool) -> None:
            ctx = None
            if fees.needs_context(wants_ctx):
                ctx = CallContext(event.request_id, event.method, event.deadline, event.meta, peer)
                contexts[event.request_id] = ctx
            escrow_id: str | None = None
            ended = False  # (end_request told: with a response, or refused)
            try:
                refused = None
                try:
                    prices = ONE_REQUEST
                    if self.rules is not None or self.priced:
                        # the method rules first: a refused request takes no fee
                        # (docs/messaging.md §2.5)
                        prices = self.request_cost(event.method, event.params, peer)
                        if ctx is not None:
                            ctx.cost = prices
                    for step in fees.admission(event.meta, peer, prices) if fees.paid else ():
                        if type(step) is PayRequest:
                            await step.payments.admit_async(step.meta, step.requests)
                            ctx = note_counted(ctx, step, event, peer)
                        else:
                            assert ctx is not None and type(step) is TakeEscrow
                            # (a request cancelled meanwhile -- its CANCEL, the
                            # stream's end -- has the escrow admitted released, as
                            # any request that ended with no response)
                            escrow_id = await threaded_or_released(
                                functools.partial(step.policy.admit, step.meta, step.peer),
                                functools.partial(end_request, fees, event.request_id, body=None),
                            )
                            ctx.escrow_id = escrow_id
                except Exception as exc:
                    refused = exc
                if refused is not None:
                    refusal = refusal_reply(fees, event.method, refused)
                    proto.send_error(event.request_id, *refusal, request=event)
                else:
                    outcome = fn(event.params, ctx) if wants_ctx else fn(event.params)
                    if inspect.isawaitable(outcome):
                        left = None if event.deadline is None else event.deadline - loop.time()
                        outcome = await asyncio.wait_for(outcome, left)
                    # (only its own request: the client may have ended it, reused its id)
                    meta = answer_meta(fees, ctx)
                    body = proto.send_response(event.request_id, outcome, meta=meta, request=event)
                    self.served += 1
                    ended = True
                    end_request(fees, event.request_id, escrow_id, body)
            except asyncio.CancelledError as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    return  # this task was cancelled: the caller cancelled, or serve ended
                # the handler's own (it awaited something cancelled): a failure like any
                logger.warning("handler %s failed: cancelled (%r)", event.method, exc)
                proto.send_error(event.request_id, *error_reply(exc), request=event)
            except Exception as exc:
                if (
                    isinstance(exc, TimeoutError)
                    and event.deadline is not None
                    and loop.time() >= event.deadline
                ):
                    return  # the request's deadline (wait_for's): the caller stopped waiting
                # (a TimeoutError of the handler's own is its failure, answered as any)
                code, message, data = failure_reply(event.method, exc)
                proto.send_error(event.request_id, code, message, data, request=event)
            except BaseException as exc:  # KeyboardInterrupt, SystemExit...
                # answered as any failure (written: a loop that stops at once may
                # close the connection before it leaves), then on up: asyncio stops
                # the loop with it
                proto.send_error(event.request_id, *error_reply(exc), request=event)
                with contextlib.suppress(Exception):
                    await flush()
                raise
            finally:
                # only this task's entry: once the client cancelled its request, it may
                # have reused the id, and the later request's task is listed under it
                # now (removed, a CANCEL of it, or the end of the stream, missed it)
                if tasks.get(event.request_id) is asyncio.current_task():
                    del tasks[event.request_id]
                if ctx is not None and contexts.get(event.request_id) is ctx:
                    del contexts[event.request_id]
                if not ended:  # no response: failed, cancelled, past its deadline
                    end_request(fees, event.request_id, escrow_id, None)
            with contextlib.suppress(DTPError, OSError):
                await flush()

        since = loop.time()  # the loop last ran other tasks (about)
        # (kept: live views of the protocol's state, asked per read without a call)
        methods, plain, unanswered = self.methods, self._plain, proto.unanswered
        output = proto.output
        take_request, response_parts = proto.take_request, proto.response_parts
        # an answer's two parts, written as one (AsyncRpcClient._write_parts)
        write_parts = getattr(writer, "writelines", None) or (
            lambda parts: writer.write(b"".join(parts))
        )
        try:
            while True:
                # no wait_for around read(): cancelling a read can lose what it took;
                # deadlines are enforced per request in run() instead
                data = await reader.read(RECV_SIZE)
                if data == b"":
                    # the client ended its side: it may still read (a half-close after
                    # its last request), so what it asked is still answered -- unless
                    # the connection ended (the client closed for good): the handlers
                    # left are cancelled then (finally), as a long one would hold the
                    # stream for good; handlers watching ctx.cancelled are told at once
                    tell_client_ended(contexts.values())
                    while tasks and not writer.is_closing():
                        await asyncio.wait(list(tasks.values()), timeout=0.1)
                    return
                # requests whose deadline passed first: they count against max_pending
                # until then, and nothing here wakes up at a deadline (none pending,
                # none can have passed)
                now = loop.time()
                if unanswered:
                    timer = proto.get_timer()
                    if timer is not None and timer <= now:
                        proto.handle_timer(now)
                # a read that is exactly one request, for a plain function taking no
                # context, of a stream that pays nothing on a server with no method
                # rules: answered by this task, with no task of its own, event or
                # pending state (the blocking server's inline loop; the engine's
                # take_request and response_parts)
                message = (
                    take_request(data)
                    if not fees.paid and self.rules is None and not self._pricing
                    else None
                )
                if message is not None:
                    entry = methods.get(message[2])
                    fn = entry[0] if entry is not None and not entry[1] else None
                    if fn is not None:
                        is_plain = plain.get(fn)
                        if is_plain is None:
                            is_plain = plain[fn] = not inspect.iscoroutinefunction(fn)
                        if is_plain:
                            # the handler starts on a later turn of the loop than the read,
                            # as the request's own task would: the loop's other work (the
                            # other streams) has its turn in between. Nothing of this
                            # stream is read meanwhile (this task is its reader)
                            await LOOP_TURN
                            since = now
                            # (in a copy of this task's context, as the request's own task
                            # would run it: its context variables stay its own)
                            context = contextvars.copy_context()
                            request_id = message[1]
                            reply = None
                            head = b""  # (reply's length prefix: the two written as one)
                            try:
                                outcome = context.run(fn, message[3])
                            except asyncio.CancelledError as exc:  # (its own: as run()'s)
                                logger.warning("handler %s failed: cancelled (%r)", message[2], exc)
                                reply = proto.error_frame(request_id, *error_reply(exc))
                            except Exception as exc:
                                timeout_ms = message[4]
                                if not (
                                    isinstance(exc, TimeoutError)
                                    and timeout_ms
                                    and loop.time() >= now + timeout_ms / 1000
                                ):  # (past the request's deadline, as run(): no answer)
                                    code, text, extra = failure_reply(message[2], exc)
                                    reply = proto.error_frame(request_id, code, text, extra)
                            except BaseException as exc:  # KeyboardInterrupt, SystemExit...
                                # answered as any failure, then on up (as run())
                                with contextlib.suppress(DTPError, OSError):
                                    writer.write(proto.error_frame(request_id, *error_reply(exc)))
                                    await writer.drain()
                                raise
                            else:
                                if type(outcome) not in _SETTLED and (
                                    hasattr(outcome, "__await__")
                                    or isinstance(outcome, types.GeneratorType)
                                ):
                                    # a plain function that returned an awaitable: awaited
                                    # in a task of its own, in the context it ran in
                                    proto.admit_request(message, now)
                                    event = proto.next_event()
                                    assert type(event) is RequestReceived
                                    tasks[request_id] = loop.create_task(
                                        run(event, _returning(outcome), False), context=context
                                    )
                                else:
                                    head, reply = response_parts(request_id, outcome)
                                    self.served += 1
                            if reply is not None:
                                if output:  # (what was queued before goes first)
                                    writer.write(proto.data_to_send())
                                if head:
                                    write_parts((head, reply))
                                else:
                                    writer.write(reply)
                                await writer.drain()
                            continue
                    if message is not None:
                        proto.admit_request(message, now)
                        data = b""  # (taken: its event is below)
                # a large read is taken in pieces, the loop running in between (as in
                # AsyncRpcClient._receive_in_pieces): frames costly to take (junk, a flood of tiny
                # ones) held the loop, and every other stream it serves, for a whole read
                pieces = len(data) > TAKE_PIECE
                for pos in range(0, len(data) or 1, TAKE_PIECE):
                    if pos:  # (pieces only)
                        await LOOP_TURN
                        since = now = loop.time()
                    if data:
                        proto.receive_data(data[pos : pos + TAKE_PIECE] if pieces else data, now)
                    for event in proto.events():
                        if isinstance(event, RequestReceived):
                            entry = self.methods.get(event.method)
                            if entry is None:
                                refuse_missing(proto, event, fees)
                                continue
                            tasks[event.request_id] = loop.create_task(run(event, *entry))
                        elif isinstance(event, RequestCancelled):
                            task = tasks.pop(event.request_id, None)
                            if task is not None:
                                task.cancel()
                        elif isinstance(event, NotificationReceived):
                            n_entry = self.notifications.get(event.method)
                            if n_entry is not None and self.notification_allowed(
                                event.method, peer
                            ):
                                outcome = call_notification(n_entry, event, peer)
                                if inspect.isawaitable(outcome):
                                    try:
                                        await outcome
                                    except Exception:
                                        notification_failed(event.method)
                        elif isinstance(event, AckReceived):
                            ack = fees.acked(event.request_id, event.signature)
                            if ack is not None:
                                await asyncio.to_thread(
                                    ack.policy.acknowledged, ack.escrow_id, ack.signature
                                )
                        elif isinstance(event, ProtocolViolation):
                            self.violations += 1
                await flush()
                if loop.time() - since >= TAKE_TIME:
                    # reads back to back (the reader's buffer full) never wait: let the
                    # loop run now and then
                    await LOOP_TURN
                    since = loop.time()
        except (DTPError, OSError) as exc:
            logger.debug("RPC stream ended: %s", exc)
        finally:
            self._payments.release(connection_id)
            for task in list(tasks.values()):
                task.cancel()

    async def serve(self, reader: Any, writer: Any) -> None:
        """Deprecated alias of :meth:`serve_stream` (removed in 0.3.0): the blocking
        server's ``serve`` accepted connections, where this one serves one stream."""
        warnings.warn(
            "AsyncRpcServer.serve(reader, writer) is deprecated (removed in 0.3.0): use "
            "serve_stream",
            DeprecationWarning,
            stacklevel=2,
        )
        await self.serve_stream(reader, writer)
