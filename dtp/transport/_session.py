"""What the blocking and asyncio adapters share: a :class:`Connection` plus the
per-stream receive buffers the application reads from, fed by the connection's events;
and, on a server, the accept and admit hooks' calls on the peer it authenticated
(:func:`hook_calls`, :func:`refusal_reason`).

The adapters own the carrier and the waiting (threads or the event loop); this class
owns the bookkeeping, so both behave the same: bytes are buffered per stream until
read, flow-control credit is returned only when the application reads (so a slow
reader bounds the sender), and the connection's end becomes one exception.
"""

from __future__ import annotations

import contextlib
import logging
import numbers
import threading
import time
from collections import deque
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, TypeVar

from dtp.errors import ConnectionClosed, DTPError, DTPTimeoutError, StreamReset
from dtp.identity._ahead import new_ephemeral_key
from dtp.identity._zklogin import ZkLoginCheck
from dtp.protocol._events import (
    ConnectionAccepted,
    ConnectionTerminated,
    ControlReceived,
    DatagramReceived,
    Event,
    HandshakeCompleted,
    PeerAuthenticated,
    ReceiptReceived,
    SendWindowOpened,
    StopSendingReceived,
    StreamDataReceived,
    StreamOpened,
    StreamResetReceived,
)
from dtp.protocol.connection import (
    CloseCode,
    Connection,
    ConnectionConfig,
    error_for_termination,
    with_handshake_timeout,
)
from dtp.transport._hooks import PeerInfo

logger = logging.getLogger(__name__)

MAX_QUEUED_EXTRAS = 1024
#: The connection's first stream (the client opens it; both APIs' connect and accept
#: return it): the connection's clean close is its end (see Session.cut_short).
PRIMARY_STREAM = 0
#: :meth:`Session.take_changes`'s mark for "the peer opened a stream" (no stream's ID)
ACCEPT_KEY = -1
#: The reason a connection closes with (CloseCode.APPLICATION) when close() gave up
#: waiting for queued data: the peer must read an error, not the clean end of a stream
#: cut short.
UNSENT = "closed before all that was written was sent"
#: The reason a connection closes with (CloseCode.APPLICATION) when one of the
#: application's push callbacks (a stream or datagram sink, a receipt handler) raised,
#: as when a server's stream handler fails: the peer reads an error, not a vanished
#: carrier, and is told no more than that.
CALLBACK_FAILED = "internal error"
#: How long a closed connection's carrier, half-closed once it wrote what it holds,
#: waits for the peer to close its side (reading and dropping what still comes) before
#: it closes anyway (both APIs): closed with the peer's late bytes unread, a socket is
#: reset, and the reset throws away what the peer has not read yet -- the end of our
#: data, and the CLOSE.
CARRIER_DRAIN = 2.0
#: The most one carrier read takes, into one reused buffer: a fresh 256 KiB object per
#: read may be an mmap and munmap each time (glibc's dynamic mmap threshold), page
#: faults for every page -- a third of an asyncio server's time in a bulk transfer
#: (bench/compare.py tcp_bulk_asyncio).
RECV_CHUNK = 256 * 1024
#: What a carrier's read buffer starts at (a short connection never pays for zeroing
#: RECV_CHUNK); it doubles whenever a read fills it.
FIRST_RECV_CHUNK = 16 * 1024
#: How many of the closed streams still waiting for the connection to be done with them
#: each :meth:`Session.forget` looks at again (see there): more than one, so that those
#: the connection is done with leave the queue faster than closed streams join it.
_RECHECKED_PER_FORGET = 2
# what Session.take_changes returns when no stream changed (and nothing else did)
_NOTHING_TOUCHED: frozenset[int] = frozenset()


def check_connect_timeout(timeout: float | None) -> None:
    """A connect's ``timeout`` must be > 0 or None (both APIs): a connect cannot be
    non-blocking, as the connection it returns is its result."""
    if timeout is not None and not isinstance(timeout, numbers.Real):
        raise TypeError(
            f"a connect's timeout is a number of seconds or None, not {type(timeout).__name__}"
        )
    if timeout is not None and not timeout > 0:
        raise ValueError(
            f"a connect's timeout must be > 0 or None, got {timeout!r} (settimeout(0) on "
            "the connected socket makes its calls non-blocking)"
        )
    if timeout is not None and timeout > threading.TIMEOUT_MAX:
        # as settimeout() refuses it: a wait that long fails later, midway (the
        # connection made by then left behind)
        raise OverflowError(
            f"a connect's timeout is at most {threading.TIMEOUT_MAX:.0f} s, got {timeout!r}"
        )


def bounded_by_caller(cfg: ConnectionConfig, timeout: float | None) -> ConnectionConfig:
    """A client's config for a connect the caller bounds with ``timeout`` (both APIs):
    the caller's bound, not the config's ``handshake_timeout``, ends the handshake, and
    the connect raises DTPTimeoutError at it. A timer of the connection's own below the
    caller's bound failed the connect early with HandshakeError ("handshake timed
    out"): 10 s into a 25 s connect. The handshake timer is kept one second past the
    caller's bound, so the driver's deadline always fires first; None (no bound)
    leaves the config's timeout in force."""
    if timeout is None or cfg.handshake_timeout > timeout + 1.0:
        return cfg
    return with_handshake_timeout(cfg, min(float(timeout) + 1.0, threading.TIMEOUT_MAX))


