"""The blocking RPC server (:class:`RpcServer`, a thread per stream) and a stream it
serves (``_ServerStream``), whole (their parts: docs/architecture.md, "apps: rpc"); what
the asyncio server shares with it is in :mod:`dtp.messaging.rpc._server_base`."""

from __future__ import annotations

import contextlib
import logging
import socket as _socket
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from dtp.errors import DTPError, LocalProtocolError
from dtp.ledger._objects import normalize_id
from dtp.messaging import errors as E
from dtp.messaging._framing import DEFAULT_MAX_MESSAGE
from dtp.messaging._protocol import (
    QUICK_RECV_SIZE,
    RECV_SIZE,
    AckReceived,
    NotificationReceived,
    ProtocolViolation,
    RequestCancelled,
    RequestReceived,
    RpcEvent,
    RpcProtocol,
    _check_count,
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
    refusal_reply,
    refuse_missing,
    tell_client_ended,
)
from dtp.messaging.rpc._streams import (
    DEFAULT,
    UNSENT_CAP,
    BlockingStream,
    check_blocking_stream,
    send_answer,
    send_nowait,
)
from dtp.socket import DTPSocket

if TYPE_CHECKING:
    from dtp.hostid.paid._request_billing import ConnectionBill
    from dtp.messaging.rpc._billed import BilledConnections


class _Job:
    """A request handed to the worker pool (RpcServer.run_in_pool), while it waits in
    the pool's queue. A request that ends there (cancelled, or its deadline passed)
    lets go of its event -- params and all -- at once, and its job counts against
    ``max_pending`` (RpcProtocol.held_incoming) until a worker takes it off the queue:
    its slot was free again at once, so a client sending requests and cancelling them
    filled the queue without bound while the workers were busy (nothing answered, so
    nothing held up the reading either)."""

    __slots__ = ("ctx", "event", "fn", "wants_ctx")

    def __init__(
        self, fn: Handler, wants_ctx: bool, event: RequestReceived, ctx: CallContext | None
    ) -> None:
        self.fn = fn
        self.wants_ctx = wants_ctx
        self.event: RequestReceived | None = event
        self.ctx = ctx


# the logger is named after the public module, which applications configure

logger = logging.getLogger(__name__)

#: A connection's first stream looks for streams the client opened at most this often
#: (seconds) while requests flow; when idle, at growing intervals up to ACCEPT_POLL_MAX.
ACCEPT_POLL_MIN = 0.005

ACCEPT_POLL_MAX = 0.1


