"""The blocking RPC server (:class:`RpcServer`, a thread per stream) and the read loops of
a stream it serves; what the asyncio server shares with it is in
:mod:`dtp.messaging.rpc.server_base`. The served stream is built on parts, each over the
one before: ``blocking_server_state`` (what it knows), ``blocking_server_replies`` (its
sending and error answers), ``blocking_server_dispatch`` (events to handlers, the pool)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from dtp.errors import DTPError, LocalProtocolError
from dtp.ledger.objects import normalize_id
from dtp.messaging.framing import DEFAULT_MAX_MESSAGE
from dtp.messaging.method_rules import MethodRules
from dtp.messaging.protocol import RequestReceived, _check_count
from dtp.messaging.rpc.blocking_server_dispatch import StreamDispatch
from dtp.messaging.rpc.fees import RequestPayments, ResponseFeePolicy
from dtp.messaging.rpc.server_base import ServerBase, tell_client_ended
from dtp.messaging.rpc.streams import (
    DEFAULT,
    QUICK_RECV_SIZE,
    RECV_SIZE,
    BlockingStream,
    check_blocking_stream,
    next_read_size,
    send_answer,
)

if TYPE_CHECKING:
    from dtp.hostid.paid.request_billing import ConnectionBill
    from dtp.messaging.rpc.billed import BilledConnections

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
        # (before the pool is made: a bool or a float made a pool of that many threads,
        # a negative count failed inside ThreadPoolExecutor)
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
        from dtp.messaging.rpc.billed import BilledConnections

        with self._stats_lock:
            if self._billed is None:
                self._billed = BilledConnections(self)

    def serve_billed(self, sock: Any, bill: ConnectionBill) -> None:
        """Serve a connection a paid server admitted, its requests checked against
        ``bill`` (after :meth:`bill_per_request`)."""
        if self._billed is None:
            raise RuntimeError("bill_per_request() first")
        self._billed.serve(sock, bill)

    def serve(self, server: Any) -> None:
        """Accept connections from a :class:`dtp.socket.DTPServer` until it closes,
        serving each with :meth:`serve_connection` in its own thread."""
        while not self._closed.is_set():
            try:
                sock, _ = server.accept(timeout=0.5)
            except TimeoutError:
                continue
            except LocalProtocolError:
                return
            threading.Thread(target=self.serve_connection, args=(sock,), daemon=True).start()

    def close(self) -> None:
        """Stop :meth:`serve` (no new connections, within half a second; nor new streams
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


class _ServerStream(StreamDispatch):
    """One stream being served: the reading loop runs in the stream's thread; with a
    worker pool, handlers answer from the pool's threads (``lock`` guards the protocol
    and the sending role, :meth:`flush`)."""

    server: RpcServer  # (the parts below type it as a StreamServer)

    def run(self) -> None:
        server = self.server
        with server._stats_lock:
            server._live.add(self)
        try:
            if server._pool is None and not self.fees.paid:
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
        (no worker pool, no fees): no other thread touches the protocol (no locks),
        and nothing is pending between reads, so no deadline comes due while we wait
        -- a read waits only for the next look for new streams. A read that is one
        request for a plain handler is answered straight away; anything else takes the
        protocol's general path and the handlers run in turn."""
        stream, proto = self.stream, self.proto
        methods = self.server.methods
        take_request, response_frame = proto.take_request, proto.response_frame
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
        size = QUICK_RECV_SIZE  # (see next_read_size)
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
            size = next_read_size(data, message is not None)
            if message is not None:
                entry = methods.get(message[2])
                if entry is not None and not entry[1]:
                    # a plain handler: answered at once
                    try:
                        reply = response_frame(message[1], entry[0](message[3]))
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
                # as in RpcClient._wait: a timeout a little shorter, or at most a
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