def connect_timed_out(target: str, timeout: float) -> DTPTimeoutError:
    """What a connect to ``target`` raises when the caller's ``timeout`` passed (both
    APIs, the carrier connect and the handshake alike)."""
    return DTPTimeoutError(f"connecting to {target} timed out after {timeout:g} s")


def peer_info(
    address: str, connection_id: bytes | None, port: int | None, public_key: bytes | None
) -> PeerInfo:
    """A :class:`PeerInfo` from what the handshake carried."""
    return PeerInfo(
        address=address,
        connection_id=None if connection_id is None else "0x" + connection_id.hex(),
        port=port,
        public_key=public_key,
    )


# -- a server's hooks on the client it authenticated (the verdict both servers read) --

HOOK_FAILED = "internal error in the server's accept hook"
"""The refusal a client gets when an accept or admit hook raised."""


def refusal_reason(verdict: object) -> str | None:
    """What an accept/admit hook's verdict means: None (or True) accepts; False refuses
    with a generic reason; anything else refuses with itself as the reason."""
    if verdict is None or verdict is True:
        return None
    if verdict is False:
        return "refused by the server"
    return str(verdict)


@dataclass(frozen=True)
class HookCall:
    """One hook call a server makes for a client it authenticated (:func:`hook_calls`)."""

    hook: Callable[[Any], Any]
    """The hook."""
    arg: object
    """What it is given: the client's address (``accept``) or its :class:`PeerInfo`
    (``admit``)."""
    admit: bool
    """Whether it is the ``admit`` hook (the asyncio server runs a plain one in a thread:
    it may call the ledger)."""


def hook_calls(
    peer: PeerInfo,
    accept: Callable[[Any], Any] | None,
    admit: Callable[[Any], Any] | None,
) -> list[HookCall]:
    """The hook calls for ``peer``, in the order both servers make them: ``accept`` first,
    then ``admit``. The first refusal (:func:`refusal_reason`) is the verdict and the
    rest are not called; a hook that raises refuses with :data:`HOOK_FAILED`."""
    calls = []
    if accept is not None:
        calls.append(HookCall(accept, peer.address, admit=False))
    if admit is not None:
        calls.append(HookCall(admit, peer, admit=True))
    return calls


T = TypeVar("T")


@dataclass
class StreamBuffer:
    """Received bytes of one stream, waiting for the application."""

    data: bytearray = field(default_factory=bytearray)
    eof: bool = False
    reset_code: int | None = None
    send_stopped: int | None = None  # the peer sent STOP_SENDING with this code
    #: The application reads this stream no more (shutdown(SHUT_RD), close()): its
    #: bytes are dropped as they come, their credit returned at once.
    discarded: bool = False
    #: How many bytes at the front of :attr:`data` had their flow-control credit
    #: returned already (put back by a read that did not complete, or credited ahead
    #: by a readuntil() waiting for its separator). Kept here, not in the reader, so
    #: that every path that drops them (take, a sink, discard) returns each byte's
    #: credit exactly once: given twice, the connection's window grew for good.
    credited: int = 0

    def uncredited(self, n: int) -> int:
        """Drop ``n`` bytes from the front of :attr:`data`'s credit count: how many of
        them still owe their credit (the caller returns it)."""
        k = self.credited
        if k:
            k = min(k, n)
            self.credited -= k
            return n - k
        return n


class StreamSink:
    """A consumer that takes a stream's bytes as they arrive, instead of a buffer the
    application reads (e.g. a tunnel writing straight to a TCP transport).

    ``on_data(chunk)`` gets each chunk: bytes, or with ``views`` a memoryview of the
    connection's read buffer (no copy per chunk), released when the call returns -- what
    it keeps it copies. ``on_end(error)`` is called once, with None at the stream's end
    or the error that ended it. Credit goes back as bytes are delivered, except while
    :attr:`paused` (the sender then stops once its window is used), until
    :meth:`Session.resume_sink`."""

    __slots__ = ("ended", "held", "on_data", "on_end", "paused", "views")

    def __init__(
        self,
        on_data: Callable[[bytes], None] | Callable[[memoryview], None],
        on_end: Callable[[BaseException | None], None],
        *,
        views: bool = False,
    ) -> None:
        self.on_data: Callable[[Any], None] = on_data
        self.on_end = on_end
        self.views = views
        self.paused = False
        self.held = 0
        self.ended = False

    def deliver(self, data: bytes | memoryview) -> None:
        """Give ``data`` to :attr:`on_data`: with :attr:`views`, as a view released when
        the call returns, so the view itself, kept, raises ValueError instead of reading
        the reused read buffer (one release per chunk: noise beside the chunk's
        decryption); else as bytes of its own (``bytes()`` of bytes is the same object,
        of a view a copy: the buffer behind it is reused)."""
        if self.views:
            with memoryview(data) as view:
                self.on_data(view)
        else:
            self.on_data(bytes(data))