class RpcServer(ServerBase):
    """Blocking RPC server: register handlers, then serve streams.

    ``workers``: 0 (the default) runs handlers inline in the stream's thread (lowest
    latency, one request at a time per stream, nothing read while a handler runs): by
    design, a handler that blocks holds up every later request on its stream -- their
    callers' calls end in RpcTimeout at their deadlines, while the stream stays
    usable -- and, on a connection's first stream (:meth:`serve_connection`), the
    streams the client opens meanwhile, until it returns (streams opened before are
    served by their own threads). Serve handlers that may block or take long with N > 0:
    they run in a pool of N threads (shared by every stream), so requests on one stream
    overlap, at most N at once, and answers go out in completion order; requests beyond
    wait in the pool's queue (up to ``max_pending`` per stream, then SERVER_BUSY).
    Notification handlers run in the stream's thread, in order: a slow one delays the
    requests read after it (hand long work to a thread).
    ``payments`` / ``response_fees``: see the module docs. ``rules``: per-method access
    and prices (:class:`~dtp.messaging.method_rules.MethodRules`, docs/messaging.md
    §2.5), checked before a request's fee is taken. ``max_message_size`` and
    ``max_pending`` (ints >= 1), ``workers`` (>= 0) and those are checked here
    (TypeError / ValueError), before anything starts, not when a client connects.

    Handlers are ``fn(params)`` or, registered with ``context=True``,
    ``fn(params, ctx)``; they return the result or raise a
    :class:`~dtp.messaging.errors.RemoteError` subclass to answer with its code (a
    TypeError answers ``INVALID_PARAMS``, with Python's message only when the handler's
    signature refused the params; any other exception answers ``INTERNAL_ERROR`` with
    its type name, never its message). A result that cannot be encoded answers
    ``INTERNAL_ERROR`` too, whatever encoding it raised.

    A BaseException that is not an Exception (KeyboardInterrupt, SystemExit...) is
    answered the same way, then goes on up as Python's own threads and pools have it:
    inline (``workers=0``) it ends :meth:`serve_stream` (so Ctrl-C stops a server whose
    handler it interrupts; a stream :meth:`serve_connection` serves is closed); in a
    worker it is logged and the worker goes on, as a pool keeps it from everyone.
    """

    def __init__(
        self,
        *,
        workers: int = 0,
        max_message_size: int = DEFAULT_MAX_MESSAGE,
        max_pending: int = 1024,
        payments: RequestPayments | Callable[[str | None], RequestPayments | None] | None = None,
        response_fees: ResponseFeePolicy | None = None,
        rules: MethodRules | None = None,
    ) -> None:
        # checked before the pool is made: a count is an int >= 0, not a bool or a
        # float (tests/messaging/test_arguments.py)
        _check_count("workers", workers, 0)
        super().__init__(max_message_size, max_pending, payments, response_fees, rules)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="rpc") if workers else None
        self._closed = threading.Event()
        # the counters: a stream being served counts in its own attributes, written by
        # its thread alone (no lock on the inline server's path), and adds them here
        # when it ends; handlers in the pool count here, under the lock
        self._stats_lock = threading.Lock()
        self._live: set[_ServerStream] = set()
        self._served = 0
        self._violations = 0
        self._billed: BilledConnections | None = None

    @property
    def served(self) -> int:
        """Requests whose handler returned, on every stream (those being served too)."""
        with self._stats_lock:
            return self._served + sum(s.served for s in self._live)

    @property
    def violations(self) -> int:
        """Frames from clients that broke the format (skipped), on every stream."""
        with self._stats_lock:
            return self._violations + sum(s.violations for s in self._live)

    def serve_connection(self, sock: Any) -> None:
        """Answer requests on a connection's first stream ``sock`` and on every stream
        the client opens on it, each in a thread of its own, until the first stream
        ends; then the connection is closed (it lives as long as its first stream).

        The first stream's thread also takes the new streams, between requests and at
        least every :data:`ACCEPT_POLL_MAX` seconds when idle: a second thread blocked
        on the connection would take the reads in turn with it, a thread hand-off per
        request. So with ``workers=0`` a handler running on the first stream holds up
        the streams the client opens meanwhile until it returns (a pool's does not)."""
        peer = getattr(sock, "peer_address", None)

        def run_stream(stream: Any) -> None:
            with stream:
                try:
                    self.serve_stream(stream, peer_address=peer)
                except DTPError as exc:
                    logger.debug("RPC stream ended: %s", exc)

        def start(stream: Any) -> None:
            threading.Thread(target=run_stream, args=(stream,), daemon=True).start()

        with sock:
            try:
                _ServerStream(self, sock, peer, on_stream=start).run()
            except DTPError as exc:
                logger.debug("RPC connection ended: %s", exc)

    def bill_per_request(self) -> None:
        """Be the handler of a paid server billing per request (``dtp.socket.serve(...,
        billing="requests")``): its checks become this server's payments source
        (ValueError when it has ``payments`` of its own). Called by the paid server."""
        from dtp.messaging.rpc._billed import BilledConnections

        with self._stats_lock:
            if self._billed is None:
                self._billed = BilledConnections(self)

    def serve_billed(self, sock: Any, bill: ConnectionBill) -> None:
        """Serve a connection a paid server admitted, its requests checked against
        ``bill`` (after :meth:`bill_per_request`)."""
        if self._billed is None:
            raise RuntimeError("bill_per_request() first")
        self._billed.serve(sock, bill)

    def serve_stream(self, stream: BlockingStream, *, peer_address: str | None = None) -> None:
        """Answer requests on ``stream`` until the peer closes it (or it fails).
        ``peer_address``: the client's Sui address handlers see (CallContext), by
        default the stream's own; InvalidObjectId when it is not an address."""
        check_blocking_stream(stream)
        if peer_address is None:
            peer_address = getattr(stream, "peer_address", None)
        else:
            # (it reached handlers as given: an int, or an address in another form
            # than the one the handshake gives)
            peer_address = normalize_id(peer_address, "peer address")
        _ServerStream(self, stream, peer_address).run()

    def serve_forever(self, server: Any) -> None:
        """Accept connections from a :class:`dtp.socket.DTPServer` until it closes (or
        :meth:`close`), serving each with :meth:`serve_connection` in its own thread."""
        while not self._closed.is_set():
            try:
                sock, _ = server.accept(timeout=0.5)
            except TimeoutError:
                continue
            except LocalProtocolError:
                return
            threading.Thread(target=self.serve_connection, args=(sock,), daemon=True).start()

    def serve(self, server: Any) -> None:
        """Deprecated alias of :meth:`serve_forever` (removed in 0.3.0): the asyncio
        server's ``serve`` served one stream, where this one accepts connections."""
        warnings.warn(
            "RpcServer.serve(server) is deprecated (removed in 0.3.0): use serve_forever",
            DeprecationWarning,
            stacklevel=2,
        )
        self.serve_forever(server)

    def close(self) -> None:
        """Stop :meth:`serve_forever` (no new connections, within half a second; nor new streams
        on the connections served) and the worker pool. It returns at once: it waits
        for no handler, and a handler running goes on (its answer is still sent).
        Connections being served stay open, as with :meth:`asyncio.Server.close`: inline
        handlers go on answering, and with a pool their requests are refused with
        ``SERVER_BUSY``, until their clients close them (or their DTPSockets are
        closed). So it fails no call in flight: a client waiting for a handler that
        blocks waits for it, or for its call's deadline (RpcTimeout); closing the
        connection's DTPSocket ends its calls at once (RpcConnectionLost)."""
        self._closed.set()
        if self._pool is not None:
            # requests queued for the pool are answered SERVER_BUSY by its workers
            # (run_in_pool): cancelled futures left their clients waiting for good
            self._pool.shutdown(wait=False)


