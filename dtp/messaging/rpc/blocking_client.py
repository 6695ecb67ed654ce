"""The blocking RPC client (:class:`RpcClient`) and its calls (:class:`RpcCall`): the
socket work is done in the calling threads (leader/follower). The client's face is here
with its calls and the quiet call's one send and read; its parts, each built on the one
before: ``blocking_client_state`` (what it knows, and the :class:`RpcCall` future),
``blocking_client_events`` (what settles
calls), ``blocking_client_writes``, ``blocking_client_reads`` (the leader/follower
reading and waits)."""

from __future__ import annotations

import contextlib
import socket as _socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from dtp.errors import DTPError
from dtp.messaging import errors as E
from dtp.messaging.framing import DEFAULT_MAX_MESSAGE
from dtp.messaging.protocol import ProtocolViolation, RpcProtocol, _check_count
from dtp.messaging.rpc.blocking_client_reads import _READ_SLICE, ClientReads
from dtp.messaging.rpc.blocking_client_state import RpcCall as RpcCall
from dtp.messaging.rpc.blocking_client_state import _deadline
from dtp.messaging.rpc.client_base import check_client_options
from dtp.messaging.rpc.engine import ClientFees
from dtp.messaging.rpc.fees import ResponsePrepay, check_one_meter
from dtp.messaging.rpc.streams import (
    DEFAULT,
    QUICK_RECV_SIZE,
    BlockingStream,
    check_blocking_stream,
    meta_copy,
    next_read_size,
    send_failed,
)
from dtp.messaging.rpc.streams import RECV_SIZE as RECV_SIZE
from dtp.payments.receipts import Meter
from dtp.socket import DTPSocket