class Session:
    """A connection and the application-side state around it."""

    def __init__(self, config: ConnectionConfig, *, now: float | None = None) -> None:
        self.conn = Connection(
            config, ephemeral_key=new_ephemeral_key(), now=time.monotonic() if now is None else now
        )
        self.streams: dict[int, StreamBuffer] = {}
        #: Streams the peer opened, for the application to accept (popleft): each one
        #: taken off gives its place in the stream limit back once it ends
        self.incoming_streams: deque[int] = _IncomingStreams(self.conn)
        # the queues of datagrams, control messages and receipts (see the properties):
        # made at their first use, as an empty deque weighs about 600 bytes on every
        # idle connection, and most connections never use them (idle_memory_10k)
        self._datagrams: deque[bytes] | None = None
        #: Datagrams dropped because the application did not read them in time.
        self.datagrams_dropped = 0
        self._controls: deque[tuple[int, bytes]] | None = None
        self._receipts: deque[bytes] | None = None
        self.accepted = False
        self.authenticated_address: str | None = None
        #: What a Sui node must confirm of the client's proof before the server decides
        #: (a zkLogin proof), None when nothing (docs/protocol.md 8.4).
        self.zklogin_check: ZkLoginCheck | None = None
        self.terminated: ConnectionTerminated | None = None
        self.error: DTPError | None = None
        self.on_authenticated: Callable[[str], None] | None = None
        self.on_receipt: Callable[[bytes], None] | None = None
        #: Called once the handshake completes, before what it queued goes out: what it
        #: queues shares those records (a client opens its first stream here).
        self.on_handshake: Callable[[], None] | None = None
        self.sinks: dict[int, StreamSink] = {}
        #: When set, each datagram goes to it as it arrives instead of to :attr:`datagrams`.
        self.datagram_sink: Callable[[bytes], None] | None = None
        #: Or each run of datagrams that arrived together goes to this one, as a list
        #: (a relay sends the run on in one call); it wins over :attr:`datagram_sink`.
        self.datagram_run_sink: Callable[[list[bytes]], None] | None = None
        self._data_arrived = False
        # what changed, for an adapter that wakes only the waiters a change concerns
        # (track_changes, take_changes): off unless one asks
        self._tracking = False
        # (made at the first change after a take_changes(): an idle connection holds
        # no empty set)
        self._touched: set[int] | None = None
        self._broad = False
        #: What log messages call this connection (the adapter may name it)
        self.name = ""
        # the first push callback that raised, and which: the connection closes with
        # an error at the end of the events being applied (see _callback_failed)
        self._failure: tuple[str, Exception] | None = None
        # why the carrier ended, when it failed (see carrier_lost)
        self._carrier_cause: BaseException | None = None
        # streams the application closed that the connection still tracks (their
        # buffers go once it forgets them: see forget), oldest first, and as a set (a
        # stream forgotten twice is queued once); made at the first such stream, as an
        # empty deque weighs about 600 bytes on every idle connection (idle_memory_10k)
        self._closed_queue: deque[int] | None = None
        self._closed_streams: set[int] | None = None
        # stream bytes skip the event queue: one copy, straight into the stream's buffer
        self.conn.stream_data_handler = self._on_stream_data
        # and so do datagrams, gathered here until process_events hands them on (ahead of
        # the events, which the connection queues only behind them: see datagram_handler)
        self._datagrams_in: list[bytes] = []
        self.conn.datagram_handler = self._datagrams_in.append
        self.conn.datagram_run_handler = self._datagrams_in.extend
        # a stream's buffer lives until the application accepts it: its place in the
        # stream limit must too, or max_streams bounded nothing held here
        self.conn.defer_stream_credit()

    @property
    def datagrams(self) -> deque[bytes]:
        """Datagrams received and not read yet, oldest first (at most
        MAX_QUEUED_EXTRAS: the oldest go first, counted in :attr:`datagrams_dropped`)."""
        queue = self._datagrams
        if queue is None:
            queue = self._datagrams = deque()
        return queue

    @property
    def controls(self) -> deque[tuple[int, bytes]]:
        """Control messages received (kind, data), oldest first (bounded as
        :attr:`datagrams`)."""
        queue = self._controls
        if queue is None:
            queue = self._controls = deque()
        return queue

    @property
    def receipts(self) -> deque[bytes]:
        """Receipts received and not handed on yet, oldest first (bounded as
        :attr:`datagrams`)."""
        queue = self._receipts
        if queue is None:
            queue = self._receipts = deque()
        return queue

    def _on_stream_data(self, stream_id: int, data: bytes | memoryview, end: bool) -> None:
        sink = self.sinks.get(stream_id)
        if sink is not None:
            self._to_sink(stream_id, sink, data, end)
            return
        buf = self.streams.get(stream_id)
        if buf is None:
            # (made with its bytes and end: a stream that came whole, a short call's)
            self.streams[stream_id] = StreamBuffer(bytearray(data), end)
        elif buf.discarded:
            # nobody will read them: their credit goes back now, or the connection's
            # window would shrink by them for good
            self.conn.acknowledge_read(stream_id, len(data))
            return
        else:
            buf.data += data
            if end:
                buf.eof = True
        self._data_arrived = True
        if self._tracking:
            touched = self._touched
            if touched is None:
                self._touched = {stream_id}
            else:
                touched.add(stream_id)

    def _to_sink(
        self, stream_id: int, sink: StreamSink, data: bytes | memoryview, end: bool
    ) -> None:
        if sink.ended:
            return
        n = len(data)
        if n:
            try:
                # (StreamSink.deliver, inline: a frame less at every chunk pushed)
                if sink.views:
                    with memoryview(data) as view:
                        sink.on_data(view)
                else:
                    sink.on_data(bytes(data))
            except Exception as exc:
                self._callback_failed(f"the sink of stream {stream_id}", exc)
            if sink.paused:
                sink.held += n
            else:
                self.conn.acknowledge_read(stream_id, n)
        if end:
            self._data_arrived = True
            self._end_sink(stream_id, sink, None)
            self._broad = True
        # else no change to tell: pushed bytes make no read possible (nobody reads a
        # stream with a sink), so they wake no task (an accept_stream(), another
        # stream's read) and the adapter skips its notify pass

    def _end_sink(self, stream_id: int, sink: StreamSink, error: BaseException | None) -> None:
        """End ``sink`` (the stream finished, was reset or the connection ended): it is
        detached, the credit it held while paused goes back, and ``on_end`` is called."""
        if not sink.ended:
            sink.ended = True
            del self.sinks[stream_id]
            # The bytes it held credit for were delivered already, and resume_sink finds
            # no sink once it ended: kept, that credit shrank the connection's window for
            # good (acknowledge_read returns nothing once the connection is closed).
            held, sink.held = sink.held, 0
            if held:
                self.conn.acknowledge_read(stream_id, held)
            try:
                sink.on_end(error)
            except Exception as exc:
                self._callback_failed(f"the sink of stream {stream_id}", exc)

    def _callback_failed(self, what: str, exc: Exception) -> None:
        """A push callback of the application raised while the connection's input was
        handled: noted here, and the connection closes with an error once the events at
        hand are applied (:meth:`process_events`). Raised on, it would go up through the
        adapter's read of the carrier, leave the input half handled and end the carrier
        with no CLOSE."""
        if self._failure is None:
            self._failure = (what, exc)
        else:
            logger.debug("%s: %s raised again: %r", self._label(), what, exc)

    def _label(self) -> str:
        if self.name:
            return self.name
        peer = self.conn.peer_address or self.authenticated_address
        return f"connection with {peer}" if peer else "connection"

    def _close_failed(self) -> None:
        """Close the connection after a push callback raised (see _callback_failed):
        logged with the connection's name; the peer reads an APPLICATION close, and our
        own calls raise ConnectionClosed whose ``__cause__`` is the callback's error."""
        assert self._failure is not None
        what, exc = self._failure
        logger.error("%s: %s raised: closing the connection", self._label(), what, exc_info=exc)
        if self.terminated is None:
            self.conn.close(CloseCode.APPLICATION, CALLBACK_FAILED)
            while (event := self.conn.next_event()) is not None:
                self._apply(event)

    def _failed_error(self) -> ConnectionClosed:
        """What our calls raise once a push callback's failure closed the connection."""
        assert self._failure is not None
        what, exc = self._failure
        error = ConnectionClosed(
            f"closed: {what} raised {type(exc).__name__}: {exc}", int(CloseCode.APPLICATION)
        )
        error.__cause__ = exc
        return error

    def attach_sink(self, stream_id: int, sink: StreamSink) -> None:
        """Deliver ``stream_id``'s bytes to ``sink`` from now on, starting with what is
        buffered already; ends it at once if the stream already ended (with None once
        closed here, as its reads end at b""). A sink attached after the connection
        ended ends as one attached before it did: with the connection's error, else (a
        clean close) with None -- or, on a stream other than the first that the peer's
        clean close cut short, ConnectionClosed (:meth:`cut_short`), as its reads end."""
        self.sinks[stream_id] = sink
        buf = self.streams.get(stream_id)
        if buf is not None:
            if buf.data:
                data = bytes(buf.data)
                buf.data.clear()
                owed = buf.uncredited(len(data))
                sink.deliver(data)
                if sink.paused:
                    sink.held += owed
                elif owed:
                    self.conn.acknowledge_read(stream_id, owed)
            if buf.discarded:
                # closed (or shut for reading) here: nothing more is delivered, and its
                # reads give b"" (take) -- left attached, the sink waited for the
                # connection's end, and then got the error of a stream cut short
                self._end_sink(stream_id, sink, None)
                return
            if buf.reset_code is not None:
                self._end_sink(stream_id, sink, StreamReset(stream_id, buf.reset_code))
                return
            if buf.eof:
                self._end_sink(stream_id, sink, None)
                return
        elif self.conn.stream_ended(stream_id):
            # closed here, then forgotten with its buffer: no event names it again (a
            # sink left attached never ended, while the connection lasted)
            self._end_sink(stream_id, sink, None)
            return
        if self.terminated is not None:
            # the rule the ConnectionTerminated event applies to sinks attached before:
            # a blanket ConnectionClosed gave a sink of the first stream, or of any
            # stream after our own clean close, an error where the stream's reads end
            self._end_sink(stream_id, sink, self.error or self.cut_short(stream_id))

    def resume_sink(self, stream_id: int) -> None:
        """Un-pause a sink and return the credit it held."""
        sink = self.sinks.get(stream_id)
        if sink is not None and sink.paused:
            sink.paused = False
            held, sink.held = sink.held, 0
            self.conn.acknowledge_read(stream_id, held)

    def peer_info(self) -> PeerInfo:
        """What the handshake carried of the peer, for a server's accept and admit hooks
        (once it authenticated: :attr:`authenticated_address` is set)."""
        address = self.authenticated_address
        assert address is not None, "peer_info() before the peer authenticated"
        conn = self.conn
        return peer_info(address, conn.peer_connection_id, conn.peer_port, conn.peer_static)

    def carrier_lost(self, reason: str, cause: BaseException | None = None) -> None:
        """The carrier failed or closed under the connection: end it at once
        (:meth:`Connection.carrier_lost`), the error our calls raise from then on
        having ``cause`` -- the carrier's error, e.g. the ledger bridge's -- as its
        ``__cause__``. Apply with :meth:`process_events`."""
        if self.terminated is None and cause is not None:
            self._carrier_cause = cause
        self.conn.carrier_lost(reason)

    def end_after_fault(self, fault: BaseException, close: Callable[[], None], name: str) -> bool:
        """Our own code raised ``fault`` while handling the connection ``name`` (a timer
        pass, a loop callback): end it with ``close()`` (CLOSE with INTERNAL_ERROR, sent)
        and apply that, the error our calls raise from then on having ``fault`` as its
        cause. Left as it was, it lived on half-alive. A connection too broken even for
        ``close()`` ends as a lost carrier would end it (False then), else our calls
        waited on one that never ended. Raises nothing: the blocking timer thread calls
        it, and what escaped would end every other connection's timers."""
        ended = self.terminated is not None  # (then its error has a cause of its own)
        closed = True
        try:
            close()
            self.process_events()
        except BaseException:
            logger.exception("closing the connection with %s after a fault failed", name)
            closed = False
            with contextlib.suppress(BaseException):
                self.carrier_lost("internal error", fault)
                self.process_events()
        if not ended and self.error is not None and self.error.__cause__ is None:
            self.error.__cause__ = fault
        return closed

    # -- events ------------------------------------------------------------------------

    def process_events(self) -> bool:
        """Apply every pending event; True if anything a waiter cares about changed
        (datagrams a sink took are no such change: nothing waits for them, and a sink
        that raised ends the connection, which is one)."""
        changed = self._data_arrived
        self._data_arrived = False
        if self._datagrams_in and self._take_datagrams():
            changed = True
        # (Connection.next_event's queue, popped here: a call fewer an event, and one
        # fewer each time, the usual case, when none waits)
        events = self.conn._events
        while events:
            event = events.popleft()
            changed = True
            if type(event) is StreamOpened and self._tracking:
                # (_apply's and _track's case written out: every stream the peer opens)
                sid = event.stream_id
                if sid not in self.streams:
                    self.streams[sid] = StreamBuffer()
                self.incoming_streams.append(sid)
                if sid == PRIMARY_STREAM:
                    self.conn.stream_taken(0)
                touched = self._touched
                if touched is None:
                    self._touched = {sid, ACCEPT_KEY}
                else:
                    touched.add(sid)
                    touched.add(ACCEPT_KEY)
                continue
            self._apply(event)
            if self._tracking:
                self._track(event)
        if self._failure is not None:
            self._close_failed()
            self._failure = None
            changed = True
            self._broad = True
        return changed

    def _take_datagrams(self) -> bool:
        """The datagrams the connection handed over (:attr:`Connection.datagram_handler`),
        together to :attr:`datagram_run_sink`, else each to :attr:`datagram_sink` or the
        bounded queue, as a DatagramReceived event's would go; True when any went to the
        queue (where the adapters' ``recv_datagram`` waits)."""
        arrived = self._datagrams_in[:]
        self._datagrams_in.clear()  # (the same list: it is the connection's handler)
        sink = self.datagram_run_sink
        if sink is not None:  # (_take_run, inline: a call saved on every run)
            try:
                sink(arrived)
            except Exception as exc:
                self._callback_failed("the datagram sink", exc)
            return False
        queued = False
        for data in arrived:
            if self.datagram_run_sink is not None or self.datagram_sink is not None:
                # (read at each datagram: a sink may be set, or replace itself, midway)
                if self._give_datagram(data):
                    queued = True
                continue
            # (_give_datagram's queueing, inline: a blocking socket's every datagram)
            queue = self._datagrams
            if queue is None:
                queue = self._datagrams = deque()
            if len(queue) >= MAX_QUEUED_EXTRAS:
                self.datagrams_dropped += 1
                queue.popleft()  # (as _bounded_append: the newest are kept)
            queue.append(data)
            queued = True
        if queued and self._tracking:
            self._broad = True
        return queued

    def _take_run(self, run: list[bytes]) -> None:
        """A run of datagrams to :attr:`datagram_run_sink` (set)."""
        sink = self.datagram_run_sink
        assert sink is not None
        try:
            sink(run)
        except Exception as exc:
            self._callback_failed("the datagram sink", exc)

    def _give_datagram(self, data: bytes) -> bool:
        """One datagram to :attr:`datagram_sink`, else to the bounded queue (counted in
        :attr:`datagrams_dropped` when it pushes the oldest out); True when queued. The
        sink is read at each datagram: it may replace itself midway, as a relay whose
        control stream failed does."""
        if self.datagram_run_sink is not None:
            self._take_run([data])
            return False
        sink = self.datagram_sink
        if sink is not None:
            try:
                sink(data)
            except Exception as exc:
                self._callback_failed("the datagram sink", exc)
            return False
        if len(self.datagrams) >= MAX_QUEUED_EXTRAS:
            self.datagrams_dropped += 1
        _bounded_append(self.datagrams, data)
        return True

    # -- what changed (an adapter's targeted wake-ups) -------------------------------------

    def track_changes(self) -> None:
        """Record what changes from now on, for :meth:`take_changes`."""
        self._tracking = True

    def _track(self, event: Event) -> None:
        kind = type(event)
        if kind is StreamDataReceived or kind is StreamResetReceived or kind is StreamOpened:
            touched = self._touched
            if touched is None:
                touched = self._touched = set()
            touched.add(event.stream_id)  # type: ignore[attr-defined]
            if kind is StreamOpened:
                touched.add(ACCEPT_KEY)
        else:
            self._broad = True

    def take_changes(self) -> AbstractSet[int] | None:
        """What changed since the last call (:meth:`track_changes` on): the streams whose
        reads may have become possible (bytes, their end, a reset, their opening or
        :meth:`discard`) and :data:`ACCEPT_KEY` when the peer opened one; None when
        anything else changed (the connection's end, a datagram, credit, ...), which
        concerns every waiter."""
        touched = self._touched
        self._touched = None
        if self._broad:
            self._broad = False
            return None
        return _NOTHING_TOUCHED if touched is None else touched

    def _apply(self, event: Event) -> None:
        # (class patterns: the isinstance checks of an if-chain, without its calls)
        match event:
            case StreamDataReceived():
                sink = self.sinks.get(event.stream_id)
                if sink is not None:
                    self._to_sink(event.stream_id, sink, event.data, event.end_stream)
                    return
                buf = self.streams.get(event.stream_id)
                if buf is None:
                    buf = self.streams[event.stream_id] = StreamBuffer()
                if buf.discarded:
                    self.conn.acknowledge_read(event.stream_id, len(event.data))
                    return
                buf.data += event.data
                if event.end_stream:
                    buf.eof = True
            case StreamOpened():
                # (its data, read with its opening, may have made the buffer already: no
                # StreamBuffer made to be dropped, as setdefault would)
                if event.stream_id not in self.streams:
                    self.streams[event.stream_id] = StreamBuffer()
                self.incoming_streams.append(event.stream_id)
                if event.stream_id == PRIMARY_STREAM:
                    # the client's first stream is the connection's own (the adapters'
                    # accept never hands it out): the application has it from the start
                    self.conn.stream_taken(0)
            case StreamResetReceived():
                buf = self.streams.setdefault(event.stream_id, StreamBuffer())
                buf.reset_code = event.error_code
                sink = self.sinks.get(event.stream_id)
                if sink is not None:
                    self._end_sink(
                        event.stream_id, sink, StreamReset(event.stream_id, event.error_code)
                    )
            case StopSendingReceived():
                buf = self.streams.setdefault(event.stream_id, StreamBuffer())
                buf.send_stopped = event.error_code
            case ConnectionAccepted():
                self.accepted = True
            case PeerAuthenticated():
                self.zklogin_check = event.zklogin
                self.authenticated_address = event.address
                if self.on_authenticated is not None:
                    self.on_authenticated(event.address)
            case DatagramReceived():
                self._give_datagram(event.data)
            case ControlReceived():
                _bounded_append(self.controls, (event.kind, event.data))
            case ReceiptReceived():
                if self.on_receipt is not None:
                    try:
                        self.on_receipt(event.data)
                    except Exception as exc:
                        self._callback_failed("the receipt handler", exc)
                else:
                    _bounded_append(self.receipts, event.data)
            case ConnectionTerminated():
                self.terminated = event
                self.error = error_for_termination(event)
                if (
                    self._failure is not None
                    and not event.by_peer
                    and event.reason == CALLBACK_FAILED
                ):
                    self.error = self._failed_error()
                elif (
                    self._carrier_cause is not None
                    and self.error is not None
                    and event.error_code == CloseCode.CONNECTION_LOST
                ):
                    self.error.__cause__ = self._carrier_cause
                for stream_id, sink in list(self.sinks.items()):
                    # (a sink's stream had not ended, or it would be detached already)
                    self._end_sink(stream_id, sink, self.error or self.cut_short(stream_id))
                # none of these can be called once the connection has ended (the final
                # receipt came before this event); each is a bound method or closure of an
                # object that holds the session, a cycle left to the collector otherwise
                self.on_receipt = self.on_authenticated = self.on_handshake = None
            case HandshakeCompleted():
                if self.on_handshake is not None:
                    self.on_handshake()
            case SendWindowOpened():
                pass  # waiters re-check their condition on any change

    # -- reading -----------------------------------------------------------------------

    def discard(self, stream_id: int) -> None:
        """The application stops reading ``stream_id`` (shutdown(SHUT_RD), close()):
        drop what is buffered and what comes later, returning their flow-control credit
        (unread, they would hold the connection's window for good and stall its other
        streams), and let reads end: :meth:`take` returns b"" from now on."""
        buf = self.streams.get(stream_id)
        if buf is None:  # (not setdefault: a stream read from has its buffer)
            buf = self.streams[stream_id] = StreamBuffer()
        buf.discarded = True
        if buf.data:
            owed = buf.uncredited(len(buf.data))
            buf.data.clear()
            if owed:
                self.conn.acknowledge_read(stream_id, owed)
        self._data_arrived = True
        if self._tracking:
            touched = self._touched
            if touched is None:
                self._touched = {stream_id}
            else:
                touched.add(stream_id)

    def drop_finished(self, stream_id: int) -> bool:
        """The application closes ``stream_id`` whose reads are over (its end came and
        everything was read) and which the connection is done with (forgotten: both
        ways ended), with nothing else pending (no event, no change not taken yet):
        its buffer goes at once, which is what :meth:`discard` then :meth:`forget`
        would come to (a request answered with ``write_eof()``, then closed). True
        when it went; False, changing nothing, otherwise."""
        buf = self.streams.get(stream_id)
        if (
            buf is None
            or not buf.eof
            or buf.data
            or buf.discarded
            or buf.reset_code is not None
            or self.terminated is not None
            or self._data_arrived
            or self._touched is not None
            or self._broad
            or self._failure is not None
            or self._datagrams_in
            or self._closed_queue
            or self.conn._events
            or stream_id in self.conn.streams.by_id
        ):
            return False
        del self.streams[stream_id]
        return True

    def unread(self, stream_id: int, data: bytes) -> None:
        """Put ``data``, taken by a read that did not complete, back in front of
        ``stream_id``'s buffer. Its flow-control credit went back when it was taken:
        it is counted as credited (see :attr:`StreamBuffer.credited`), so whatever
        drops it later does not return it again."""
        buf = self.streams.get(stream_id)
        if data and buf is not None:
            buf.data[:0] = data
            buf.credited += len(data)

    def credit_buffered(self, stream_id: int) -> bool:
        """Return the flow-control credit of every byte buffered on ``stream_id`` now,
        leaving the bytes where they are: for a read that must see more than a window
        before it can take any (a readuntil() whose separator has not come), the
        peer would stop at the window, and the read wait for good. True if any credit
        went back (for the adapter to send it)."""
        buf = self.streams.get(stream_id)
        if buf is None:
            return False
        owed = len(buf.data) - buf.credited
        if owed <= 0:
            return False
        buf.credited = len(buf.data)
        self.conn.acknowledge_read(stream_id, owed)
        return True

    def forget(self, stream_id: int) -> None:
        """The application closed ``stream_id`` (after :meth:`discard`): its buffer goes
        once the connection is done with the stream too (a connection of many short
        streams would keep one each, for good). Until then it stays, discarding what
        comes; each call looks again at the :data:`_RECHECKED_PER_FORGET` oldest of
        those waiting, a constant amount of work (looking at all of them made closing N
        such streams O(N**2))."""
        self.process_events()  # (what is queued for it arrives before it goes)
        live = self.conn.streams.by_id
        # The connection tells us of no stream it is done with (no event): streams
        # closed earlier are looked at again here, a few per call, oldest first.
        queue, waiting = self._closed_queue, self._closed_streams
        if queue is None or waiting is None:
            queue = self._closed_queue = deque()
            waiting = self._closed_streams = set()
        for _ in range(min(_RECHECKED_PER_FORGET, len(queue))):
            sid = queue.popleft()
            if sid in live:
                queue.append(sid)
            else:
                waiting.discard(sid)
                self.streams.pop(sid, None)
        if stream_id not in live:
            self.streams.pop(stream_id, None)  # (still queued if forgotten before: it goes)
        elif stream_id not in waiting:
            waiting.add(stream_id)
            queue.append(stream_id)

    def readable(self, stream_id: int) -> bool:
        """True when a read on ``stream_id`` would not block."""
        buf = self.streams.get(stream_id)
        if buf is not None and (buf.data or buf.eof or buf.reset_code is not None or buf.discarded):
            return True
        # (a stream the application closed and the connection is done with: its buffer
        # went (forget), its reads end as after discard)
        return self.terminated is not None or (buf is None and self.conn.stream_ended(stream_id))

    def take(self, stream_id: int, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` buffered bytes (b"" at end of stream); raises if the
        stream was reset, the connection failed, or the peer closed the connection
        before the stream ended (:meth:`cut_short`), with nothing left to read."""
        buf = self.streams.get(stream_id)
        if buf is not None and buf.data:
            data = buf.data
            if max_bytes >= len(data):
                chunk = bytes(data)  # (all of it, the usual read: one copy, no view)
            else:
                with memoryview(data) as view:
                    chunk = view[:max_bytes].tobytes()  # one copy (a slice would make two)
            n = len(chunk)
            del data[:n]
            if buf.credited:
                n = buf.uncredited(n)
            if n:
                self.conn.acknowledge_read(stream_id, n)
            return chunk
        if buf is not None and buf.discarded:
            return b""  # (as a socket's recv() after shutdown(SHUT_RD))
        if buf is None and self.conn.stream_ended(stream_id):
            return b""  # (discarded, then forgotten: see readable)
        if buf is not None and buf.reset_code is not None:
            raise StreamReset(stream_id, buf.reset_code)
        if buf is not None and buf.eof:
            return b""
        if self.terminated is not None:
            error = self.error or self.cut_short(stream_id)
            if error is not None:
                raise error
            return b""
        raise BlockingIOError("no data")

    def cut_short(self, stream_id: int) -> ConnectionClosed | None:
        """What reads of ``stream_id`` raise, once its buffered bytes are read, when the
        peer closed the connection cleanly before the stream ended (the caller checked
        it is not ended, reset or discarded); None otherwise, and on the first stream.

        As QUIC does, a close ends the streams it leaves unfinished abruptly: read as a
        clean end, a reply cut short looked complete. The first stream is the
        connection's own, as a TCP connection is: the peer's close() ends it with no FIN
        (one sent just before the CLOSE would not be sent again if lost on the ledger
        carrier), so its reads end cleanly. Only the peer's close counts: after our own
        close() we cut our streams short ourselves."""
        event = self.terminated
        if (
            event is None
            or not event.by_peer
            or event.error_code != CloseCode.NO_ERROR
            or stream_id == PRIMARY_STREAM
        ):
            return None
        if stream_id not in self.streams and self.conn.stream_ended(stream_id):
            return None  # (closed here, then forgotten: see readable)
        return ConnectionClosed(
            event.reason or f"the peer closed the connection before stream {stream_id} ended",
            event.error_code,
        )

    def take_into(self, stream_id: int, view: memoryview) -> int:
        """Like :meth:`take`, but into a caller's buffer."""
        buf = self.streams.get(stream_id)
        if buf is not None and buf.data:
            n = min(len(view), len(buf.data))
            with memoryview(buf.data) as src:
                view[:n] = src[:n]
            del buf.data[:n]
            owed = buf.uncredited(n) if buf.credited else n
            if owed:
                self.conn.acknowledge_read(stream_id, owed)
            return n
        return len(self.take(stream_id, len(view)))

    # -- writing -----------------------------------------------------------------------

    def check_writable(self, stream_id: int) -> None:
        """Raise the reason writes on ``stream_id`` cannot go on, if any."""
        if self.terminated is not None:
            raise self.error or ConnectionClosed("the connection is closed")
        buf = self.streams.get(stream_id)
        if buf is not None and buf.send_stopped is not None:
            raise StreamReset(stream_id, buf.send_stopped)


class _IncomingStreams(deque[int]):
    """:attr:`Session.incoming_streams`: the adapters' accept takes streams off its
    left end; each stream taken off (popleft, remove, clear) is reported to the
    connection (:meth:`Connection.stream_taken`)."""

    # (an instance dict, or a bound method kept for the report, would be one more object
    # a connection for the garbage collector to walk)
    __slots__ = ("_conn",)

    def __init__(self, conn: Connection) -> None:
        super().__init__()
        self._conn = conn

    def popleft(self) -> int:
        stream_id = super().popleft()
        self._conn.stream_taken(stream_id)
        return stream_id

    def remove(self, value: int) -> None:
        super().remove(value)
        self._conn.stream_taken(value)

    def clear(self) -> None:
        taken = list(self)
        super().clear()
        for stream_id in taken:
            self._conn.stream_taken(stream_id)


def _bounded_append(queue: deque[T], item: T) -> None:
    if len(queue) >= MAX_QUEUED_EXTRAS:
        queue.popleft()  # the application is not consuming these: keep the newest
    queue.append(item)