class _ServerStream:
    """One stream being served: the reading loop runs in the stream's thread; with a
    worker pool, handlers answer from the pool's threads (``lock`` guards the protocol
    and the sending role, :meth:`flush`)."""

    def __init__(
        self,
        server: RpcServer,
        stream: BlockingStream,
        peer: str | None,
        *,
        on_stream: Callable[[Any], None] | None = None,
    ) -> None:
        self.server = server
        self.stream = stream
        self.peer = peer
        #: takes the streams the client opens (the connection's first stream only)
        self.on_stream = on_stream
        self.proto = RpcProtocol(
            max_message_size=server.max_message_size, max_incoming=server.max_pending
        )
        # (kept: looked up per request, in dropped(), without a call for it)
        self.unanswered = self.proto.unanswered
        self.lock = threading.Lock()
        #: (``lock``) a thread is sending what the protocol queued: the others leave it
        #: what they queue (it looks again before it stops)
        self.sending = False
        #: the stream's send takes MSG_DONTWAIT (a DTPSocket, a socket): answers from
        #: the pool never wait for the client
        self.dontwait = isinstance(stream, _socket.socket | DTPSocket)
        self.contexts: dict[int, CallContext] = {}
        #: (``lock``) request id -> its job while it waits in the pool's queue
        self.queued: dict[int, _Job] = {}
        self.connection_id: str | None = getattr(stream, "peer_connection_id", None)
        #: the stream's fees (engine.ServerCallFees), its connection's check resolved now
        self.fees = ServerCallFees(*stream_payments(server._payments, stream), server.response_fees)
        #: set when a pool worker or the writer thread is done with an answer (for
        #: finish_answers); ``failed``: sending failed, the stream is done for
        self.progress = threading.Event()
        self.failed = False
        #: requests answered by the stream's own thread, and frames that broke the
        #: format (RpcServer.served / .violations: this thread alone writes them)
        self.served = 0
        self.violations = 0

    server: RpcServer  # (the parts below type it as a RpcServer)

    def run(self) -> None:
        server = self.server
        with server._stats_lock:
            server._live.add(self)
        try:
            # (the inline loop answers a plain handler at once: not where method rules
            # or a method's pricing must admit each request first)
            if (
                server._pool is None
                and not self.fees.paid
                and server.rules is None
                and not server.priced
            ):
                self.run_inline()
            else:
                self.run_general()
        except (DTPError, OSError) as exc:
            logger.debug("RPC stream ended: %s", exc)
        finally:
            self.server._payments.release(self.connection_id)
            with server._stats_lock:
                server._live.discard(self)
                server._served += self.served
                server._violations += self.violations
            for ctx in list(self.contexts.values()):
                ctx.cancelled.set()

    def run_inline(self) -> None:
        """The read loop when every request is answered in this thread as it is read
        (no worker pool, no fees, no method rules or pricing): no other thread touches
        the protocol (no locks), and nothing is pending between reads, so no deadline
        comes due while we wait -- a read waits only for the next look for new streams.
        A read that is one request for a plain handler is answered straight away;
        anything else takes the protocol's general path and the handlers run in turn."""
        stream, proto = self.stream, self.proto
        methods = self.server.methods
        take_request, response_parts = proto.take_request, proto.response_parts
        closed = self.server._closed
        # a DTPSocket sends an answer and reads on in one go (None: do it ourselves)
        send_recv: Callable[[bytes, int], bytes | None] = getattr(
            stream, "send_recv", lambda reply, size: None
        )
        monotonic = time.monotonic
        accepting = self.on_stream is not None
        gap = ACCEPT_POLL_MIN
        next_poll = monotonic()  # streams opened before the first request
        if not accepting:
            stream.settimeout(None)
        data: bytes | None = None
        size = QUICK_RECV_SIZE  # (_protocol's read sizes)
        while True:
            if data is None:
                if accepting:
                    now = monotonic()
                    if now >= next_poll:
                        accepting = self.accept_streams()
                        next_poll = now + gap
                        gap = min(gap * 2, ACCEPT_POLL_MAX)  # back to the minimum on traffic
                        # reads wait until the next look at most (while requests keep
                        # coming, it happens between two of them)
                        stream.settimeout(max(1e-3, next_poll - now) if accepting else None)
                try:
                    data = stream.recv(size)
                except TimeoutError:
                    continue
            if not data:
                return
            gap = ACCEPT_POLL_MIN
            message = take_request(data)
            # (the read-size rule of _protocol's QUICK_RECV_SIZE, inline)
            size = (
                QUICK_RECV_SIZE
                if message is not None and len(data) < QUICK_RECV_SIZE
                else RECV_SIZE
            )
            if message is not None:
                entry = methods.get(message[2])
                if entry is not None and not entry[1]:
                    # a plain handler: answered at once
                    try:
                        head, body = response_parts(message[1], entry[0](message[3]))
                        reply = head + body  # (send_recv takes one buffer)
                        self.served += 1
                    except Exception as exc:
                        reply = self.answer_error(message, exc)
                    except BaseException as exc:  # KeyboardInterrupt, SystemExit...
                        # answered as any failure, then it ends the serving (class doc)
                        send_answer(stream, self.answer_error(message, exc), closed)
                        raise
                    data = None
                    if not accepting or monotonic() < next_poll:  # no look for streams due
                        try:
                            data = send_recv(reply, size)
                        except TimeoutError:  # the read's: look for new streams, read again
                            continue
                    if data is None:
                        send_answer(stream, reply, closed)
                    continue
                proto.admit_request(message, monotonic())
            else:
                proto.receive_data(data, monotonic())
            data = None
            for event in proto.events():
                if type(event) is RequestReceived:
                    entry = methods.get(event.method)
                    if entry is not None and not entry[1]:
                        self.answer_plain(entry[0], event)
                        continue
                self.handle(event)  # answers requests, contexts and all, inline
            proto.get_timer()  # drops the timers of the requests just answered
            out = proto.data_to_send()
            if out:
                send_answer(stream, out, closed)

    def run_general(self) -> None:
        """The read loop with a worker pool or fees: handlers answer from other threads
        (``lock`` guards the protocol), deadlines are kept by the protocol's timers."""
        stream, proto, lock = self.stream, self.proto, self.lock
        monotonic = time.monotonic
        current: float | object | None = DEFAULT
        accepting = self.on_stream is not None
        gap = ACCEPT_POLL_MIN
        next_poll = monotonic()  # streams opened before the first request
        while True:
            now = monotonic()
            if accepting and now >= next_poll:
                accepting = self.accept_streams()
                current = DEFAULT  # accept_streams changed the stream's timeout
                next_poll = now + gap
                gap = min(gap * 2, ACCEPT_POLL_MAX)  # back to the minimum on traffic
            with lock:
                timer = proto.get_timer()
            until = timer
            if accepting and (until is None or next_poll < until):
                until = next_poll
            wait = None if until is None else max(1e-3, until - now)
            if wait != current and not (
                # as in RpcClient._read_loop: a timeout a little shorter, or at most a
                # millisecond longer, than the one wanted does as well
                wait is not None
                and type(current) is float
                and wait - 0.05 <= current <= wait + 0.001
            ):
                stream.settimeout(wait)
                current = wait
            if self.backed_up():
                # the client does not take its answers: read no more requests until it
                # does (it feels it as flow control), rather than queue answers for good
                self.progress.wait(0.1 if wait is None else min(wait, 0.1))
                data = None
            else:
                try:
                    data = stream.recv(RECV_SIZE)
                except TimeoutError:
                    data = None
            if self.failed:
                return  # answers cannot be sent (_send_rest, run_in_pool): none are taken
            if data == b"":
                # the client ended its side: what it asked is still answered, and
                # handlers watching ctx.cancelled are told at once
                tell_client_ended(self.contexts.values())
                self.finish_answers()
                return
            with lock:
                now = monotonic()
                # deadlines passed first (only older requests' can be due): they count
                # against max_pending until then
                if timer is not None and timer <= now:
                    proto.handle_timer(now)
                if data:
                    gap = ACCEPT_POLL_MIN
                    proto.receive_data(data, now)
                events = proto.events()
            for event in events:
                self.handle(event)
            self.flush()

    def finish_answers(self) -> None:
        """After the client's end of the stream: wait, keeping the requests' deadlines,
        until every request taken is answered and the answers are sent -- or the stream
        fails (the client closed for good) or the server closes."""
        proto, lock, closed = self.proto, self.lock, self.server._closed
        while not closed.is_set() and not self.failed:
            with lock:
                now = time.monotonic()
                timer = proto.get_timer()
                if timer is not None and timer <= now:
                    proto.handle_timer(now)  # dropped: the client stopped waiting
                    timer = proto.get_timer()
                events = proto.events()
                if not (proto.pending_incoming or self.sending or proto.output or events):
                    return
                self.progress.clear()
            for event in events:
                self.handle(event)
            self.flush()
            wait = 0.1 if timer is None else min(max(timer - now, 1e-3), 0.1)
            self.progress.wait(wait)

    def accept_streams(self) -> bool:
        """Pass the streams the client has opened to ``on_stream``, without waiting;
        False once the connection gives no more."""
        assert self.on_stream is not None
        sock: Any = self.stream
        sock.settimeout(0)
        while not self.server._closed.is_set():
            try:
                stream = sock.accept_stream()
            except BlockingIOError:
                return True
            except (DTPError, OSError):
                return False  # the connection ended
            self.on_stream(stream)
        return False

    # -- replies: answers sent without waiting, the writer thread ------------------------------

    def flush(self) -> None:
        """Send what the protocol queued without waiting for the client: what it does
        not take now is left to a writer thread of the stream's, which waits for it.
        So a client that does not read its answers holds up neither a pool worker
        (nor, through the pool, other connections) nor the stream's reading."""
        with self.lock:
            if self.sending:
                return
            data = self.proto.data_to_send()
            if not data or self.failed:  # (failed: it cannot be sent, and is let go)
                return
            self.sending = True
        try:
            while True:
                rest = self._send_now(data)
                if rest:
                    threading.Thread(
                        target=self._send_rest, args=(rest,), name="dtp-rpc-writer", daemon=True
                    ).start()
                    return  # the writer is the sender now
                with self.lock:
                    data = self.proto.data_to_send()
                    if not data:
                        self.sending = False
                        return
        except BaseException:
            with self.lock:
                self.sending = False
            raise

    def _send_now(self, data: bytes) -> bytes:
        """Send what the stream takes of ``data`` now; returns the rest."""
        if not self.dontwait:
            send_answer(self.stream, data, self.server._closed)
            return b""
        return send_nowait(self.stream, data)

    def _send_rest(self, data: bytes) -> None:
        """The writer thread: send ``data`` however long the client takes (until the
        server closes or the stream fails), then what was queued meanwhile."""
        try:
            while True:
                send_answer(self.stream, data, self.server._closed)
                self.progress.set()  # (a read loop held up by backed_up() goes on)
                with self.lock:
                    data = self.proto.data_to_send()
                    if not data:
                        self.sending = False
                        return
        except (DTPError, OSError) as exc:
            # the stream is done for: its reading ends too (run_general), and what was
            # queued meanwhile, or is later, is let go (flush): left with the sending
            # role, the read loop would go on taking requests and queuing their answers
            # for good
            logger.debug("RPC answers not sent: %s", exc)
            with self.lock:
                self.failed = True
                self.sending = False
                self.proto.clear_output()
        except BaseException:
            with self.lock:
                self.sending = False
            raise
        finally:
            self.progress.set()

    def backed_up(self) -> bool:
        """Whether the writer thread waits for the client with more than the cap of
        answers queued behind it (:data:`UNSENT_CAP`, or two messages of the cap)."""
        if not self.sending:  # (the usual case, without the lock: a stale answer is
            return False  # corrected at the next read)
        with self.lock:
            if not self.sending or self.failed:
                return False
            self.progress.clear()
            queued = self.proto.queued_bytes
        return queued > max(UNSENT_CAP, 2 * self.server.max_message_size)

    def forget_context(self, request_id: int, ctx: CallContext | None) -> None:
        """(``lock`` held) Forget ``ctx``, the context of a request that ended -- not a
        later request's of the same id (the client may reuse the id of a request it
        cancelled, or whose deadline passed, while that one's handler still runs)."""
        if ctx is not None and self.contexts.get(request_id) is ctx:
            del self.contexts[request_id]

    def release_escrow(self, ctx: CallContext | None) -> None:
        """The request of ``ctx`` ended with no response: the ResponseFeePolicy forgets
        its prepaid escrow (it kept it to stop a second request using it meanwhile)."""
        if ctx is not None and ctx.escrow_id is not None:
            end_request(self.fees, ctx.request_id, ctx.escrow_id, None)

    def answer_error(self, request: list[Any], exc: BaseException) -> bytes:
        """The frame answering a request from RpcProtocol.take_request whose plain
        handler raised ``exc`` (the stream's thread only, no pool, no fees)."""
        code, message, data = failure_reply(request[2], exc)
        return self.proto.error_frame(request[1], code, message, data)

    def fail_fatally(
        self, event: RequestReceived, ctx: CallContext | None, exc: BaseException
    ) -> None:
        """A handler raised ``exc``, a BaseException that is not an Exception
        (KeyboardInterrupt, SystemExit...): answer its request as any failure and send
        what is queued now, before ``exc`` goes on up (RpcServer's class doc)."""
        code, message, data = error_reply(exc)
        with self.lock:
            self.forget_context(event.request_id, ctx)
            self.proto.send_error(event.request_id, code, message, data, request=event)
        with contextlib.suppress(DTPError, OSError):
            self.flush()

    # -- dispatch: events to handlers, inline or through the pool ------------------------------

    def handle(self, event: RpcEvent) -> None:
        server = self.server
        if isinstance(event, RequestReceived):
            entry = server.methods.get(event.method)
            fees = self.fees
            if entry is None:
                with self.lock:
                    refuse_missing(self.proto, event, fees)
                return
            fn, wants_ctx = entry
            prices = ONE_REQUEST
            if server.rules is not None or server.priced:
                # the method rules first: a refused request takes no fee
                # (docs/messaging.md §2.5)
                try:
                    prices = server.request_cost(event.method, event.params, self.peer)
                except Exception as exc:
                    refusal = refusal_reply(fees, event.method, exc)
                    with self.lock:
                        self.proto.send_error(event.request_id, *refusal, request=event)
                    return
            ctx = None
            if fees.needs_context(wants_ctx):
                ctx = CallContext(
                    event.request_id, event.method, event.deadline, event.meta, self.peer
                )
                ctx.cost = prices
            if fees.paid:
                try:
                    for step in fees.admission(event.meta, self.peer, prices):
                        if type(step) is PayRequest:
                            step.payments.admit(step.meta, step.requests)
                            ctx = note_counted(ctx, step, event, self.peer)
                        else:
                            assert ctx is not None and type(step) is TakeEscrow
                            ctx.escrow_id = step.policy.admit(step.meta, step.peer)
                except Exception as exc:
                    refusal = refusal_reply(fees, event.method, exc)
                    with self.lock:
                        self.proto.send_error(event.request_id, *refusal, request=event)
                    self.release_escrow(ctx)  # (taken before the receipt refused it)
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
            meta = answer_meta(self.fees, ctx)
            body = self.proto.send_response(request_id, result, meta=meta, request=event)
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