class RpcClient(ClientReads):
    """Blocking RPC client over one stream (thread-safe; many calls may be in flight).

    ``timeout``: default seconds per call (None: wait forever). ``meter``: attach a
    receipt to every request (per-request fees). ``prepay``: prepay each call's response
    fee into a ResponseEscrow. The client does not own the stream: :meth:`close` fails the
    calls in flight and leaves the stream open unless ``close_stream`` is set.
    """

    def __init__(
        self,
        stream: BlockingStream,
        *,
        timeout: float | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE,
        max_in_flight: int = 4096,
        meter: Meter | None = None,
        prepay: ResponsePrepay | None = None,
        on_notification: Callable[[str, Any], None] | None = None,
        close_stream: bool = False,
    ) -> None:
        check_client_options(timeout, on_notification)
        check_blocking_stream(stream)
        check_one_meter(meter, stream)
        self._stream = stream
        self.timeout = timeout
        self._fees = ClientFees(meter, prepay)
        self.on_notification = on_notification
        self._close_stream = close_stream
        self._proto = RpcProtocol(max_message_size=max_message_size, max_outgoing=max_in_flight)
        # (kept: whether output waits is asked at each call, without a call for it)
        self._output = self._proto.output
        self._calls: dict[int, RpcCall] = {}
        self._lock = threading.Lock()  # protocol state and _calls
        self._cond = threading.Condition(self._lock)
        self._wlock = threading.Lock()  # order of bytes on the stream
        self._reading = False  # a thread is reading for everybody
        self._followers = 0  # threads waiting in _cond for the reader
        self._closed: BaseException | None = None
        self._current_timeout: float | object | None = DEFAULT
        self._read_size = QUICK_RECV_SIZE  # the quiet call's (see next_read_size)
        # (_lock, reader) bytes read but not yet taken: a reader whose deadline passed
        # while it took a large read left them to the next reader (_take)
        self._backlog = b""
        # the stream's send takes MSG_DONTWAIT (a DTPSocket, a socket): the reader's
        # flush of our control frames never waits for the peer (_flush_soon)
        self._dontwait = isinstance(stream, _socket.socket | DTPSocket)
        # a DTPSocket sends a request and reads its answer in one go (DTPSocket.send_recv)
        self._send_recv: Callable[..., bytes | None] | None = getattr(stream, "send_recv", None)
        # notifications read, for on_notification: it runs once the reader has let go of
        # _lock (it may call this client), in order (_note_lock: one thread runs them)
        self._notes: deque[tuple[str, Any]] = deque()
        self._note_lock = threading.Lock()
        #: Frames from the peer that broke the format (skipped).
        self.violations: list[ProtocolViolation] = []

    def call(
        self,
        method: str,
        params: Any = None,
        *,
        timeout: float | None = DEFAULT,
        meta: Mapping[str, Any] | None = None,
        requests: int = 1,
    ) -> Any:
        """Call ``method`` and wait for its result (raises the typed error otherwise).
        ``requests``: with a ``meter``, how many requests of the SLA the call is
        metered as -- its method's price over the SLA's ``price_per_request``
        (docs/messaging.md §2.5; 0: a free method)."""
        if timeout is DEFAULT:
            timeout = self.timeout
        fees = self._fees  # (the fast path: no property call)
        if meta is None and fees.meter is None and fees.prepay is None:
            outcome = self._call_quiet(method, params, timeout)
            if outcome is not None:
                return outcome[0]
        return self.start(method, params, timeout=timeout, meta=meta, requests=requests).result()

    def start(
        self,
        method: str,
        params: Any = None,
        *,
        timeout: float | None = DEFAULT,
        meta: Mapping[str, Any] | None = None,
        requests: int = 1,
    ) -> RpcCall:
        """Send a request and return its :class:`RpcCall` at once (pipelining);
        ``requests`` as :meth:`call`'s."""
        _check_count("requests", requests, 0)
        if timeout is DEFAULT:
            timeout = self.timeout
        extra = meta_copy(meta)
        paid = None
        fees = self._fees
        if fees.meter is not None or fees.prepay is not None:
            with self._lock:
                paid = fees.begin(extra, timeout, self._can_send(method, params, timeout), requests)
            if paid.deposit_timeout is not None:
                assert paid.prepay is not None
                paid.deposited(paid.prepay.deposit(paid.deposit_timeout))
        with self._wlock:
            # the fee steps and the framing in one _lock section, under _wlock as sent
            # (PaidCall.send): receipts reach the server in their nonce order, and
            # nothing in between can refuse a request the meter counted. (The meter
            # only signs: no I/O under the lock.)
            with self._lock:
                if paid is None:
                    if self._closed is not None:
                        raise self._closed_error()
                    request_id = self._proto.send_request(
                        method, params, now=time.monotonic(), timeout=timeout, meta=extra
                    )
                else:
                    request_id = paid.send(
                        int(time.time() * 1000),
                        self._can_send(method, params, timeout),
                        lambda meta: self._proto.send_request(
                            method, params, now=time.monotonic(), timeout=timeout, meta=meta
                        ),
                    )
                call = RpcCall(self, request_id)
                call.escrow_id = None if paid is None else paid.escrow_id
                self._calls[request_id] = call
                data = self._proto.data_to_send()
            self._send(data, _deadline(timeout))
        return call

    def notify(
        self, method: str, params: Any = None, *, meta: Mapping[str, Any] | None = None
    ) -> None:
        """Send a notification (no response)."""
        with self._wlock:
            with self._lock:
                if self._closed is not None:
                    raise self._closed_error()
                self._proto.send_notification(method, params, meta=meta)
                data = self._proto.data_to_send()
            self._send(data, _deadline(self.timeout))

    @property
    def in_flight(self) -> int:
        """Calls awaiting their answer (a call on a quiet stream, which has no
        :class:`RpcCall`, included)."""
        return 0 if self._closed is not None else self._proto.in_flight

    def close(self) -> None:
        """Fail the calls in flight with RpcConnectionLost (and close the stream if owned):
        every thread waiting for an answer returns (at once on a DTPSocket stream,
        whatever the peer's handler is doing; within about a second on another), a
        thread waiting for the peer to take its request at its write's next look (under
        a second: a write cannot be ended from outside), a thread running notification
        handlers once the one running ends (the notifications not yet run are dropped).
        Calls, starts and notifications after it raise RpcConnectionLost at once. It may
        be called again, from any thread, and from a notification handler. (The
        server's :meth:`RpcServer.close` ends no call: see there.)"""
        with self._lock:
            self._fail_all(E.RpcConnectionLost("the client was closed"))
            reading = self._reading
        if reading:
            self._interrupt_reader()
        if self._close_stream:
            close = getattr(self._stream, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()

    def __enter__(self) -> RpcClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _cancel(self, call: RpcCall) -> bool:
        with self._lock:
            if call.done:
                return False
            self._proto.cancel(call.request_id)
            self._calls.pop(call.request_id, None)
            call._finish(None, E.RpcCancelled(f"call {call.request_id} cancelled"))
            self._fees.unanswered(call.request_id)
            self._wake_followers()
            reading = self._reading
        if reading:
            self._interrupt_reader()
        self._flush_soon()
        return True

    def _call_quiet(self, method: str, params: Any, timeout: float | None) -> tuple[Any] | None:
        """:meth:`call` on a quiet stream -- no other call in flight, nobody reading,
        nothing queued -- in one send and (usually) one read: the request is framed and
        sent as is, and the read that follows is taken as its answer when it is exactly
        that (one frame, the RESPONSE), with no RpcCall, timer, event or dispatch. Any
        other outcome turns the request into an ordinary call, which the general path
        finishes. Returns ``(result,)``, or None when the stream is not quiet (nothing
        was done); raises as :meth:`call` does."""
        # (acquire / release rather than with blocks, and the read inline: this is the
        # whole of a sequential call's own cost)
        wlock, lock, proto = self._wlock, self._lock, self._proto
        if not wlock.acquire(False):
            return None
        lock.acquire()
        try:
            quiet = not (
                self._calls
                or self._reading
                or self._closed is not None
                or self._output
                or self._backlog  # (left by a reader whose deadline passed)
                or self._notes
            )
            if quiet:
                request_id, frame = proto.begin_request(method, params, time.monotonic(), timeout)
                # we read for everybody until the answer: calls other threads start
                # meanwhile wait for us (RpcClient._wait), as for any reader
                self._reading = True
        except BaseException:
            wlock.release()
            raise
        finally:
            lock.release()
        if not quiet:
            wlock.release()
            return None
        stream = self._stream
        data: bytes | None = None
        failed: BaseException | None = None
        sent = False
        try:
            # reads last a slice at most, so that close() ends the wait (the rest of a
            # longer one is the general path's)
            read_for = timeout if timeout is not None and timeout <= _READ_SLICE else _READ_SLICE
            if read_for != self._current_timeout:
                self._read_timeout(stream, read_for)
            if self._send_recv is not None:
                # the send and the read in one go: from here wlock is send_recv's to let
                # go of once the frame is out (None back: nothing was done, it is ours)
                sent = True
                data = self._send_recv(frame, self._read_size, release=wlock)
                sent = data is not None
            if not sent:
                try:
                    self._write(frame, _deadline(timeout))
                except TimeoutError as exc:  # the write's, not a read's
                    raise send_failed(exc) from exc
                finally:
                    sent = True
                    wlock.release()
                data = stream.recv(self._read_size)
        except TimeoutError:
            data = None
        except (DTPError, OSError) as exc:
            failed = exc
        except BaseException:
            if not sent:
                wlock.release()
            with lock:
                self._reading = False
                self._adopt(request_id)  # a later reader settles it
                self._wake_followers()
            raise
        if failed is not None and not sent:
            wlock.release()
        lock.acquire()
        try:
            self._reading = False
            if self._closed is not None:  # close() while we read: the call failed
                proto.forget_request(request_id)
                self._wake_followers()
                raise self._closed_error()
            if data:
                got = proto.take_response(request_id, data)
                self._read_size = next_read_size(data, got is not None)
                if got is not None:
                    if self._followers:
                        self._cond.notify_all()
                    return got
            call = self._adopt(request_id)
            timer = proto.get_timer()
            self._absorb(data, failed, timer, call, None)  # wakes the followers
            pending_out = bool(self._output)
        finally:
            lock.release()
        if pending_out:
            self._flush_soon()
        if self._notes:
            self._run_notes(timer)
        return (call.result(),)

    def _adopt(self, request_id: int) -> RpcCall:
        """Make a request from :meth:`_call_quiet` an ordinary call (lock held): what
        settles it reaches it through the protocol's events, or its timer."""
        call = RpcCall(self, request_id)
        self._calls[request_id] = call
        self._proto.track(request_id)
        return call
