"""The blocking RPC client (:class:`RpcClient`) and its calls (:class:`RpcCall`): the
socket work is done in the calling threads (leader/follower). The client is here whole
(its parts: docs/architecture.md, "apps: rpc")."""

from __future__ import annotations

import contextlib
import logging
import socket as _socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from dtp.errors import DTPError
from dtp.messaging import errors as E
from dtp.messaging._framing import DEFAULT_MAX_MESSAGE
from dtp.messaging._protocol import (
    QUICK_RECV_SIZE,
    RECV_SIZE,
    ErrorReceived,
    NotificationReceived,
    ProtocolViolation,
    RequestReceived,
    RequestTimedOut,
    ResponseReceived,
    RpcEvent,
    RpcProtocol,
    _check_count,
    _check_wait,
    meta_copy,
)
from dtp.messaging.rpc._client_base import ClientBase, check_client_options
from dtp.messaging.rpc._engine import ClientFees
from dtp.messaging.rpc._fees import ResponsePrepay, check_one_meter
from dtp.messaging.rpc._streams import (
    DEFAULT,
    TAKE_PIECE,
    UNSENT_CAP,
    BlockingStream,
    check_blocking_stream,
    send_failed,
    send_nowait,
)
from dtp.payments.receipts import Meter
from dtp.socket import DTPSocket


def _deadline(timeout: float | None) -> float | None:
    """The ``time.monotonic()`` value ``timeout`` seconds from now (None: none)."""
    return None if timeout is None else time.monotonic() + timeout


