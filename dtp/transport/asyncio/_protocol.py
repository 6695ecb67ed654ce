"""The asyncio protocol of one DTP connection: carrier bytes in and out of its Session,
its timers, and the close of a connection nobody holds any more."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import weakref
from asyncio.selector_events import BaseSelectorEventLoop
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from typing import TYPE_CHECKING, Any, cast

from dtp.errors import CLOSE_PAYMENT_REQUIRED, DTPError, PaymentRequired
from dtp.protocol.connection import CloseCode
from dtp.transport._session import (
    _NOTHING_TOUCHED,
    ACCEPT_KEY,
    CARRIER_DRAIN,
    FIRST_RECV_CHUNK,
    RECV_CHUNK,
    UNSENT,
    Session,
)

if TYPE_CHECKING:
    from dtp.transport._hooks import ConnectionHook

logger = logging.getLogger(__name__)

#: How long a closed carrier may go without writing any of what it still holds (a CLOSE
#: record, the last data) before it is aborted: a peer that stopped reading would hold
#: it (and the socket, and wait_closed()) for good. (The blocking API's close waits at
#: most a second for that in all.)
CARRIER_GRACE = 1.0
LIMIT = 2**16  # asyncio.StreamReader's default line limit
#: A key of :meth:`Protocol.wait_change` that no stream's change reaches: only a change
#: that concerns every waiter (the connection's end among them) wakes it
BROAD_KEY = -2


# The read buffer, one per thread, shared by the connections of the event loop running
# there, so an idle server connection holds none of its own. Safe where the loop reads
# synchronously (get_buffer(), recv_into(), buffer_updated() in one callback: selector
# loops and uvloop), not on a proactor loop, where each connection has its own. Shared,
# it is RECV_CHUNK large from the start (a first-size one split bursts of a little over
# 16 KiB into two reads).
_shared = threading.local()


def _shared_buffer() -> memoryview:
    buf: memoryview | None = getattr(_shared, "rbuf", None)
    if buf is None:
        buf = _shared.rbuf = memoryview(bytearray(RECV_CHUNK))
    return buf


def loop_clock(loop: asyncio.AbstractEventLoop) -> Callable[[], float]:
    """``loop.time``, or the clock it reads where that is plain asyncio's (its
    ``time()`` returns ``time.monotonic()``): the same times, a Python call fewer at
    each of the several reads of a record's way in and out."""
    if type(loop).time is asyncio.BaseEventLoop.time:
        return time.monotonic
    return loop.time


