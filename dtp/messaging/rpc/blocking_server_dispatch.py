"""The dispatch of a stream a blocking RPC server serves (:class:`StreamDispatch`): each
event to its handler -- inline or through the worker pool (a ``_Job``), the fees'
admission first -- cancellations, acknowledgements and violations."""

from __future__ import annotations

import logging
import time

from dtp.errors import DTPError
from dtp.messaging import errors as E
from dtp.messaging.protocol import (
    AckReceived,
    NotificationReceived,
    ProtocolViolation,
    RequestCancelled,
    RequestReceived,
    RpcEvent,
)
from dtp.messaging.rpc.blocking_server_replies import StreamReplies
from dtp.messaging.rpc.blocking_server_state import _Job
from dtp.messaging.rpc.engine import PayRequest, TakeEscrow
from dtp.messaging.rpc.server_base import (
    ONE_REQUEST,
    CallContext,
    Handler,
    call_notification,
    end_request,
    failure_reply,
    refusal_reply,
    refuse_missing,
)

# the logger is named after the public module, which applications configure
logger = logging.getLogger("dtp.messaging.rpc.blocking_server")


class StreamDispatch(StreamReplies):
    """How a served stream hands its events to the handlers and answers them."""

    def handle(self, event: RpcEvent) -> None:
        server = self.server
        if isinstance(event, RequestReceived):
            entry = server.methods.get(event.method)
            if entry is None:
                with self.lock:
                    refuse_missing(self.proto, event)
                return
            fn, wants_ctx = entry
            fees = self.fees
            prices = ONE_REQUEST
            if server.rules is not None or server.priced:
                # the method rules first: a refused request takes no fee
                # (docs/messaging.md §2.5)
                try:
                    prices = server.request_cost(event.method, event.params, self.peer)
                except Exception as exc:
                    refusal = refusal_reply(event.method, exc)
                    with self.lock:
                        self.proto.send_error(event.request_id, *refusal, request=event)
                    return
            ctx = None
            if fees.needs_context(wants_ctx):
                ctx = CallContext(
                    event.request_id, event.method, event.deadline, event.meta, self.peer
                )
            if fees.paid:
                try:
                    for step in fees.admission(event.meta, self.peer, prices):
                        if type(step) is PayRequest:
                            step.payments.admit(step.meta, step.requests)
                        else:
                            assert ctx is not None and type(step) is TakeEscrow
                            ctx.escrow_id = step.policy.admit(step.meta, step.peer)
                except Exception as exc:
                    refusal = refusal_reply(event.method, exc)
                    with self.lock:
                        self.proto.send_error(event.request_id, *refusal, request=event)
                    return
            if server._pool is None:
                self.run_handler(fn, wants_ctx, event, ctx)
                return
            job = _Job(fn, wants_ctx, event, ctx)
            with self.lock:
                if ctx is not None:
                    self.contexts[event.request_id] = ctx
                self.queued[event.request_id] = job
            try:
                server._pool.submit(self.run_in_pool, job)
            except RuntimeError:  # pool shut down
                with self.lock:
                    if self.queued.get(event.request_id) is job:
                        del self.queued[event.request_id]
                    self.forget_context(event.request_id, ctx)
                    self.proto.send_error(
                        event.request_id, E.SERVER_BUSY, "shutting down", request=event
                    )
                self.release_escrow(ctx)
        elif isinstance(event, NotificationReceived):
            n_entry = server.notifications.get(event.method)
            if n_entry is not None and server.notification_allowed(event.method, self.peer):
                call_notification(n_entry, event, self.peer)
        elif isinstance(event, RequestCancelled):
            with self.lock:
                ctx_found = self.contexts.pop(event.request_id, None)
                ended = self.queued.pop(event.request_id, None)
                if ended is not None:  # still queued: it never runs (_Job)
                    ended.event = ended.ctx = None
                    self.proto.held_incoming += 1
            if ctx_found is not None:
                ctx_found.cancelled.set()
                if ended is not None:
                    self.release_escrow(ctx_found)
        elif isinstance(event, AckReceived):
            ack = self.fees.acked(event.request_id, event.signature)
            if ack is not None:
                ack.policy.acknowledged(ack.escrow_id, ack.signature)
        elif isinstance(event, ProtocolViolation):
            self.violations += 1

    def dropped(self, event: RequestReceived, ctx: CallContext | None) -> bool:
        """Whether the request of ``event`` ended before its handler started (the
        client cancelled it, or its deadline passed: a request queued behind others,
        in the pool or in a batch read); it is then forgotten, unanswered (the client
        stopped waiting). Its handler must not run: the client was told the call was
        cancelled or timed out, so it runs no side effects for it. (A dict lookup
        without the lock, and a clock read for a request with a deadline, per
        request.)"""
        deadline = event.deadline
        if self.unanswered.get(event.request_id) is event and (
            deadline is None or time.monotonic() < deadline
        ):
            return False
        with self.lock:
            self.forget_context(event.request_id, ctx)
            self.proto.drop_request(event.request_id, request=event)
        self.release_escrow(ctx)
        return True

    def run_handler(
        self, fn: Handler, wants_ctx: bool, event: RequestReceived, ctx: CallContext | None
    ) -> None:
        request_id = event.request_id
        if self.dropped(event, ctx):
            return
        try:
            result = fn(event.params, ctx) if wants_ctx else fn(event.params)
        except Exception as exc:
            code, message, data = failure_reply(event.method, exc)
            with self.lock:
                self.forget_context(request_id, ctx)
                self.proto.send_error(request_id, code, message, data, request=event)
            self.release_escrow(ctx)
            return
        except BaseException as exc:  # KeyboardInterrupt, SystemExit...
            self.fail_fatally(event, ctx, exc)
            self.release_escrow(ctx)
            raise
        with self.lock:
            self.forget_context(request_id, ctx)
            # (only its own request: the client may have ended it and reused its id)
            body = self.proto.send_response(request_id, result, request=event)
            if ctx is not None and ctx.escrow_id is not None:
                # before the lock is let go: any flush may send the response from then
                # on, and the client's ACK must find its escrow answered (body None:
                # cancelled, past its deadline, or its result not encodable)
                end_request(self.fees, request_id, ctx.escrow_id, body)
        if self.server._pool is None:  # this stream's thread
            self.served += 1
        else:  # a worker's: several may finish at once, and after the stream ended
            with self.server._stats_lock:
                self.server._served += 1

    def answer_plain(self, fn: Handler, event: RequestReceived) -> None:
        """Run a handler that takes no context inline and queue its answer (the stream's
        thread only, no pool, no fees)."""
        if self.dropped(event, None):
            return
        try:
            result = fn(event.params)
        except Exception as exc:
            code, message, data = failure_reply(event.method, exc)
            self.proto.send_error(event.request_id, code, message, data, request=event)
            return
        except BaseException as exc:  # KeyboardInterrupt, SystemExit...
            self.fail_fatally(event, None, exc)
            raise
        self.proto.send_response(event.request_id, result, request=event)
        self.served += 1

    def run_in_pool(self, job: _Job) -> None:
        with self.lock:
            event, ctx = job.event, job.ctx
            if event is None:  # it ended while queued: its slot is free now (_Job)
                self.proto.held_incoming -= 1
            elif self.queued.get(event.request_id) is job:
                del self.queued[event.request_id]
        if event is None:
            return
        if self.server._closed.is_set():
            # queued when the server closed: refused, as requests read after it are
            with self.lock:
                self.forget_context(event.request_id, ctx)
                self.proto.send_error(
                    event.request_id, E.SERVER_BUSY, "shutting down", request=event
                )
            self.release_escrow(ctx)
        else:
            try:
                self.run_handler(job.fn, job.wants_ctx, event, ctx)
            except BaseException:
                # answered (run_handler); a worker has no caller to raise it to: a pool's
                # future would keep it unseen
                logger.exception("handler %s raised", event.method)
        try:
            self.flush()
        except (DTPError, OSError) as exc:
            logger.debug("RPC reply not sent: %s", exc)
            self.failed = True
        self.progress.set()