class RpcCall:
    """A call in flight on an :class:`~dtp.messaging.rpc.RpcClient` (a small future)."""

    __slots__ = ("_client", "_error", "_event", "_result", "done", "escrow_id", "request_id")

    def __init__(self, client: RpcClient, request_id: int) -> None:
        self._client = client
        self.request_id = request_id
        self.done = False
        self._result: Any = None
        self._error: BaseException | None = None
        self._event: threading.Event | None = None
        #: The ResponseEscrow this call prepaid, if any (the client's fee engine
        #: holds what becomes of it: ClientFees).
        self.escrow_id: str | None = None

    def _finish(self, result: Any, error: BaseException | None) -> None:
        self._result, self._error, self.done = result, error, True
        if self._event is not None:
            self._event.set()

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the answer: the result, or the call's typed error. When ``timeout``
        (seconds) passes first the call itself ends in :class:`RpcTimeout` (the peer is
        told, as at the call's own deadline): a later ``result()`` raises it too."""
        if timeout is not None:
            _check_wait(timeout)
        self._client._read_loop(self, None if timeout is None else time.monotonic() + timeout)
        if self._error is not None:
            raise self._error
        return self._result

    def cancel(self) -> bool:
        """Cancel the call (the peer is told); False if it already finished. A thread
        waiting in :meth:`result` sees it at once, also one reading the stream for
        everybody when the stream is a DTPSocket (its read is interrupted); on another
        stream that one sees it at the end of its read, within about a second."""
        return self._client._cancel(self)


# the client's public module names the logger: a handler's failure is logged where it was
logger = logging.getLogger("dtp.messaging.rpc._blocking_client")

#: Most answers a client keeps queued for a peer that does not take them (refusals of
#: the peer's requests: a client serves nothing); beyond, the peer's requests are dropped
#: unanswered, so a peer that sends requests and never reads cannot grow our memory.
_MAX_QUEUED_OUT = 256

#: How long one wait of a blocked write lasts (seconds) before it looks at its deadline.
_SEND_STEP = 0.25

#: The longest a client's read waits (seconds) before it looks whether the client was
#: closed (it does not own the stream, so it cannot end a read in progress).
_READ_SLICE = 1.0


class RpcClient(ClientBase):
    """Blocking RPC client over one stream (thread-safe; many calls may be in flight).

    ``timeout``: default seconds per call (None: wait forever). ``meter``: attach a
    receipt to every request (per-request fees). ``prepay``: prepay each call's response
    fee into a ResponseEscrow. The client does not own the stream: :meth:`close` fails the
    calls in flight and leaves the stream open unless ``close_stream`` is set.
    """

    _stream: BlockingStream
    timeout: float | None
    """Default seconds per call (None: wait forever)."""
    on_notification: Callable[[str, Any], None] | None
    _close_stream: bool
    _output: Any
    """The protocol's queue of output (whether output waits is asked without a call)."""
    _calls: dict[int, RpcCall]
    _lock: threading.Lock
    """Protocol state and ``_calls``."""
    _cond: threading.Condition
    _wlock: threading.Lock
    """The order of bytes on the stream."""
    _reading: bool
    """A thread is reading for everybody."""
    _followers: int
    """Threads waiting in ``_cond`` for the reader."""
    _current_timeout: float | object | None
    """The timeout last set on the stream (``DEFAULT``: unknown)."""
    _read_size: int
    _backlog: bytes
    _dontwait: bool
    _send_recv: Callable[..., bytes | None] | None
    _notes: deque[tuple[str, Any]]
    _note_lock: threading.Lock
    violations: list[ProtocolViolation]
    """Frames from the peer that broke the format (skipped)."""

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
        self._read_size = QUICK_RECV_SIZE  # the quiet call's (_protocol's read sizes)
        # (_lock, reader) bytes read but not yet taken: a reader whose deadline passed
        # while it took a large read left them to the next reader (_receive_in_pieces)
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
                request_id, head, body = proto.begin_request_parts(
                    method, params, time.monotonic(), timeout
                )
                frame = head + body  # (the lane's exchange takes one buffer)
                # we read for everybody until the answer: calls other threads start
                # meanwhile wait for us (RpcClient._read_loop), as for any reader
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
                self._track_call(request_id)  # a later reader settles it
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
                if got is not None:
                    # (the read-size rule of _protocol's QUICK_RECV_SIZE, inline)
                    self._read_size = QUICK_RECV_SIZE if len(data) < QUICK_RECV_SIZE else RECV_SIZE
                    if self._followers:
                        self._cond.notify_all()
                    return got
                self._read_size = RECV_SIZE
            call = self._track_call(request_id)
            timer = proto.get_timer()
            self._handle_read(data, failed, timer, call, None)  # wakes the followers
            pending_out = bool(self._output)
        finally:
            lock.release()
        if pending_out:
            self._flush_soon()
        if self._notes:
            self._run_notes(timer)
        return (call.result(),)

    def _track_call(self, request_id: int) -> RpcCall:
        """Make a request from :meth:`_call_quiet` an ordinary call (lock held): what
        settles it reaches it through the protocol's events, or its timer."""
        call = RpcCall(self, request_id)
        self._calls[request_id] = call
        self._proto.track(request_id)
        return call

    # -- writes: a frame whole by its deadline -------------------------------------------------

    def _send(self, data: bytes, deadline: float | None) -> None:
        """Write ``data`` (``_wlock`` held), waiting for the peer's flow control until
        ``deadline`` (``time.monotonic()``; None: no limit). Past it the stream may hold
        part of a frame, so every call fails."""
        if not data:
            return
        try:
            self._write(data, deadline)
        except (DTPError, OSError) as exc:
            error = send_failed(exc)
            with self._lock:
                self._fail_all(error)
            raise error from exc

    def _write(self, data: bytes, deadline: float | None) -> None:
        """``stream.sendall(data)`` by ``deadline`` (TimeoutError past it), whatever
        timeout the last read left on the stream: the timeout is shared by reads and
        writes, and reads set short ones to keep deadlines, which a write held up by the
        peer's flow control must not end at with a frame half sent."""
        stream = self._stream
        send = getattr(stream, "send", None)
        if send is None:  # only sendall: its own timeout applies
            stream.sendall(data)
            return
        current = self._current_timeout
        if deadline is not None:
            left = deadline - time.monotonic()
            if not (isinstance(current, float | int) and current <= left + 0.05):
                # the stream's timeout (None, unknown or longer) would outlast the deadline
                step = min(max(left, 1e-3), _SEND_STEP)
                stream.settimeout(step)
                self._current_timeout = step
        elif not isinstance(current, float | int):
            # none or unknown: a write the peer holds up waits in steps, to see close()
            stream.settimeout(_SEND_STEP)
            self._current_timeout = _SEND_STEP
        view = memoryview(data)
        while view:
            try:
                n: int = send(view)  # a timeout means nothing of this call was taken
            except TimeoutError:
                if self._closed is not None:  # close(): no thread is left waiting
                    raise self._closed_error() from None
                step = _SEND_STEP
                if deadline is not None:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise
                    step = min(remaining, _SEND_STEP)
                # wait on in steps (the last read's timeout may be a fraction of a ms)
                stream.settimeout(step)
                self._current_timeout = step
                continue
            view = view[n:]

    def _flush_soon(self) -> None:
        """Send queued protocol output (CANCELs, ACKs, refusals) if no writer is busy (it
        would send it anyway). It does not wait for the peer when the stream can say so
        (MSG_DONTWAIT): what the peer does not take now goes back to the head of the
        queue, for the next write (a call's, which waits up to its deadline) or flush. A
        reader waiting here for a peer that does not read would keep its call, and every
        call it reads for, past their deadlines (for good without a client timeout)."""
        while True:
            if not self._wlock.acquire(blocking=False):
                return
            try:
                with self._lock:
                    data = self._proto.data_to_send()
                if data:
                    if self._dontwait:
                        rest = self._send_nowait(data)
                        if rest:
                            with self._lock:  # first: it may hold part of a frame
                                self._proto.put_back(rest)
                                if len(rest) > UNSENT_CAP:
                                    # a peer that sends malformed requests (each answered
                                    # by its id) and never reads: our memory is bounded
                                    self._fail_all(
                                        E.RpcConnectionLost(
                                            "the peer takes none of our answers to its "
                                            f"requests ({len(rest)} bytes wait)"
                                        )
                                    )
                            return
                    else:
                        with contextlib.suppress(E.RpcConnectionLost):
                            self._send(data, _deadline(self.timeout))
            finally:
                self._wlock.release()
            with self._lock:
                if not self._output:
                    return

    def _send_nowait(self, data: bytes) -> bytes:
        """Send what the stream takes of ``data`` now (``_wlock`` held); returns the
        rest. A failed stream fails every call, as in :meth:`_send`."""
        try:
            return send_nowait(self._stream, data)
        except (DTPError, OSError) as exc:
            with self._lock:
                self._fail_all(send_failed(exc))
        return b""

    # -- reads: the leader/follower reading and waits ------------------------------------------

    def _read_loop(self, call: RpcCall, deadline: float | None) -> None:
        """Wait until ``call`` is done, reading for everybody while nobody else does
        (the leader reads, :meth:`_read_once`, and hands it on, :meth:`_handle_read`)."""
        stream, proto, lock = self._stream, self._proto, self._lock
        monotonic = time.monotonic
        while True:
            with lock:
                while not call.done and self._reading:
                    wait = self._wait_time(deadline)
                    if wait is not None and wait <= 0:
                        # a deadline passed while another thread reads: it is kept here,
                        # not at the end of that read (which began, perhaps before this
                        # call was made, with up to _READ_SLICE to wait)
                        self._expire(call, deadline)
                        continue
                    self._followers += 1
                    try:
                        self._cond.wait(wait)
                    finally:
                        self._followers -= 1
                if call.done:
                    # (the CANCEL of a call that timed out here goes now, not with the
                    # next write: the peer stops working for it)
                    pending_out = bool(self._output)
                    break
                self._reading = True
                timer = proto.get_timer()
                backlog, self._backlog = self._backlog, b""
            leading = True
            try:
                if deadline is not None and (timer is None or deadline < timer):
                    timer = deadline
                data: bytes | None
                failed: BaseException | None
                if backlog:  # a reader before us left it: it comes before the stream
                    data, failed = backlog, None
                else:
                    # a slice at most: close() fails the calls, and the wait sees it
                    wait = (
                        _READ_SLICE
                        if timer is None
                        else min(max(timer - monotonic(), 1e-4), _READ_SLICE)
                    )
                    self._read_timeout(stream, wait)
                    data, failed = self._read_once(stream, RECV_SIZE)
                with lock:
                    self._reading = leading = False
                    self._handle_read(data, failed, timer, call, deadline)
                    if failed is not None or data == b"":
                        return
                    pending_out = bool(self._output)
                if pending_out:
                    self._flush_soon()
                if self._notes:
                    self._run_notes(timer)
            except BaseException:
                with lock:  # let another thread read, and re-check
                    if leading:
                        self._reading = False
                    self._wake_followers()
                raise
            if call.done:
                return
        if pending_out:
            self._flush_soon()

    def _wait_time(self, deadline: float | None) -> float | None:
        """Seconds until the first of ``deadline`` and the protocol's next timer (the
        deadline of a call in flight) comes due: at most 0 once it has, None when there
        is neither (lock held)."""
        timer = self._proto.get_timer()
        if deadline is not None and (timer is None or deadline < timer):
            timer = deadline
        return None if timer is None else timer - time.monotonic()

    def _handle_read(
        self,
        data: bytes | None,
        failed: BaseException | None,
        timer: float | None,
        call: RpcCall,
        deadline: float | None,
    ) -> None:
        """Act on a read (lock held, the reader flag cleared): ``data`` (None: the read
        timed out; b"": the peer closed) or the error ``failed``; ``timer`` is the
        protocol timer the read waited for."""
        proto = self._proto
        if failed is not None:
            self._fail_all(E.RpcConnectionLost(f"the stream failed: {failed}"))
            return
        if data == b"":
            self._fail_all(E.RpcConnectionLost("the peer closed the stream"))
            return
        now = time.monotonic()
        if data:
            if timer is not None and len(data) > TAKE_PIECE:
                now = self._receive_in_pieces(data, now, timer)
            else:
                proto.receive_data(data, now)
        # what was read only settles or adds deadlines after ``now``: only the timer
        # that was due before can be due
        if timer is not None and timer <= now:
            proto.handle_timer(now)
        self._dispatch(proto.events())  # wakes the followers
        if not call.done and deadline is not None and now >= deadline:
            self._expire(call, deadline)

    def _receive_in_pieces(self, data: bytes, now: float, limit: float) -> float:
        """Feed a large read to the protocol piece by piece (lock held, the reader flag
        cleared) until ``limit`` (the timer the read waited for) passes; what is left
        then is the backlog, which the next reader takes before it reads the stream (in
        order: nobody reads meanwhile). Returns the time of the last look."""
        proto, end = self._proto, len(data)
        pos = 0
        while pos < end:
            proto.receive_data(data[pos : pos + TAKE_PIECE], now)
            pos += TAKE_PIECE
            now = time.monotonic()
            if now >= limit and pos < end:
                self._backlog = data[pos:]
                break
        return now

    @staticmethod
    def _read_once(stream: BlockingStream, size: int) -> tuple[bytes | None, BaseException | None]:
        """One read for everybody (the reader flag set): ``(data, None)`` -- b"" when
        the peer closed -- or ``(None, None)`` when the read timed out, ``(None, the
        error)`` when it failed (what :meth:`_handle_read` takes)."""
        try:
            return stream.recv(size), None
        except TimeoutError:
            return None, None
        except (DTPError, OSError) as exc:
            return None, exc

    def _read_timeout(self, stream: BlockingStream, timeout: float | None) -> None:
        """Give the stream's reads ``timeout``, unless the one already set is as good: a
        little shorter (the wait ends a moment early and the loop comes back) or at most
        a millisecond longer (a deadline is late by that much at worst)."""
        current = self._current_timeout
        if timeout != current and not (
            timeout is not None
            and type(current) is float
            and timeout - 0.05 <= current <= timeout + 0.001
        ):
            stream.settimeout(timeout)
            self._current_timeout = timeout

    # -- what settles calls: the protocol's events, deadlines, a cancel, a failure, close ------

    def _dispatch(self, events: list[RpcEvent]) -> None:
        """Hand events to their calls (lock held)."""
        for event in events:
            if isinstance(event, ResponseReceived):
                # whether it is acknowledged, and what its meter is told, is the fee
                # engine's rule (ClientFees.answered), asked when a call holds an
                # escrow or a charge
                fees = self._fees
                if fees.escrows or fees.charges:
                    ack = fees.answered(event.request_id, event.body, event.meta)
                    if ack is not None:
                        self._proto.send_ack(event.request_id, ack)
                call = self._calls.pop(event.request_id, None)
                if call is not None:
                    call._finish(event.result, None)
            elif isinstance(event, ErrorReceived):
                self._fees.unanswered(event.request_id, event.error)
                call = self._calls.pop(event.request_id, None)
                if call is not None:
                    call._finish(None, event.error)
            elif isinstance(event, RequestTimedOut):
                call = self._calls.pop(event.request_id, None)
                if call is not None:
                    self._fees.unanswered(call.request_id)
                    call._finish(None, E.RpcTimeout(f"no answer to call {event.request_id}"))
            elif isinstance(event, NotificationReceived):
                if self.on_notification is not None:
                    # run by _run_notes once the lock is let go of: a handler that calls
                    # this client would wait for the lock its own thread holds
                    self._notes.append((event.method, event.params))
            elif isinstance(event, ProtocolViolation):
                if len(self.violations) < 1000:
                    self.violations.append(event)
            elif isinstance(event, RequestReceived):
                # this client serves nothing: say so, keep the stream usable -- while the
                # peer takes our answers (it may send requests and never read)
                if len(self._output) < _MAX_QUEUED_OUT:
                    self._refuse(event)
                else:
                    self._proto.drop_request(event.request_id)
        self._wake_followers()

    def _run_notes(self, limit: float | None = None) -> None:
        """Run ``on_notification`` for the notifications read (``_lock`` not held), in
        the order they came: one thread at a time runs them, so one that finds another
        running them (or a handler of its own thread calling this client) leaves its
        own to it. Once ``limit`` (``time.monotonic()``: the deadline the thread reads
        for) has passed, it leaves the rest to the next reader: a peer that sends
        notifications faster than the handler takes them must not hold a call past
        its deadline. Once the client is closed (or its stream failed) it runs no
        more: the thread's call failed, and nobody reads for the rest."""
        notes, note_lock = self._notes, self._note_lock
        while notes:
            if not note_lock.acquire(False):
                return
            try:
                while notes:
                    if self._closed is not None:
                        # the thread's call has failed: a slow handler and a read's
                        # worth of notifications would hold it (for minutes), and a
                        # handler that closed the client would go on being called
                        return
                    method, params = notes.popleft()
                    handler = self.on_notification
                    if handler is None:
                        continue
                    try:
                        handler(method, params)
                    except Exception:
                        logger.exception("notification handler failed")
                    if limit is not None and time.monotonic() >= limit:
                        return
            finally:
                note_lock.release()

    def _wake_followers(self) -> None:
        """Wake the threads waiting for the reader (lock held), if there are any."""
        if self._followers:
            self._cond.notify_all()

    def _expire(self, call: RpcCall, deadline: float | None) -> None:
        """A wait ran out (lock held): the protocol's timers due are handled (calls whose
        own deadline passed time out), and ``call`` times out when ``deadline`` (its
        ``result(timeout)``) has passed."""
        now = time.monotonic()
        timer = self._proto.get_timer()
        if timer is not None and timer <= now:
            self._proto.handle_timer(now)
            self._dispatch(self._proto.events())
        if not call.done and deadline is not None and now >= deadline:
            self._proto.cancel(call.request_id)
            self._calls.pop(call.request_id, None)
            self._fees.unanswered(call.request_id)
            call._finish(None, E.RpcTimeout(f"no answer to call {call.request_id}"))

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

    def _fail_all(self, error: BaseException) -> None:
        """(lock held)"""
        if self._closed is None:
            self._closed = error
        calls, self._calls = self._calls, {}
        self._fees.all_unanswered()
        for call in calls.values():
            call._finish(None, error)
        self._wake_followers()

    def _interrupt_reader(self) -> None:
        """End the read another thread waits in for everybody, so that it sees what
        changed (a call cancelled, the client closed) now rather than at the end of
        its read slice: a DTPSocket stream can (``interrupt_recv``); on another
        stream the read ends with its slice (up to ``_READ_SLICE``)."""
        interrupt = getattr(self._stream, "interrupt_recv", None)
        if interrupt is not None:
            with contextlib.suppress(DTPError, OSError):
                interrupt()

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