def reads_synchronously(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``loop`` fills a protocol's buffer and calls ``buffer_updated`` in one
    go (so that a buffer shared by its connections is never read into twice at once)."""
    return isinstance(loop, BaseSelectorEventLoop) or type(loop).__module__.startswith("uvloop")


class _Owner:
    """Held by every reader and writer of a connection: once none is left, nobody can
    read, write or close it any more (see :func:`_abandoned`)."""

    __slots__ = ("__weakref__",)


def carrier_failure(sock: Any) -> Callable[[], BaseException | None] | None:
    """What says why ``sock``, a carrier socket handed over (``sock=``), ended when it
    keeps its own account: a ``lost_error()`` method (the ledger bridge's end,
    :class:`dtp.hostid.ledger_carrier._bridge`), else None."""
    method = getattr(sock, "lost_error", None)
    return method if callable(method) else None


class Protocol(asyncio.BufferedProtocol):
    """The carrier side of one connection: TCP bytes in and out of the Session."""

    def __init__(self, session: Session, loop: asyncio.AbstractEventLoop) -> None:
        self.session = session
        self.conn = session.conn
        self.loop = loop
        #: The loop's clock (:func:`loop_clock`)
        self.now = loop_clock(loop)
        self.transport: asyncio.Transport | None = None
        # the tasks waiting for a change: on any change (_waiters), or on a change to one
        # stream's reads or to the streams the peer opened (_keyed, by stream ID or
        # ACCEPT_KEY), which wake only when that changed (notify_changes)
        self._waiters: list[asyncio.Future[None]] = []
        self._keyed: dict[int, list[asyncio.Future[None]]] = {}
        session.track_changes()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0  # (when _timer fires)
        # whether _timer was armed (or kept) for a deadline the connection gave in its
        # steady state (Connection.timer_steady): see _after_io
        self._timer_steady = False
        self._abort_timer: asyncio.TimerHandle | None = None
        #: Set once the carrier is half-closed (close_carrier): it closes when the peer
        #: closes its side, or when this fires
        self._drain_timer: asyncio.TimerHandle | None = None
        # close_carrier() came while our CLOSE may still go again (Connection.closing):
        # the carrier closes once that ends (_after_io)
        self._close_after_closing = False
        self._write_paused = False
        # the carrier reads into this one buffer (see RECV_CHUNK): it starts small,
        # doubles whenever a read fills it, and starts small again after a read that
        # fills less than an eighth (a server keeps thousands of connections); where the
        # loop allows it, the thread's shared buffer instead (_shared_buffer), None
        # until the first read
        self._shares_rbuf = reads_synchronously(loop)
        self._rbuf: memoryview | None = (
            None if self._shares_rbuf else memoryview(bytearray(FIRST_RECV_CHUNK))
        )
        self.closed_future: asyncio.Future[None] = loop.create_future()
        self.hook: ConnectionHook | None = None  # a layer above (a metered client: dtp.hostid)
        #: Keep the carrier open once the session ended, until its owner closes it (a
        #: server whose layer above has work to do first: ConnectionHook.close_wait)
        self.hold_carrier = False
        #: What ``get_extra_info("peername")`` reports when the transport's own would
        #: not name the peer: ("ledger", <connection id>) over the ledger carrier, whose
        #: transport is a local socket pair
        self.peername: Any = None
        #: The readers' line limit (``limit`` of open_connection / start_server)
        self.limit = LIMIT
        #: Why the carrier ended, from the carrier socket's own account when it keeps
        #: one (:func:`carrier_failure`: a ledger bridge's ledger error), else None
        self.carrier_failure: Callable[[], BaseException | None] | None = None
        self._owner: weakref.ref[_Owner] | None = None
        #: Keeps the connection open with no reader or writer left: a server's (as
        #: asyncio's server protocol holds its writer), one whose bytes go to a sink
        self.pinned: _Owner | None = None
        #: How many open_stream() calls wait for the peer to allow another stream: its
        #: MAX_STREAMS frame makes no event, so nothing else would wake them
        self.stream_slot_waiters = 0
        #: Takes each stream the peer opens, as its opening is applied
        #: (DTPStreamWriter.serve_streams), or None: accept_stream() takes them
        self.stream_handler: Callable[[int], None] | None = None
        #: The set that counts this connection while its carrier is open (a server's
        #: connections), or None: :meth:`leave_held_in` takes it out
        self.held_in: set[Protocol] | None = None

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (a stream transport, asyncio's or uvloop's: uvloop's are no asyncio.Transport
        # subclasses, so an isinstance check refused every connection on uvloop)
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        try:
            tune_transport(transport)
            self.flush()
        except BaseException as exc:
            # left to asyncio's log, the connection would be half-made: a client's first
            # handshake message would never go (its open waiting for its timeout, or for
            # good), a server's connection never be served (its client waiting as long)
            self._fail(exc)
            if not isinstance(exc, Exception):
                raise  # (SystemExit, KeyboardInterrupt: they end the loop, as anywhere)

    def get_buffer(self, sizehint: int) -> memoryview:
        view = self._rbuf
        if view is None:
            # the thread's shared buffer, taken here in the loop's own thread and then
            # held by reference (it costs an idle connection nothing): no thread-local
            # lookup at every read
            view = self._rbuf = _shared_buffer()
        return view

    def buffer_updated(self, nbytes: int) -> None:
        # (the buffer get_buffer() gave, in this same callback of this thread's loop)
        view = self._rbuf
        assert view is not None
        if self._shares_rbuf:  # (the shared one: RECV_CHUNK already, nothing to resize)
            # (data_received written out: a call fewer a read; the buffer as it is, with
            # the read's length: long-lived, its C pointer is made once)
            self.conn.receive_data(view, self.now(), nbytes)
            self._after_io()
            return
        size = len(view)
        if nbytes == size:
            if size < RECV_CHUNK:
                # the next read may bring more (this one's bytes stay in ``view``)
                self._rbuf = memoryview(bytearray(min(2 * size, RECV_CHUNK)))
        elif nbytes < size >> 3 and size > FIRST_RECV_CHUNK:
            self._rbuf = memoryview(bytearray(FIRST_RECV_CHUNK))
        self.data_received(view[:nbytes])

    def data_received(self, data: bytes | memoryview) -> None:
        """Bytes from the carrier (also a server's first bytes, read before this
        protocol took the transport over); the connection keeps none of ``data``."""
        self.conn.receive_data(data, self.now())
        self._after_io()

    def eof_received(self) -> bool | None:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            if self.session.terminated is None:
                failed = self.carrier_failure() if self.carrier_failure is not None else None
                if failed is not None:
                    # the socket's account of its end over the transport's: uvloop's
                    # transports read and write its descriptor in C, and saw only an
                    # EOF or EPIPE where asyncio's, calling the socket's methods, got
                    # its error (tests/hostid/test_ledger_carrier_outage.py)
                    exc = failed if isinstance(failed, Exception) else exc
                reason = f"carrier error: {exc}" if exc else "the peer vanished"
                self.session.carrier_lost(reason, exc)  # (the cause of what our calls raise)
            self.session.process_events()
        except Exception as fault:
            # ending the session raised: closed here, else its reads would wait for good
            self._fail(fault)
        finally:
            # whatever that raised: its timers stop, and wait_closed() returns
            self._notify()
            if self._timer is not None:
                self._timer.cancel()
            if self._abort_timer is not None:
                self._abort_timer.cancel()
            if self._drain_timer is not None:
                self._drain_timer.cancel()
            if not self.closed_future.done():
                self.closed_future.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._notify()

    # -- driving ---------------------------------------------------------------------------

    def flush(self) -> None:
        transport = self.transport
        if transport is None or self._drain_timer is not None or transport.is_closing():
            return  # (half-closed: nothing more may be written)
        now = self.now()
        if self.hook is not None:
            self.hook.on_output(now)
        conn = self.conn
        data = conn.data_to_send(now)
        if data:
            transport.write(data)
        # (get_timer() and timer_steady() in one call, in the steady state)
        deadline = conn.steady_timer()
        if deadline is None:
            deadline = conn.get_timer()
            self._timer_steady = False
        else:
            self._timer_steady = True
        if self._timer is not None and deadline is not None and self._timer_at <= deadline + 0.001:
            return  # (the usual case, without a call: see _schedule_timer)
        self._schedule_timer(deadline)

    def _after_io(self) -> None:
        session = self.session
        changed = session.process_events()
        conn = self.conn
        if (
            self.hook is not None
            or self._timer is None
            or conn.has_output()
            # (timer_steady() is this, a call fewer a read)
            or (changed and not (self._timer_steady and conn.steady_timer() is not None))
        ):
            # (else nothing to send, and the timer is in time: the read was datagrams a
            # sink took, or changed what the timer's deadline cannot move earlier, as a
            # request that its handler answers with a flush of its own)
            self.flush()
        if (
            session.terminated is not None
            and self.transport is not None
            and (not self.hold_carrier or self._close_after_closing)
        ):
            self.close_carrier()
        if changed:
            self.notify_changes()
        elif self.stream_slot_waiters and self.conn.can_open_stream():
            self._notify()

    def close_carrier(self, drain: bool = True) -> None:
        """Close the transport once it wrote what it holds. While the peer, still
        reading what we sent, will send flow-control credit
        (:meth:`Connection.peer_may_send_credit`), it is half-closed first, and closed
        when the peer closes its side (what it still sends is read and dropped) or after
        CARRIER_DRAIN seconds (see there). Aborted when it wrote nothing of what it holds
        for CARRIER_GRACE seconds (a peer that stopped reading kept the socket open, and
        wait_closed() waiting, for good; a slow one is given the time it takes).
        ``drain`` False (an abort, the loop ending): closed at once, a half-closed
        carrier too. Over a lossy carrier, while our CLOSE may still go again
        (Connection.closing), nothing is closed yet: the carrier stays open, read and
        timed, and closes when that ends (:meth:`_after_io`) or the peer closes it."""
        transport = self.transport
        if transport is None:
            return
        self._close_after_closing = drain and self.conn.closing and not transport.is_closing()
        if self._close_after_closing:
            return  # (docs/protocol.md 3.1: its end could reach the peer without the CLOSE)
        if self._drain_timer is not None:
            if not drain:
                self._close_transport()
            return  # (half-closed already: the peer's close or the timer ends it)
        if (
            drain
            and not transport.is_closing()
            and transport.can_write_eof()
            and (self.conn.peer_may_send_credit() or self._peer_may_send_more())
        ):
            try:
                transport.write_eof()  # (after what the transport holds)
            except (OSError, RuntimeError):
                pass  # closed at once instead
            else:
                self._drain_timer = self.loop.call_later(CARRIER_DRAIN, self._end_drain)
                if self._abort_timer is None and not self.closed_future.done():
                    self._abort_after_grace(transport.get_write_buffer_size())
                return
        self._close_transport()

    def _peer_may_send_more(self) -> bool:
        """Whether the client, not told yet that we closed, may still be sending (a
        server ended an established connection for a reason): its unread bytes would
        reset the carrier ahead of our CLOSE, as
        :meth:`dtp.transport.blocking._engine.Engine.abort` says. (A client's abort
        closes at once, as asyncio's transport.abort(): the loop may end right after
        it.)"""
        ended = self.conn.termination  # (the session learns of it at its next events)
        return (
            ended is not None
            and not ended.by_peer
            and ended.error_code != CloseCode.NO_ERROR
            and not self.conn.is_client
            and self.conn.handshake_hash is not None
        )

    def _end_drain(self) -> None:
        """The peer did not close its side within CARRIER_DRAIN: close ours."""
        self._close_transport()

    def _close_transport(self) -> None:
        transport = self.transport
        if transport is None:
            return
        transport.close()
        if self._abort_timer is None and not self.closed_future.done():
            self._abort_after_grace(transport.get_write_buffer_size())

    def _abort_after_grace(self, left: int) -> None:
        self._abort_timer = self.loop.call_later(CARRIER_GRACE, self._abort_carrier, left)

    def _abort_carrier(self, left: int) -> None:
        transport = self.transport
        if transport is None or self.closed_future.done():
            return
        now = transport.get_write_buffer_size()
        if now < left:  # still moving: look again
            self._abort_after_grace(now)
        elif now or self._drain_timer is None:
            transport.abort()
        # (else: half-closed with all of it written; the peer's close or the drain
        # timer ends it)

    def _schedule_timer(self, deadline: float | None) -> None:
        if self._timer is not None:
            # Most writes push the deadline later (idle, keepalive): a timer armed for
            # an earlier time is kept — when it fires, handle_timer finds nothing due and
            # we re-arm once — instead of a cancel and a new TimerHandle per write.
            if deadline is not None and self._timer_at <= deadline + 0.001:
                return
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            # (in a copy of the arming code's context, as call_at makes one: a timer
            # that ends the connection runs the user's sink callbacks, which must see
            # the user's context variables, not a context every connection shares)
            self._timer = self.loop.call_at(deadline, self._on_timer)
            self._timer_at = deadline

    def _on_timer(self) -> None:
        self._timer = None
        try:
            self.conn.handle_timer(self.now())
            self._after_io()
        except BaseException as exc:
            self._fail(exc)
            if not isinstance(exc, Exception):
                raise  # (SystemExit, KeyboardInterrupt: they end the loop, as anywhere)

    def _fail(self, exc: BaseException) -> None:
        """A callback of the loop on this connection raised ``exc``: abort the
        connection, as the blocking driver's timer thread does (``TimerService._fail``).
        Left to asyncio it would be logged and the connection live on half-alive, its
        timer never armed again: a silent peer never timed out, ``wait_closed()`` or a
        read waiting for good."""
        logger.error(
            "dtp: handling the connection with %s raised: aborting it",
            peer_label(self),
            exc_info=exc,
        )
        closed = self.session.end_after_fault(
            exc, lambda: abort(self, CloseCode.INTERNAL_ERROR, "internal error"), peer_label(self)
        )
        if not closed and self.transport is not None:
            self.transport.abort()  # (connection_lost follows: wait_closed() returns)
        self._notify()

    def start_streams(self) -> None:
        """Hand the streams the peer opened to :attr:`stream_handler`, in order."""
        handler = self.stream_handler
        incoming = self.session.incoming_streams
        while incoming and handler is not None and self.stream_handler is handler:
            stream_id = incoming.popleft()
            if stream_id != 0:  # (the first stream is the connection's own: accept_stream)
                handler(stream_id)

    def _notify(self) -> None:
        """Wake every waiting task, each to look again at its condition."""
        if self.stream_handler is not None:
            self.start_streams()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        if self._keyed:
            keyed, self._keyed = self._keyed, {}
            for some in keyed.values():
                for waiter in some:
                    if not waiter.done():
                        waiter.set_result(None)

    def notify_changes(self, *keys: int) -> None:
        """Wake the tasks that what the session applied since the last look concerns
        (:meth:`Session.take_changes`), and those waiting on ``keys``: after any
        ``process_events()``, or a change applied then reaches no keyed waiter. Only
        those a change concerns: the tasks waiting on any change, and those waiting on
        one of the changed keys (a stream's reads, or ACCEPT_KEY) -- not every reader
        and acceptor of the connection, who would only look again and wait on."""
        # (Session.take_changes, written out: a call fewer a read that changed anything)
        session = self.session
        touched: AbstractSet[int] | None = session._touched
        session._touched = None
        if session._broad:
            session._broad = False
            self._notify()
            return
        if touched is None:
            touched = _NOTHING_TOUCHED
        if keys:
            touched = touched | set(keys)
        if self.stream_handler is not None and ACCEPT_KEY in touched:
            self.start_streams()
        if self._waiters:  # (no new list when none waits: most passes)
            waiters, self._waiters = self._waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
        keyed = self._keyed
        if keyed:
            for key in touched:
                some = keyed.pop(key, None)
                if some is not None:
                    for waiter in some:
                        if not waiter.done():
                            waiter.set_result(None)

    def wake(self) -> None:
        """Wake every task waiting on the connection (:meth:`wait_change`), each to look
        again at its condition: for a layer above whose condition changed outside the
        connection (a receipt stored in another thread, say)."""
        self._notify()

    async def wait_change(self, key: int | None = None) -> None:
        """Wait until anything happens on the connection; with ``key`` (a stream's ID,
        or ACCEPT_KEY), until something happens that may let that stream be read (or a
        stream be accepted): see :meth:`notify_changes`."""
        waiter = self.listen(key)
        try:
            await waiter
        finally:
            self.unlisten(waiter, key)

    def listen(self, key: int | None = None) -> asyncio.Future[None]:
        """A future the next change (``key`` as for :meth:`wait_change`) completes; the
        awaiting coroutine calls :meth:`unlisten` once its wait ends, however it ends.
        (A read waiting for bytes awaits it directly: a coroutine of wait_change's
        would be two more objects a connection whose handler waits in a read.)"""
        # one future per waiter: a waiter cancelled (e.g. by asyncio.wait_for) cancels
        # only its own, never the others' wake-up
        waiter = self.loop.create_future()
        if key is None:
            self._waiters.append(waiter)
        else:
            some = self._keyed.get(key)
            if some is None:
                self._keyed[key] = [waiter]
            else:
                some.append(waiter)
        return waiter

    def unlisten(self, waiter: asyncio.Future[None], key: int | None = None) -> None:
        """:meth:`listen`'s ``waiter`` is no longer awaited: out of the lists, if no
        wake-up took it."""
        if not waiter.done() or waiter.cancelled():
            # (still listed, if no wake-up took it: where the list is now)
            if key is None:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            else:
                some = self._keyed.get(key)
                if some is not None:
                    with contextlib.suppress(ValueError):
                        some.remove(waiter)
                    if not some:
                        del self._keyed[key]

    async def wait_for(self, ready: Callable[[], bool], key: int | None = None) -> None:
        """Wait until ``ready()``; ``key`` as for :meth:`wait_change` (a condition on
        that stream's reads, or on the streams the peer opened, and nothing else)."""
        while not ready():
            await self.wait_change(key)

    def leave_held_in(self, _: object = None) -> None:
        """Leave :attr:`held_in` (``closed_future``'s done callback)."""
        if self.held_in is not None:
            self.held_in.discard(self)
            self.held_in = None

    @property
    def write_paused(self) -> bool:
        return self._write_paused

    def owner(self) -> _Owner:
        """What a new reader or writer of this connection holds (one for them all)."""
        owner = self._owner() if self._owner is not None else None
        if owner is None:
            owner = _Owner()
            # the reference the protocol holds calls _abandoned when the owner goes (a
            # weakref.finalize would add four objects a connection, and a registry
            # entry, for the garbage collector to walk while it lives). Its callback
            # holds the protocol weakly: a strong one would make a cycle of the two
            self._owner = weakref.ref(owner, _WhenAbandoned(weakref.ref(self)))
        return owner


def tune_transport(transport: asyncio.BaseTransport) -> None:
    """Give a TCP transport's socket the settings every DTP TCP socket gets
    (:func:`dtp.transport.carriers._tcp.tune`, looked up at each call); one that refuses
    them (OSError) goes on untuned, and a transport with no socket is left as it is."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        from dtp.transport.carriers._tcp import tune

        with contextlib.suppress(OSError):
            tune(sock)


def peer_label(proto: Protocol) -> Any:
    """Who is at the other end of ``proto``, for a log line: its ledger connection, or
    its TCP address."""
    if proto.peername is not None or proto.transport is None:
        return proto.peername
    return proto.transport.get_extra_info("peername")


def abort(proto: Protocol, code: int, reason: str) -> None:
    proto.conn.close(code, reason)
    proto.flush()
    proto.close_carrier(drain=False)


def end_unpaid(proto: Protocol, reason: str) -> DTPError:
    """The blocking driver's ``Engine.end_unpaid`` for an asyncio connection: the hook
    refused a write, so the connection ends at once (its last frames, then CLOSE with
    CLOSE_PAYMENT_REQUIRED and ``reason``), and the error its calls raise from now on is
    returned. The carrier closes as a graceful close's does; the hook's ``after_close``
    runs at the writer's close."""
    session = proto.session
    if session.terminated is None:
        if proto.hook is not None:
            proto.hook.before_close()
        proto.conn.close(CLOSE_PAYMENT_REQUIRED, reason)
        proto.flush()
        session.process_events()
        # (a CLOSE of ours is a plain ConnectionClosed to our calls: this one is the
        # client's own payment error, for every later call too)
        session.error = PaymentRequired(reason, CLOSE_PAYMENT_REQUIRED)
        proto._notify()
        proto.close_carrier()
    return session.error or PaymentRequired(reason, CLOSE_PAYMENT_REQUIRED)


#: The hooks' after_close runs of abandoned connections, while they run (see
#: _close_abandoned)
_FINISHING: set[asyncio.Task[None]] = set()


class _WhenAbandoned:
    """The callback of a protocol's reference to its :class:`_Owner`: :func:`_abandoned`."""

    __slots__ = ("proto",)

    def __init__(self, proto: weakref.ref[Protocol]) -> None:
        self.proto = proto

    def __call__(self, _: object) -> None:
        _abandoned(self.proto)


def _abandoned(ref: weakref.ref[Protocol]) -> None:
    """The last reader and writer of a client connection were garbage-collected with the
    connection open: close it, as asyncio's ``StreamWriter.__del__`` closes its
    transport (keepalives would keep it open for good). It runs wherever the collector
    starts, perhaps inside a seal on this very loop: it only schedules."""
    proto = ref()
    if proto is None:
        return
    loop = proto.loop
    if proto.session.terminated is not None or loop.is_closed():
        return
    with contextlib.suppress(RuntimeError):  # (the loop closed meanwhile)
        loop.call_soon_threadsafe(_close_abandoned, proto)


def _close_abandoned(proto: Protocol) -> None:
    """:func:`_abandoned`'s close, on the loop, at once (no task: the loop may be
    ending). What flow control still holds is cut short: the peer reads an error then,
    not a clean end. A connection with a hook has its last frames go first and its
    ``after_close`` run afterwards, as its writer's close() does (a metered client's
    ends its connection on the ledger: dtp.transport._hooks.ConnectionHook)."""
    if proto.session.terminated is not None or proto.conn.closed:
        return
    try:
        hook = proto.hook
        if hook is not None:
            hook.before_close()  # its last frames go out before CLOSE, in the same write
            abort(proto, CloseCode.NO_ERROR, "")
            task = proto.loop.create_task(asyncio.to_thread(hook.after_close))
            _FINISHING.add(task)  # (held: a task only the loop refers to may be collected)
            task.add_done_callback(_FINISHING.discard)
            return
        if proto.conn.send_buffered():
            abort(proto, CloseCode.APPLICATION, UNSENT)
        else:
            abort(proto, CloseCode.NO_ERROR, "")
    except Exception as exc:
        # left to asyncio's log, it would stay open for good: nobody holds it to close
        # it, and its keepalives hold off the peer's idle timeout
        proto._fail(exc)
