"""The asyncio RPC client (:class:`AsyncRpcClient`), on the same protocol, fees and
checks as the blocking one."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import inspect
import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from dtp.errors import DTPError
from dtp.messaging import errors as E
from dtp.messaging._framing import DEFAULT_MAX_MESSAGE
from dtp.messaging._protocol import (
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
    meta_copy,
)
from dtp.messaging.rpc._client_base import ClientBase, check_client_options
from dtp.messaging.rpc._engine import ClientFees
from dtp.messaging.rpc._fees import (
    ResponsePrepay,
    check_one_meter,
)
from dtp.messaging.rpc._streams import (
    DEFAULT,
    LOOP_TURN,
    TAKE_PIECE,
    TAKE_TIME,
    check_async_streams,
    send_failed,
)
from dtp.payments.receipts import Meter
from dtp.transport.asyncio._threads import threaded_or_released

logger = logging.getLogger(__name__)

if sys.version_info < (3, 12):
    # (asyncio.current_task() is a Python function there, reading this table of
    # asyncio's: every call asks it)
    _current_task: Callable[[asyncio.AbstractEventLoop], asyncio.Task[Any] | None] = (
        asyncio.tasks._current_tasks.get  # type: ignore[attr-defined]
    )
else:
    _current_task = asyncio.current_task


class AsyncRpcClient(ClientBase):
    """asyncio RPC client over a ``(reader, writer)`` pair (e.g. from
    :func:`dtp.aio.open_connection`). A call alone in flight reads its answer in its
    own task; while calls overlap (or with ``on_notification``) a background task
    reads for them all, and calls await futures.

    ``meter`` and ``prepay`` work as for :class:`RpcClient` (per-request receipts;
    prepaid response fees, acknowledged on each response); the ledger calls of
    ``prepay`` run in a worker thread.
    """

    def __init__(
        self,
        reader: Any,
        writer: Any,
        *,
        timeout: float | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE,
        max_in_flight: int = 4096,
        on_notification: Callable[[str, Any], Any] | None = None,
        meter: Meter | None = None,
        prepay: ResponsePrepay | None = None,
    ) -> None:
        check_client_options(timeout, on_notification)
        check_async_streams(reader, writer)
        check_one_meter(meter, writer)
        self._reader = reader
        self._writer = writer
        # a frame's two parts, written as one (a DTP writer seals them with no joined
        # copy); a writer without writelines gets them joined
        self._write_parts: Callable[[tuple[bytes, bytes]], Any] = getattr(
            writer, "writelines", None
        ) or (lambda parts: writer.write(b"".join(parts)))
        self.timeout = timeout
        self._fees = ClientFees(meter, prepay)
        self.on_notification = on_notification
        self._proto = RpcProtocol(max_message_size=max_message_size, max_outgoing=max_in_flight)
        self._futures: dict[int, asyncio.Future[Any]] = {}
        self._closed: BaseException | None = None
        # the background reader (while calls overlap, or for notifications), and the
        # call reading its own answer: never both at once (one read waits at a time)
        self._task: asyncio.Task[None] | None = None
        self._reading: asyncio.Task[Any] | None = None
        self._background: set[asyncio.Future[Any]] = set()
        # the tasks of calls and notifications waiting in _send for the peer to take
        # their frame, or reading their own answer, which close() cancels (_closing:
        # those it cancelled, which end in RpcConnectionLost): the writer stays open,
        # so a peer that does not read would hold them for good
        self._sending: dict[asyncio.Task[Any], int | None] = {}
        self._closing: set[asyncio.Task[Any]] = set()
        # the calls' deadlines are the protocol's timers (as the blocking client's), run
        # by one loop timer armed for the earliest (_timer_at); a call whose deadline
        # passes in its send is cancelled out of it (_expired: those, which end in
        # RpcTimeout)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._expired: set[asyncio.Task[Any]] = set()
        # (kept: whether output waits is asked at each read, without a call for it)
        self._output = self._proto.output
        self.violations = 0

    def _start(self, data: bytes | None = None) -> None:
        """Start the background reader (``data``: a read to take first) unless it or a
        call reads already."""
        # (not once closed: the reader would take the stream, which is not ours, for good)
        if self._task is None and self._reading is None and self._closed is None:
            self._task = asyncio.get_running_loop().create_task(self._read_loop(data))

    async def call(
        self,
        method: str,
        params: Any = None,
        *,
        timeout: float | None = DEFAULT,
        meta: Mapping[str, Any] | None = None,
        requests: int = 1,
    ) -> Any:
        """Call ``method`` and await its result (raises the typed error otherwise).
        ``requests``: with a ``meter``, how many requests of the SLA the call is
        metered as (docs/messaging.md §2.5; 0: a free method)."""
        if requests != 1 or type(requests) is not int:
            _check_count("requests", requests, 0)
        if timeout is DEFAULT:
            timeout = self.timeout
        if self._closed is not None:
            raise self._closed_error()
        loop = asyncio.get_running_loop()
        proto = self._proto
        now = loop.time()
        fees = self._fees
        head = b""  # (a frame's length prefix, when frame is its body: written as one)
        if fees.meter is None and fees.prepay is None:
            if meta is None:
                # (the protocol's fast framing, as the blocking client's quiet call: the
                # checks of a method name and timeout seen last time are not made again)
                # (tracked: its deadline's timer, as send_request's)
                request_id, head, frame = proto.begin_request_parts(
                    method, params, now, timeout, tracked=True
                )
                if self._output:  # (what the protocol queued goes first: CANCELs)
                    frame = proto.data_to_send() + head + frame
                    head = b""
            else:
                request_id = proto.send_request(
                    method, params, now=now, timeout=timeout, meta=meta_copy(meta)
                )
                frame = proto.data_to_send()
        else:
            extra = meta_copy(meta)
            check = self._can_send(method, params, timeout)
            paid = fees.begin(extra, timeout, check, requests)
            if paid.deposit_timeout is not None:
                assert paid.prepay is not None
                # (a call cancelled meanwhile leaves the escrow made to refund_due: its
                # fee would be locked until someone found it)
                deposit = functools.partial(paid.prepay.deposit, paid.deposit_timeout)
                escrow = await threaded_or_released(deposit, paid.orphaned)
                paid.deposited(escrow)
                now = loop.time()
            # (checked again, metered and sent with no await: receipts go out in nonce
            # order, and nothing can refuse a request the meter counted)
            request_id = paid.send(
                int(time.time() * 1000),
                check,
                lambda meta: proto.send_request(
                    method, params, now=now, timeout=timeout, meta=meta
                ),
            )
            frame = proto.data_to_send()
        # the deadline is the protocol's timer, run by the client's one loop timer
        # (armed again only for an earlier deadline than the one it waits for)
        if timeout is not None and (self._timer is None or now + timeout < self._timer_at):
            self._arm(now + timeout)
        future: asyncio.Future[Any] = loop.create_future()
        self._futures[request_id] = future
        task = _current_task(loop)
        try:
            # the deadline covers the send too: a peer that does not read holds the
            # drain, and the timer cancels it (the frame is whole in the writer's
            # buffer: ending the wait loses nothing of it). (_send written out: a
            # coroutine fewer a call; the task stays in _sending, for close() and the
            # deadline to cancel, until its send ends -- or its own read below does)
            if task is not None:
                self._sending[task] = request_id
            try:
                if head:
                    # the prefix and the body sealed as one, not joined first (a DTP
                    # writer's writelines; any other's joins them)
                    self._write_parts((head, frame))
                    await self._writer.drain()
                elif frame:
                    self._writer.write(frame)
                    await self._writer.drain()
            except BaseException as exc:
                if task is not None:
                    self._sending.pop(task, None)
                if isinstance(exc, (DTPError, OSError)):
                    raise self._send_failed(exc, request_id) from exc
                raise
            if self._task is not None or self._reading is not None or task is None:
                if task is not None:
                    self._sending.pop(task, None)
            elif self.on_notification is not None:
                self._sending.pop(task, None)
                self._start()  # (notifications come between calls too)
            else:
                # nobody reads: this call reads its answer itself, a task's step fewer
                # than a reader task's wake-up then the caller's (its deadline and
                # close() cancel the read as they cancel a send); the answers of calls
                # made meanwhile are taken too
                self._reading = task
                read = self._reader.read
                try:
                    while not future.done():
                        data = await read(RECV_SIZE)
                        if not data:
                            raise E.RpcConnectionLost("the peer closed the stream")
                        # (_take's first step written out for this call's id, as the
                        # blocking client's quiet call takes its answer: the usual read
                        # is exactly its RESPONSE, taken with no call of _take's)
                        futures = self._futures
                        if (
                            len(futures) == 1
                            and request_id in futures
                            and not (fees.escrows or fees.charges)
                            and (got := proto.take_response(request_id, data)) is not None
                        ):
                            del futures[request_id]
                            if not future.done():
                                future.set_result(got[0])
                        elif not self._take(data, loop):
                            # to take in pieces, the loop running in between: by the
                            # reader, whose work a cancel of this call does not cut short
                            self._reading = None
                            self._start(data)
                            break
                        if self._output:
                            await self._flush()
                except asyncio.CancelledError:
                    raise  # (this call's own: its deadline, close(), its caller)
                except BaseException as exc:
                    # the stream ended or failed, or taking a read did: every call fails
                    # (RpcConnectionLost), this one too, as the reader task's failure
                    # fails them
                    error = self._read_failed(exc)
                    if error is exc or not isinstance(exc, Exception):
                        raise
                    raise error from exc
                finally:
                    self._sending.pop(task, None)
                    if self._reading is task:
                        self._reading = None
                        futures = self._futures
                        if futures and (len(futures) > 1 or request_id not in futures):
                            self._start()  # (calls made meanwhile: the reader reads for them)
            # (no shield: the future is this call's alone, and what settles it looks
            # whether it is done first)
            return await future
        except asyncio.CancelledError:
            self._futures.pop(request_id, None)
            self._fees.unanswered(request_id)
            self._cancel_at_peer(request_id)
            if future.done() and not future.cancelled():
                future.exception()  # seen: no 'Future exception was never retrieved'
            if task is not None and task in self._expired:
                self._expired.discard(task)
                if task.uncancel() == 0:  # (nobody else cancelled it meanwhile)
                    raise E.RpcTimeout(f"no answer to call {request_id}") from None
            if self._ended_by_close():
                raise self._closed_error() from None
            raise

    def _arm(self, deadline: float | None) -> None:
        """Run :meth:`_on_timer` at ``deadline`` (None: not at all)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if deadline is not None and self._closed is None:
            self._timer = asyncio.get_running_loop().call_at(deadline, self._on_timer)
            self._timer_at = deadline

    def _on_timer(self) -> None:
        """The calls whose deadline passed end in RpcTimeout, and the peer is told
        (CANCEL, written without waiting for its flow control)."""
        self._timer = None
        if self._closed is not None:
            return
        proto = self._proto
        # (a loop timer may fire a little early: the deadline it was armed for is due)
        proto.handle_timer(max(asyncio.get_running_loop().time(), self._timer_at))
        for event in proto.events():
            self._dispatch(event)
        if self._output and self._closed is None:
            data = proto.data_to_send()
            with contextlib.suppress(Exception):
                self._writer.write(data)
        self._arm(proto.get_timer())

    def _cancel_at_peer(self, request_id: int) -> None:
        """Cancel our request at the peer (CANCEL) without waiting for the peer's flow
        control: the writer buffers the frame, and the next write's drain waits for it
        (a call that gave up, for its deadline or cancelled, must not wait on)."""
        if self._proto.cancel(request_id) and self._closed is None:
            data = self._proto.data_to_send()
            with contextlib.suppress(Exception):
                self._writer.write(data)

    async def notify(
        self, method: str, params: Any = None, *, meta: Mapping[str, Any] | None = None
    ) -> None:
        """Send a notification. Waiting for the peer to take it lasts the client's
        ``timeout`` at most (as the blocking client's): then RpcTimeout, the
        notification staying whole in the writer's buffer, to leave when the peer
        reads."""
        self._start()
        if self._closed is not None:
            raise self._closed_error()
        self._proto.send_notification(method, params, meta=meta)
        deadline = asyncio.timeout(self.timeout)
        try:
            async with deadline:
                await self._send(self._proto.data_to_send(), asyncio.current_task())
        except TimeoutError:
            if not deadline.expired():
                raise
            raise E.RpcTimeout(
                "the peer took no data before the timeout (the notification is queued)"
            ) from None
        except asyncio.CancelledError:
            if self._ended_by_close():
                raise self._closed_error() from None
            raise

    def _ended_by_close(self) -> bool:
        """In a task cancelled while it called or notified: whether close() cancelled
        it (its wait in :meth:`_send`) and nobody else did -- a cancellation of the
        caller's own stays one."""
        task = asyncio.current_task()
        if task is None or task not in self._closing:
            return False
        self._closing.discard(task)
        return task.uncancel() == 0

    async def _send(
        self, data: bytes, task: asyncio.Task[Any] | None, request_id: int | None = None
    ) -> None:
        """Write ``data`` for a call (``request_id``) or a notification and wait for the
        writer's room: a failed write fails every call (RpcConnectionLost, as the
        blocking client's), and this one's error is raised here. :meth:`close` (and a
        call's deadline) cancels the wait of ``task``, the caller's."""
        if task is not None:
            self._sending[task] = request_id
        try:
            if data:
                self._writer.write(data)
                await self._writer.drain()
        except (DTPError, OSError) as exc:
            raise self._send_failed(exc, request_id) from exc
        finally:
            if task is not None:
                self._sending.pop(task, None)

    def _send_failed(self, exc: BaseException, request_id: int | None) -> E.RpcConnectionLost:
        """A write for a call (``request_id``) or a notification failed with ``exc``:
        every call fails (RpcConnectionLost, as the blocking client's), the error
        returned for the sender to raise."""
        if request_id is not None:
            self._futures.pop(request_id, None)
            self._fees.unanswered(request_id)
        error = send_failed(exc)
        self._fail_all(error)
        return error

    async def _flush(self) -> None:
        data = self._proto.data_to_send()
        if data:
            self._writer.write(data)
            await self._writer.drain()

    async def _read_loop(self, data: bytes | None = None) -> None:
        """Read for every call while calls are in flight (for good with
        ``on_notification``) or until the stream ends or fails, which fails the calls;
        ``data``: a read a call made, to take first."""
        loop = asyncio.get_running_loop()
        try:
            read = self._reader.read
            while True:
                if data is None:
                    data = await read(RECV_SIZE)
                    if not data:
                        raise E.RpcConnectionLost("the peer closed the stream")
                if not self._take(data, loop):
                    await self._receive_in_pieces(data, loop)
                    if self._timer is not None:
                        self._proto.get_timer()  # (drops the timers of calls just answered)
                data = None
                if self._output:
                    await self._flush()
                if not self._futures and self.on_notification is None:
                    # no call waits: the next one reads for itself (call)
                    self._task = None
                    return
        except (DTPError, OSError, asyncio.IncompleteReadError) as exc:
            self._read_failed(exc)
        except BaseException as exc:
            # cancelled (close(), or the loop shutting down) or failed: nobody reads any
            # more, so the calls waiting and those to come fail now, not at their
            # deadlines (or never, without one)
            self._read_failed(exc)
            raise

    def _read_failed(self, exc: BaseException) -> E.RpcConnectionLost:
        """The error of every call once reading failed with ``exc`` (the stream ended or
        failed: RpcConnectionLost; nobody reading any more: cancelled, or anything
        else), and of the calls to come: returned, and the calls fail with it."""
        if isinstance(exc, E.RpcConnectionLost):
            error = exc
        elif isinstance(exc, (DTPError, OSError, asyncio.IncompleteReadError)):
            error = E.RpcConnectionLost(str(exc))
        elif isinstance(exc, asyncio.CancelledError):
            error = E.RpcConnectionLost("the client stopped reading (cancelled)")
        else:
            error = E.RpcConnectionLost(f"reading failed: {exc!r}")
        if self._closed is None:
            self._fail_all(error)
        return error

    def _take(self, data: bytes, loop: asyncio.AbstractEventLoop) -> bool:
        """Take ``data``, a read, at once; False, taking nothing, when it is to be taken
        in pieces (:meth:`_receive_in_pieces`: a large read, or notifications for a
        handler)."""
        proto, futures, fees = self._proto, self._futures, self._fees
        if len(futures) == 1 and not (fees.escrows or fees.charges):
            # one call in flight (a sequential caller's) and a read that is exactly its
            # RESPONSE: taken as the blocking client's quiet call takes it, with no
            # decoder, event or dispatch (its timer dropped)
            request_id = next(iter(futures))
            got = proto.take_response(request_id, data)
            if got is not None:
                future = futures.pop(request_id)
                if not future.done():
                    future.set_result(got[0])
                return True
        if len(data) > TAKE_PIECE or self.on_notification is not None:
            return False
        proto.receive_data(data, loop.time())
        for event in proto.events():
            self._dispatch(event)
        if self._timer is not None:
            proto.get_timer()  # (drops the timers of the calls just answered)
        return True

    async def _receive_in_pieces(self, data: bytes, loop: asyncio.AbstractEventLoop) -> None:
        """Take a large read, or one that may hold notifications, letting the loop run
        (the calls' deadlines among others) every :data:`TAKE_PIECE` bytes and every
        :data:`TAKE_TIME` seconds of notification handlers: a peer that sends frames
        costly to take, or notifications faster than the handler takes them, would
        otherwise hold the loop, and every call's deadline with it, for a whole read."""
        proto, dispatch = self._proto, self._dispatch
        pieces = len(data) > TAKE_PIECE
        since = loop.time()
        for pos in range(0, len(data), TAKE_PIECE):
            proto.receive_data(data[pos : pos + TAKE_PIECE] if pieces else data, loop.time())
            for event in proto.events():
                dispatch(event)
                if type(event) is NotificationReceived and loop.time() - since >= TAKE_TIME:
                    await LOOP_TURN
                    since = loop.time()
            if pieces:
                await LOOP_TURN
                since = loop.time()

    def _dispatch(self, event: RpcEvent) -> None:
        if isinstance(event, ResponseReceived):
            future = self._futures.pop(event.request_id, None)
            # whether it is acknowledged, and what its meter is told, is the fee
            # engine's rule (ClientFees.answered), asked when a call holds an escrow
            # or a charge
            fees = self._fees
            if fees.escrows or fees.charges:
                ack = fees.answered(event.request_id, event.body, event.meta)
                if ack is not None:
                    self._proto.send_ack(event.request_id, ack)
            if future is not None and not future.done():
                future.set_result(event.result)
        elif isinstance(event, ErrorReceived):
            future = self._futures.pop(event.request_id, None)
            self._fees.unanswered(event.request_id, event.error)
            if future is not None and not future.done():
                future.set_exception(event.error)
        elif isinstance(event, NotificationReceived) and self.on_notification is not None:
            try:
                outcome = self.on_notification(event.method, event.params)
                if inspect.isawaitable(outcome):
                    task = asyncio.ensure_future(outcome)
                    self._background.add(task)
                    task.add_done_callback(self._background.discard)
            except Exception:
                logger.exception("notification handler failed")
        elif isinstance(event, RequestReceived):
            # (no bound on these, unlike the blocking client's: the read loop awaits
            # the drain of each read's answers, so a peer that does not read stops it)
            self._refuse(event)
        elif isinstance(event, RequestTimedOut):
            # its deadline passed (_on_timer: the protocol queued the CANCEL)
            future = self._futures.pop(event.request_id, None)
            self._fees.unanswered(event.request_id)
            if future is None or future.done():
                return
            for task, sending in self._sending.items():
                if sending == event.request_id:  # still in its send: cancelled out of it
                    self._expired.add(task)
                    task.cancel()
                    return
            future.set_exception(E.RpcTimeout(f"no answer to call {event.request_id}"))
        elif isinstance(event, ProtocolViolation):
            self.violations += 1

    def _fail_all(self, error: BaseException) -> None:
        self._closed = error
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        reading = self._reading
        if reading is not None and reading is not asyncio.current_task():
            # a call reading its answer: its read ends, the call failing as the others
            # (a call close() cancels, once: out of _sending, which close() cancels)
            self._sending.pop(reading, None)
            self._closing.add(reading)
            reading.cancel()
        futures, self._futures = self._futures, {}
        # the prepaid calls failing so got no response: their fees come back (refund_due)
        self._fees.all_unanswered()
        for future in futures.values():
            if not future.done():
                future.set_exception(error)

    async def close(self) -> None:
        """Stop reading and fail calls in flight (the stream stays open): calls and
        notifications waiting for the peer to take their frame end too, with
        RpcConnectionLost (what they wrote stays in the writer's buffer). A
        notification handler (a coroutine: its own task) may await it."""
        self._fail_all(E.RpcConnectionLost("the client was closed"))
        sending, self._sending = self._sending, {}
        for task in sending:
            self._closing.add(task)
            task.cancel()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task

    async def __aenter__(self) -> AsyncRpcClient:
        self._start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
