"""asyncio DTP: ``open_connection`` / ``start_server`` with reader/writer objects that
behave like :class:`asyncio.StreamReader` / :class:`asyncio.StreamWriter`.

    reader, writer = await dtp.aio.open_connection("127.0.0.1", 7000, server_key=key)
    writer.write(b"ping\\n")
    await writer.drain()
    print(await reader.readline())
    writer.close()
    await writer.wait_closed()

Each connection carries many streams: ``await writer.open_stream()`` opens another
(reader, writer) pair, ``await writer.accept_stream()`` waits for one the peer opens.

Where these differ from asyncio's streams, on purpose:

* errors are typed (``ConnectionClosed``, ``ConnectionLost``, ``StreamReset``, each
  a ``ConnectionError``); a read gives the bytes that came before a failure first,
  then raises (asyncio's raises at once); ``wait_closed()`` does not raise it;
* ``write()`` after ``close()`` or ``write_eof()`` raises ``LocalProtocolError``
  (asyncio's drops the bytes after close(), and raises RuntimeError after write_eof());
* ``close()`` of the first stream lets queued bytes go out first (at most
  ``CLOSE_LINGER``), then closes the connection; of another stream, that stream only;
* a client callback's exception goes to the loop's exception handler, then the
  connection is aborted: the peer reads an error, not a clean end;
* the reader is fed by its connection: it has no ``feed_data``, ``feed_eof``,
  ``set_exception`` or ``set_transport``; ``start_tls()`` raises ``LocalProtocolError``
  (a DTP stream is encrypted already); ``writer.transport`` is the carrier's, shared by
  the connection's streams (writing to it breaks the connection);
* a client connection whose readers and writers were all garbage-collected unclosed
  is closed without a ResourceWarning (as :mod:`dtp.socket`'s).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import operator
import socket
import sys
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from dtp._session import (
    CARRIER_DRAIN,
    UNSENT,
    Session,
    StreamSink,
    bounded_by_caller,
    check_connect_timeout,
    connect_timed_out,
)
from dtp.address import HostAddress
from dtp.admission import (
    HOOK_FAILED,
    CarrierChoice,
    LedgerAdmission,
    PeerInfo,
    PreparedConnection,
    abandon_host_connection,
    check_connect_options,
    check_open_grace_use,
    peer_info,
    pinned_host_key,
    prepare_connecting_early,
    refusal_reason,
)
from dtp.carriers.ledger_bridge import (
    LedgerBridge,
    LedgerCarrierOptions,
    LedgerListener,
    connect_ledger_carrier,
    ledger_config,
)
from dtp.carriers.tcp import PendingTcp, carrier_error, connect_any, endpoint_text
from dtp.errors import (
    ConnectionClosed,
    DTPError,
    DTPTimeoutError,
    HandshakeError,
    LocalProtocolError,
    StreamReset,
)
from dtp.handshake_gate import (
    DEFAULT_FIRST_MESSAGE_TIMEOUT,
    Admission,
    FirstMessage,
    Progress,
    Why,
    checked_first_message_timeout,
)
from dtp.handshake_slots import (
    DEFAULT_MAX_HANDSHAKES,
    DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
    DEFAULT_MAX_WAITING_PER_ADDRESS,
    address_key,
)
from dtp.heap_release import HeapRelease, release_free_heap
from dtp.identity.keys import HostIdentity
from dtp.ledger.objects import OpenedConnection
from dtp.payments.metering import MeteringConfig
from dtp.payments.settlement import ClientPayment
from dtp.protocol.connection import CloseCode, ConnectionConfig, direct_client_config
from dtp.replay_guard import ReplayGuard
from dtp.served import served_connections
from dtp.socket import PAID_CLOSE_WAIT, _check_backlog, _readable

if TYPE_CHECKING:
    from pathlib import Path

    from dtp.hostid.paid import ServicePolicy
    from dtp.hostid.paid.aio import PaidAioServer, PaidCallback
    from dtp.ledger.interface import Ledger
    from dtp.payments.receipt_store import ReceiptStore

__all__ = [
    "DTPServer",
    "DTPStreamReader",
    "DTPStreamWriter",
    "open_connection",
    "serve",
    "start_server",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

SEND_HIGH_WATER = 512 * 1024
#: How long ``close()`` on a connection's first stream waits for queued data to leave
#: over a reliable carrier (TCP) before it closes anyway (the peer then sees an error,
#: not a clean end)
CLOSE_LINGER = 5.0
#: How long a closed carrier may go without writing any of what it still holds (a CLOSE
#: record, the last data) before it is aborted: a peer that stopped reading would hold
#: it (and the socket, and wait_closed()) for good. (The blocking API's close waits at
#: most a second for that in all.)
CARRIER_GRACE = 1.0
_LIMIT = 2**16  # asyncio.StreamReader's default line limit

AcceptHook = Callable[[str], "bool | str | Awaitable[bool | str | None] | None"]
AdmitHook = Callable[[PeerInfo], "bool | str | Awaitable[bool | str | None] | None"]
"""Like AcceptHook but given a :class:`~dtp.admission.PeerInfo`. A plain (non-async)
admit hook runs in a worker thread, since it may read the ledger."""
ClientCallback = Callable[["DTPStreamReader", "DTPStreamWriter"], "Awaitable[None] | None"]


class _Owner:
    """Held by every reader and writer of a connection: once none is left, nobody can
    read, write or close it any more (see :func:`_abandoned`)."""

    __slots__ = ("__weakref__",)


class _Protocol(asyncio.Protocol):
    """The carrier side of one connection: TCP bytes in and out of the Session."""

    def __init__(self, session: Session, loop: asyncio.AbstractEventLoop) -> None:
        self.session = session
        self.conn = session.conn
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._abort_timer: asyncio.TimerHandle | None = None
        #: Set once the carrier is half-closed (close_carrier): it closes when the peer
        #: closes its side, or when this fires
        self._drain_timer: asyncio.TimerHandle | None = None
        self._write_paused = False
        self.closed_future: asyncio.Future[None] = loop.create_future()
        self.payment: ClientPayment | None = None  # a metered client connection (dtp.paid)
        #: Keep the carrier open once the session ended, until its owner closes it (a
        #: paid server settles first: the client waits for our end before it looks)
        self.hold_carrier = False
        #: What ``get_extra_info("peername")`` reports when the transport's own would
        #: not name the peer: ("ledger", <connection id>) over the ledger carrier, whose
        #: transport is a local socket pair
        self.peername: Any = None
        #: The readers' line limit (``limit`` of open_connection / start_server)
        self.limit = _LIMIT
        self._owner: weakref.ref[_Owner] | None = None
        #: Keeps the connection open with no reader or writer left: a server's (as
        #: asyncio's server protocol holds its writer), one whose bytes go to a sink
        self.pinned: _Owner | None = None
        #: How many open_stream() calls wait for the peer to allow another stream: its
        #: MAX_STREAMS frame makes no event, so nothing else would wake them
        self.stream_slot_waiters = 0

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        try:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                from dtp.carriers.tcp import tune

                with contextlib.suppress(OSError):
                    tune(sock)
            self.flush()
        except BaseException as exc:
            # left to asyncio's log, the connection would be half-made: a client's first
            # handshake message would never go (its open waiting for its timeout, or for
            # good), a server's connection never be served (its client waiting as long)
            self._fail(exc)
            if not isinstance(exc, Exception):
                raise  # (SystemExit, KeyboardInterrupt: they end the loop, as anywhere)

    def data_received(self, data: bytes) -> None:
        self.conn.receive_data(data, self.loop.time())
        self._after_io()

    def eof_received(self) -> bool | None:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            if self.session.terminated is None:
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
        if self.transport is None or self.transport.is_closing() or self._drain_timer is not None:
            return  # (half-closed: nothing more may be written)
        now = self.loop.time()
        if self.payment is not None:
            self.payment.tick(now)
        data = self.conn.data_to_send(now)
        if data:
            self.transport.write(data)
        self._schedule_timer()

    def _after_io(self) -> None:
        changed = self.session.process_events()
        self.flush()
        if (
            self.session.terminated is not None
            and self.transport is not None
            and not self.hold_carrier
        ):
            self.close_carrier()
        if changed or (self.stream_slot_waiters and self.conn.can_open_stream()):
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
        carrier too."""
        transport = self.transport
        if transport is None:
            return
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
        """Whether the client, not told yet that we closed, may still be sending: a
        server ended an established connection for a reason (a firewall, payment or rate
        close, an abort). Its bytes, unread at our close, reset the carrier, and the
        reset overtook our CLOSE: a client denied in a sendall loop read a bare
        ConnectionLost (tests/transport/test_close_code_delivery.py). (A client's abort closes at
        once, as asyncio's transport.abort(): the loop may end right after it.)"""
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

    def _schedule_timer(self) -> None:
        deadline = self.conn.get_timer()
        if self._timer is not None:
            # Most writes push the deadline later (idle, keepalive): a timer armed for
            # an earlier time is kept — when it fires, handle_timer finds nothing due and
            # we re-arm once — instead of a cancel and a new TimerHandle per write.
            if deadline is not None and self._timer.when() <= deadline + 0.001:
                return
            self._timer.cancel()
            self._timer = None
        if deadline is not None:
            self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        try:
            self.conn.handle_timer(self.loop.time())
            self._after_io()
        except BaseException as exc:
            self._fail(exc)
            if not isinstance(exc, Exception):
                raise  # (SystemExit, KeyboardInterrupt: they end the loop, as anywhere)

    def _fail(self, exc: BaseException) -> None:
        """A callback of the loop on this connection (its start, a timer pass, the
        carrier's end, the close of an abandoned one) raised ``exc``: abort the
        connection, as the blocking sockets' timer thread does
        (``_TimerService._fail``).

        Left to asyncio, it would be logged and the connection live on half-alive: its
        timer, cleared before the pass, is armed again only by the next write or input,
        so a silent peer would never be timed out (keepalive, idle timeout,
        retransmission, the close linger) and ``wait_closed()`` or a read would wait for
        good. Aborted, the peer reads INTERNAL_ERROR, the carrier is released and the
        application's calls raise ConnectionClosed, ``exc`` its cause."""
        logger.error(
            "dtp: handling the connection with %s raised: aborting it",
            _peer_label(self),
            exc_info=exc,
        )
        closed = self.session.end_after_fault(
            exc, lambda: _abort(self, CloseCode.INTERNAL_ERROR, "internal error"), _peer_label(self)
        )
        if not closed and self.transport is not None:
            self.transport.abort()  # (connection_lost follows: wait_closed() returns)
        self._notify()

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_change(self) -> None:
        """Wait until anything happens on the connection."""
        # one future per waiter: a waiter cancelled (e.g. by asyncio.wait_for) cancels
        # only its own, never the others' wake-up
        waiter = self.loop.create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if not waiter.done() or waiter.cancelled():
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    async def wait_for(self, ready: Callable[[], bool]) -> None:
        while not ready():
            await self.wait_change()

    @property
    def write_paused(self) -> bool:
        return self._write_paused

    def owner(self) -> _Owner:
        """What a new reader or writer of this connection holds (one for them all)."""
        owner = self._owner() if self._owner is not None else None
        if owner is None:
            owner = _Owner()
            self._owner = weakref.ref(owner)
            # (the protocol weakly: the finalizer registry is global, and a pinned owner
            # lives as long as its protocol, so a strong one would keep both for good)
            weakref.finalize(owner, _abandoned, weakref.ref(self)).atexit = False
        return owner


class DTPStreamReader:
    """Reads one stream; the :class:`asyncio.StreamReader` interface."""

    def __init__(self, proto: _Protocol, stream_id: int) -> None:
        self._proto = proto
        self._owner = proto.owner()
        self._session = proto.session
        self._stream_id = stream_id
        #: The read waiting for bytes, if one is: a second one raises RuntimeError
        self._waiting: str | None = None

    @property
    def stream_id(self) -> int:
        return self._stream_id

    # -- push delivery ----------------------------------------------------------------------

    def set_sink(
        self,
        on_data: Callable[[bytes], None],
        on_end: Callable[[BaseException | None], None],
    ) -> StreamSink:
        """Have this stream's bytes pushed to ``on_data`` as they arrive (what is
        buffered first), instead of read; ``on_end(error)`` follows once (None at the
        end of the stream). For relays: no task wake-up and no buffer per chunk. Pause
        with :meth:`pause_sink` when the consumer is backed up (the peer then stops at
        its flow-control window) and resume with :meth:`resume_sink`. Do not read the
        stream afterwards."""
        sink = StreamSink(on_data, on_end)
        self._proto.pinned = self._owner  # its consumer may hold no reader or writer
        # (what a cancelled read put back, credited already, is counted by the stream's
        # buffer: attach_sink returns only the credit still owed)
        self._session.attach_sink(self._stream_id, sink)
        self._proto.flush()  # credit for what was buffered
        return sink

    def pause_sink(self) -> None:
        """Hold flow-control credit for pushed bytes (see :meth:`set_sink`)."""
        sink = self._session.sinks.get(self._stream_id)
        if sink is not None:
            sink.paused = True

    def resume_sink(self) -> None:
        """Return the held credit and go on."""
        self._session.resume_sink(self._stream_id)
        self._proto.flush()

    def _take(self, n: int) -> bytes:
        data = self._session.take(self._stream_id, n)
        if data:
            self._proto.flush()  # return flow-control credit promptly
        return data

    def _unread(self, data: bytes) -> None:
        """Put ``data``, taken by a read that did not complete (cancelled, or failed),
        back in front of the stream, for the next read (consuming nothing, as asyncio's
        reads). Its flow-control credit stays given: the stream's buffer counts it as
        credited, so no later take, sink or close returns it again (twice given, each
        wait_for(readexactly(n), t) that timed out would let the peer send that much again
        beyond the window). Not into a stream closed here meanwhile (a task cancelled,
        then its writer closed, before it ran): its reads give b"" from then on, and
        the bytes would come back after the close."""
        buf = self._session.streams.get(self._stream_id)
        if buf is not None and buf.discarded:
            return
        self._session.unread(self._stream_id, data)

    def _buffer(self) -> bytearray:
        buf = self._session.streams.get(self._stream_id)
        return buf.data if buf is not None else bytearray()

    def _ended(self) -> bool:
        """No more bytes will arrive (some may still be buffered)."""
        session = self._session
        buf = session.streams.get(self._stream_id)
        if buf is None:
            # (closed here and forgotten by the connection: its buffer went with it)
            return session.terminated is not None or session.conn.stream_ended(self._stream_id)
        return buf.eof or buf.discarded or session.terminated is not None

    def at_eof(self) -> bool:
        """True when the peer half-closed (or, on the first stream, closed the
        connection cleanly) and everything was read. False after a stream reset, a
        failed connection (the peer killed) or the peer's clean close of the connection
        before this stream ended, as asyncio's after the connection's exception: the
        next read raises it, rather than a ``while not reader.at_eof()`` loop ending as
        if all had come."""
        if self._buffer():
            return False
        return self._ended() and self._failure() is None

    async def _wait_readable(self, name: str) -> None:
        if self._session.readable(self._stream_id):
            return
        self._claim_wait(name)
        try:
            await self._proto.wait_for(lambda: self._session.readable(self._stream_id))
        finally:
            self._waiting = None

    def _claim_wait(self, name: str) -> None:
        """As asyncio's: one read at a time may wait for bytes (two, in two tasks, each
        took a share of what arrived, interleaved)."""
        if self._waiting is not None:
            raise RuntimeError(
                f"{name}() called while another coroutine is already waiting for incoming data"
            )
        self._waiting = name

    async def read(self, n: int = -1) -> bytes:
        """Up to ``n`` bytes (all until end of stream when ``n`` < 0); b"" at EOF.

        Once the buffered bytes are read, a stream that did not end cleanly raises:
        StreamReset (the peer reset it), the connection's error (it failed), or
        ConnectionClosed when the peer closed the connection cleanly before this stream
        ended (see :meth:`Session.cut_short <dtp._session.Session.cut_short>`; not on the
        connection's first stream, whose reads end at b"" then, as a TCP connection's).
        ``read(n)`` returns what is buffered first and raises only on the read after.
        A read of all (``n`` < 0) raises at once instead, and consumes nothing: the
        bytes it gathered, the whole of what came before the reset, the failure or the
        cut, stay buffered for a later ``read(n)`` (asyncio's loses them); the same when
        it is cancelled (``asyncio.wait_for`` timing out). A size that is not an integer
        raises TypeError at once (asyncio's: for 1.5, once bytes came)."""
        n = operator.index(n)
        if n == 0:
            return b""
        if n < 0:
            chunks: list[bytes] = []
            try:
                while True:
                    await self._wait_readable("read")
                    chunk = self._take(1 << 30)
                    if not chunk:
                        return b"".join(chunks)
                    chunks.append(chunk)
            except BaseException:
                # cancelled (asyncio.wait_for timing out), or the stream reset / the
                # connection failed: what was taken goes back in front of the stream,
                # for the next read (dropped, it would be lost)
                self._unread(b"".join(chunks))
                raise
        if not self._session.readable(self._stream_id):
            await self._wait_readable("read")
        return self._take(n)

    async def readexactly(self, n: int) -> bytes:
        """Exactly ``n`` bytes, or IncompleteReadError at end of stream (the stream's
        reset, the connection's failure or the peer's clean close of the connection
        before the stream ended raises its typed error -- StreamReset, the connection's
        error, ConnectionClosed -- as asyncio's raises the connection's exception). That
        error, or a cancel, consumes nothing: fewer than ``n`` bytes came, and they stay
        buffered for a later ``read(n)``, as after :meth:`read`'s. A size that is not an
        integer raises TypeError at once (asyncio's: for 1.5, once bytes came)."""
        n = operator.index(n)
        if n < 0:
            raise ValueError("readexactly size can not be less than zero")
        if n == 0:
            return b""  # (as asyncio's: at once, whatever the stream's state)
        if len(self._buffer()) >= n:
            return self._take(n)
        return await self._gather(n)

    async def _gather(self, n: int) -> bytes:
        """:meth:`readexactly` once fewer than ``n`` bytes are buffered. What arrives is
        taken at once, not left buffered until ``n`` are there: the peer sends only a
        flow-control window (4 MiB; 256 KiB over the ledger) ahead of what was taken,
        so a larger ``n`` would never be reached."""
        chunks: list[bytes] = []
        need = n
        while True:
            try:
                await self._wait_readable("readexactly")
            except BaseException:
                # a cancelled read (e.g. by asyncio.wait_for) consumes nothing, as
                # asyncio's: what was gathered goes back in front of the stream. So does
                # one refused (RuntimeError) because another task's read waits: it took
                # what was buffered before it had to wait (dropped, those bytes are lost)
                self._unread(b"".join(chunks))
                raise
            if self._buffer():
                chunk = self._take(need)
                chunks.append(chunk)
                need -= len(chunk)
                if not need:
                    return b"".join(chunks)
                continue
            failure = self._failure()
            if failure is not None:
                # a stream reset, or the connection failed (the peer was killed): its
                # typed error, not the IncompleteReadError of a clean end, and, as
                # asyncio's, nothing consumed
                self._unread(b"".join(chunks))
                raise failure
            raise asyncio.IncompleteReadError(b"".join(chunks), n)

    def _failure(self) -> BaseException | None:
        """Why a read that cannot complete fails, when it is not the clean end of the
        stream: the peer's reset of it, the connection's failure before the stream
        ended, or the peer's clean close of the connection before it ended (None at a
        clean end, or while the stream goes on)."""
        buf = self._session.streams.get(self._stream_id)
        if buf is not None and buf.discarded:
            return None  # closed here: reads end, as take() says, whatever the peer did
        if buf is not None and buf.reset_code is not None:
            return StreamReset(self._stream_id, buf.reset_code)
        if buf is not None and buf.eof:
            return None
        if self._session.terminated is not None:
            # (the peer's clean close of the connection cut this stream short: not its
            # end, see Session.cut_short)
            return self._session.error or self._session.cut_short(self._stream_id)
        return None

    def exception(self) -> BaseException | None:
        """The error reads raise once what is buffered is read: the peer's reset of the
        stream or the connection's failure (None while the stream goes on, or after a
        clean end), as :meth:`asyncio.StreamReader.exception`. (Unlike asyncio's, the
        bytes that came before it are read first.)"""
        return self._failure()

    def _reset_or_failed(self) -> bool:
        buf = self._session.streams.get(self._stream_id)
        return (buf is not None and buf.reset_code is not None) or (
            self._session.terminated is not None
        )

    async def readuntil(self, separator: bytes = b"\n") -> bytes:
        """Bytes up to and including ``separator``; IncompleteReadError at EOF,
        LimitOverrunError past the limit (64 KiB unless open_connection / start_server
        was given another) without it (as asyncio); a reset stream, a failed connection
        or the peer's clean close of the connection before the stream ended raises its
        typed error (StreamReset, the connection's error, ConnectionClosed) once no
        separator is buffered. Those errors, a cancel and LimitOverrunError consume
        nothing: what is buffered stays for a later read, as after :meth:`read`'s."""
        if not len(separator):  # (TypeError for None, as asyncio's)
            raise ValueError("separator should be at least one-byte string")
        start = 0
        limit = self._proto.limit
        while True:
            buf = self._buffer()
            index = buf.find(separator, start)
            if index >= 0:
                # as asyncio's: the limit is on what comes before the separator
                if index > limit:
                    raise asyncio.LimitOverrunError("separator found past the limit", index)
                return self._take(index + len(separator))
            if len(buf) + 1 - len(separator) > limit:
                raise asyncio.LimitOverrunError(
                    "separator not found within the limit", len(buf) + 1 - len(separator)
                )
            if self._ended() or self._reset_or_failed():
                failure = self._failure()
                if failure is not None:
                    raise failure  # (consuming nothing, as asyncio's)
                raise asyncio.IncompleteReadError(self._take(len(buf)) if buf else b"", None)
            start = max(0, len(buf) - len(separator) + 1)
            # What is buffered stays (a cancelled or failing readuntil consumes nothing,
            # and a LimitOverrunError leaves it, as asyncio's), but its credit goes back
            # now: held until the separator came, the end of a line longer than the
            # stream's window would never arrive, the peer stopped at the window. The limit
            # bounds what this lets the peer send ahead (as asyncio's buffer).
            if self._session.credit_buffered(self._stream_id):
                self._proto.flush()
            self._claim_wait("readuntil")
            try:
                await self._proto.wait_change()
            finally:
                self._waiting = None

    async def readline(self) -> bytes:
        """A line including b"\\n", or what is left at EOF (a reset stream, a failed
        connection or the peer's clean close of the connection before the stream ended
        raises its typed error, as :meth:`readuntil`, the partial line kept for a later
        read). A line over 64 KiB raises ValueError and is discarded, as asyncio's: up
        to its b"\\n" when that has arrived, else what is buffered."""
        try:
            return await self.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            return exc.partial
        except asyncio.LimitOverrunError as exc:
            # keeping the line would raise on every later call: `async for line in
            # reader` could never get past it
            buf = self._buffer()
            self._take(exc.consumed + 1 if buf.startswith(b"\n", exc.consumed) else len(buf))
            raise ValueError(exc.args[0]) from exc

    def __aiter__(self) -> DTPStreamReader:
        return self

    async def __anext__(self) -> bytes:
        line = await self.readline()
        if not line:
            raise StopAsyncIteration
        return line


class DTPStreamWriter:
    """Writes one stream; the :class:`asyncio.StreamWriter` interface."""

    def __init__(self, proto: _Protocol, stream_id: int, primary: bool) -> None:
        self._proto = proto
        self._owner = proto.owner()
        self._session = proto.session
        self._conn = proto.conn
        self._stream_id = stream_id
        self._primary = primary
        self._closing = False
        self._eof_sent = False
        # the code close() asks the peer to stop sending with (reset()'s, else 0)
        self._stop_code = 0
        self._close_task: asyncio.Future[None] | None = None
        self.connection_id: str | None = None
        """The ledger connection (TransportControl) ID when connected by host ID."""
        self.escrow_id: str | None = None

    @property
    def stream_id(self) -> int:
        return self._stream_id

    @property
    def peer_address(self) -> str | None:
        """On a server: the client's verified Sui address."""
        return self._conn.peer_address

    async def top_up(self, amount: int) -> None:
        """As :meth:`dtp.socket.DTPSocket.top_up`: add ``amount`` MIST to the deposit of
        this paid connection while it is open (the ledger transaction runs in a thread),
        then sign receipts up to the new deposit. Cancelling the wait does not cancel
        a transaction under way: once it lands, the receipts are signed all the same
        (the deposit is on the ledger either way)."""
        proto = self._proto
        payment = proto.payment
        if payment is None:
            raise LocalProtocolError(
                "top_up: not a paid connection (connect by host ID with a deposit)"
            )
        if proto.session.terminated is not None:
            raise proto.session.error or ConnectionClosed("the connection is closed")

        def landed(job: asyncio.Future[None]) -> None:
            # (a callback, not code after the await: a caller cancelled while the
            # transaction ran would leave the deposit raised and the meter not)
            if job.cancelled() or job.exception() is not None:
                return
            payment.topped_up(amount)
            proto.flush()

        job = asyncio.ensure_future(asyncio.to_thread(payment.top_up_on_ledger, amount))
        job.add_done_callback(landed)
        await asyncio.shield(job)

    @property
    def peer_connection_id(self) -> str | None:
        """On a server: the ledger connection ID the client named in its handshake."""
        cid = self._conn.peer_connection_id
        return None if cid is None else "0x" + cid.hex()

    @property
    def peer_port(self) -> int | None:
        """On a server: the DTP port the client named in its handshake."""
        return self._conn.peer_port

    @property
    def transport(self) -> asyncio.Transport | None:
        """The carrier's transport (TCP, or the ledger bridge's socket pair), shared by
        every stream of the connection and carrying its sealed records, not this
        stream's bytes: for ``get_extra_info``, ``is_closing()``, buffer sizes; bytes
        written to it directly break the connection (use :meth:`write`)."""
        return self._proto.transport

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """``peer_address``, ``peer_static_key``, ``handshake_hash`` or any carrier
        transport extra (``peername``, ``sockname``, ``socket``). Over the ledger
        carrier ``peername`` is ``("ledger", "<connection id>")``, as the blocking
        API's ``getpeername()``. ``default`` when the value is unset (a client that did
        not authenticate has no ``peer_address``), as a transport's for a missing
        key."""
        extras = {
            "peer_address": self._conn.peer_address,
            "peer_static_key": self._conn.peer_static,
            "peer_connection_id": self.peer_connection_id,
            "peer_port": self._conn.peer_port,
            "handshake_hash": self._conn.handshake_hash,
            "stream_id": self._stream_id,
        }
        if name in extras:
            value = extras[name]
            return default if value is None else value
        if name == "peername" and self._proto.peername is not None:
            return self._proto.peername
        transport = self._proto.transport
        return transport.get_extra_info(name, default) if transport else default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue bytes (call :meth:`drain` to wait for room). Anything bytes-like is
        taken (an ``array('i')``: its bytes, as a socket sends them); what is not raises
        TypeError -- a strided view BufferError, as a socket's send() -- in any state,
        before anything is queued (asyncio's transport failed the connection then)."""
        view = _readable(data)
        if self._closing or self._eof_sent:
            raise LocalProtocolError("write on a closed or half-closed DTP stream")
        self._session.check_writable(self._stream_id)
        if view:
            proto = self._proto
            transport = proto.transport
            if transport is not None and not transport.is_closing():
                # the lane: sealed straight from the caller's bytes into records that
                # go to the transport at once; what it cannot send now it keeps
                while view:
                    sealed = self._conn.seal_fast(self._stream_id, view, proto.loop.time())
                    if sealed is None:
                        break
                    transport.write(sealed[0])
                    if transport.get_write_buffer_size() and _keeps_views(transport):
                        self._conn.sealed_kept()
                    view = view[sealed[1] :]
                if not view:
                    proto.flush()  # the meter, control frames, timers
                    return
            # no defensive copy: the connection seals the bytes now or copies them
            self._conn.send_stream_data(self._stream_id, view)
            proto.flush()

    def writelines(self, lines: Any) -> None:
        self.write(b"".join(lines))

    def can_write_eof(self) -> bool:
        return True

    async def start_tls(
        self,
        sslcontext: Any,
        *,
        server_hostname: str | None = None,
        ssl_handshake_timeout: float | None = None,
    ) -> None:
        """Not for DTP: a DTP stream is end-to-end encrypted (Noise) from the start, and
        TLS cannot be layered on a stream of a connection. Raises LocalProtocolError
        (asyncio's StreamWriter upgrades its TCP connection here)."""
        raise LocalProtocolError(
            "start_tls() does not apply to a DTP stream: it is end-to-end encrypted already"
        )

    def write_eof(self) -> None:
        """Half-close: the peer reads EOF after what was written (nothing to do once
        closed, as asyncio's)."""
        if self._eof_sent or self._closing or self._session.terminated is not None:
            return
        self._eof_sent = True
        self._conn.send_stream_data(self._stream_id, b"", end_stream=True)
        self._proto.flush()

    def is_closing(self) -> bool:
        return self._closing or self._session.terminated is not None

    def get_write_buffer_size(self) -> int:
        """Bytes written to this stream and not sent yet (held by flow control), as
        asyncio's ``WriteTransport.get_write_buffer_size``."""
        return self._conn.send_buffered(self._stream_id)

    async def drain(self) -> None:
        """Wait until the queue is below the high-water mark (raises if the
        connection failed, or closed with bytes written here left unsent, and
        StreamReset once the peer stopped reading this stream). After a close here
        (this writer's close(), reset() or abort(), or the connection's close) it
        raises ConnectionClosed at once, as asyncio's raises ConnectionResetError once
        the connection is lost: nothing more can be written, and what is queued is
        waited for by :meth:`wait_closed`, not here (a write_eof() is no close: drain()
        after it waits as before). A drain() already waiting when the close comes raises
        then too."""

        def room() -> bool:
            # (a close here ends the wait: what is queued is wait_closed()'s to wait for,
            # and a peer not reading would hold a writing task's drain() for good, or for
            # the first stream's CLOSE_LINGER)
            return (
                self._closing
                or self._session.terminated is not None
                or (
                    not self._proto.write_paused
                    and self._conn.send_buffered(self._stream_id) < SEND_HIGH_WATER
                )
            )

        if not self._closing:
            await self._proto.wait_for(room)
        session = self._session
        buf = session.streams.get(self._stream_id)
        if buf is not None and buf.send_stopped is not None:
            # the peer stopped reading this stream: what was unsent is dropped, and the
            # next write() raises; drain() returned as if it had all gone out
            raise StreamReset(self._stream_id, buf.send_stopped)
        if session.terminated is not None:
            if session.error is not None:
                raise session.error
            if self._conn.send_buffered(self._stream_id):
                # a clean close by the peer, with bytes written here never sent: not a
                # success (as asyncio's drain() raises once the connection is lost, and
                # the blocking sendall() raises)
                raise ConnectionClosed("the connection closed before all that was written went out")
            if not session.terminated.by_peer:
                # (closed here: by the first stream's close(), or the server once its
                # callback returned)
                raise ConnectionClosed("the connection was closed here")
        if self._closing:
            raise ConnectionClosed("the stream was closed here")

    def close(self) -> None:
        """Close this stream, both ways (its reader gives b"" from now on: call
        :meth:`write_eof` to half-close instead); on the first stream, close the whole
        connection once queued data has left."""
        if self._closing:
            return
        self._closing = True
        if self._session.terminated is not None:
            payment = self._proto.payment
            if self._primary and payment is not None:  # the peer closed first
                self._close_task = asyncio.ensure_future(asyncio.to_thread(payment.finish))
            return
        if self._primary:
            task = asyncio.ensure_future(self._close_connection())
            task.add_done_callback(self._close_ended)
            self._close_task = task
            self._proto._notify()  # (a drain() waiting raises now: see there)
        else:
            with contextlib.suppress(DTPError):
                if not self._eof_sent:
                    self._conn.send_stream_data(self._stream_id, b"", end_stream=True)
            # Closed both ways, as asyncio's close() and the blocking API's: the peer is
            # asked to stop sending, and what is unread (and what comes before it stops)
            # is dropped, its flow-control credit returned; reads give b"". Kept, it would
            # be held for good: two such streams would stall every other stream.
            session = self._session
            buf = session.streams.get(self._stream_id)
            if not (buf is not None and (buf.eof or buf.reset_code is not None)):
                with contextlib.suppress(DTPError):
                    self._conn.stop_sending(self._stream_id, self._stop_code)
            session.discard(self._stream_id)
            # its buffer goes once the connection is done with the stream too (as the
            # blocking API's): kept, a connection carrying many short streams (the
            # daemon's tunnels) would hold one for each, for good
            session.forget(self._stream_id)
            self._proto._notify()
            self._proto.flush()

    def reset(self, code: int = 0) -> None:
        """Abandon this stream, as a TCP reset does: what is unsent is dropped and the
        peer's reads raise :class:`~dtp.errors.StreamReset` with ``code`` (an
        application error code, 0 to 2**62 - 1) instead of seeing a clean end; then the
        stream closes both ways, as :meth:`close` (on the first stream, the connection
        with it)."""
        if not isinstance(code, int) or isinstance(code, bool) or not 0 <= code < 1 << 62:
            raise ValueError(f"a reset code is an int from 0 to 2**62 - 1, not {code!r}")
        if self._closing:
            return
        if self._session.terminated is None:
            with contextlib.suppress(DTPError):  # (the stream ended already)
                self._conn.reset_stream(self._stream_id, code)
            self._proto.flush()
        self._stop_code = code  # the peer's sends raise StreamReset(code) too
        self.close()

    def _close_ended(self, task: asyncio.Future[None]) -> None:
        """The graceful close was cancelled (the loop ending, as asyncio.run does after
        ``close()`` without ``wait_closed()``), perhaps before its first step: abort
        instead, so the transport is not left open (asyncio's ``close()`` closes it at
        once). A metered connection's final receipt goes out first, as in the graceful
        close (else the server would be left unpaid for the usage since the last
        receipt: a ``close()`` without ``wait_closed()`` at the end of ``asyncio.run``
        would pay nothing of it)."""
        if task.cancelled():
            payment = self._proto.payment
            if payment is not None:
                payment.closing()
            if self._conn.send_buffered():
                # what was written is cut short: the peer must not read a clean end
                _abort(self._proto, CloseCode.APPLICATION, UNSENT)
            else:
                _abort(self._proto, CloseCode.NO_ERROR, "")

    async def _close_connection(self) -> None:
        conn = self._conn
        if conn.config.reliable_carrier:
            # (asyncio.timeout, not wait_for: see below)
            with contextlib.suppress(TimeoutError, DTPError):
                async with asyncio.timeout(CLOSE_LINGER):
                    await self._proto.wait_for(
                        lambda: conn.send_buffered() == 0 or self._session.terminated is not None
                    )
        else:
            # over a lossy carrier (the ledger) data has left only once acknowledged, and
            # an ACK is no event: look again every 50 ms, for up to 30 s. (asyncio.timeout,
            # not wait_for: on Python 3.11 wait_for swallows a cancel that comes as a
            # change does, and the close would go on for those 30 s, the loop's end with it.)
            deadline = self._proto.loop.time() + 30.0
            while self._session.terminated is None and (
                conn.send_buffered() or conn.awaiting_acks()
            ):
                if self._proto.loop.time() >= deadline:
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await self._proto.wait_change()
        payment = self._proto.payment
        if payment is not None:
            payment.closing()  # the final receipt goes out before CLOSE, in the same write
        if payment is None and conn.send_buffered() and self._session.terminated is None:
            # the linger ran out with bytes never sent: the peer must read an error, not
            # the clean end of a stream cut short (a paid connection keeps its clean
            # CLOSE: the server settles before its end closes only after one)
            conn.close(CloseCode.APPLICATION, UNSENT)
        else:
            conn.close(CloseCode.NO_ERROR, "")
        self._proto.flush()
        if payment is not None:
            # a paid server closes its end once it settled: then the payment finds
            # nothing to do on the ledger (as the blocking socket's drain)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PAID_CLOSE_WAIT):
                    await asyncio.shield(self._proto.closed_future)
        self._proto.close_carrier()
        # until the carrier is closed (the peer closed its side, or CARRIER_DRAIN): a
        # loop ending meanwhile cancels this task, and the cancel closes it at once
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CARRIER_DRAIN + CARRIER_GRACE):
                await asyncio.shield(self._proto.closed_future)
        if payment is not None:
            await asyncio.to_thread(payment.finish)  # half-close on the ledger, if needed

    async def wait_closed(self) -> None:
        """Wait until the connection is fully closed (first stream) or until this
        stream's queued data has been handed on. (On another stream, unlike asyncio's,
        it does not wait for a close: not closed, it returns once what was written went
        out; closed, while a peer that stopped reading holds that back, it waits as
        asyncio's does for a transport that cannot flush.)"""
        if self._primary:
            # shielded: a cancelled wait (asyncio.wait_for) must not cancel the shared
            # future (every later wait_closed() raised CancelledError) or the close
            await asyncio.shield(self._proto.closed_future)
            if self._close_task is not None:
                await asyncio.shield(self._close_task)
        else:
            await self._proto.wait_for(
                lambda: (
                    self._conn.send_buffered(self._stream_id) == 0
                    or self._session.terminated is not None
                )
            )

    def abort(self, reason: str = "aborted") -> None:
        """Close the whole connection at once, dropping queued data. Reads and drain()
        raise ConnectionClosed from now on (as asyncio's drain() raises once the
        transport was aborted)."""
        was_closing, self._closing = self._closing, True
        self._conn.close(CloseCode.APPLICATION, reason)
        self._proto.flush()
        # the end is known now, not only once the transport reports it lost: a drain()
        # right after returned as if all had gone out
        self._session.process_events()
        self._proto._notify()
        self._proto.close_carrier()
        payment = self._proto.payment
        if self._primary and payment is not None and not was_closing:
            # the ledger half-close, as the blocking API's abort() (and close()) does: else
            # the ledger connection stays Open, the half-close timeout never starts, and
            # the deposit stays locked until the client settles by hand. wait_closed()
            # waits for it.
            self._close_task = asyncio.ensure_future(asyncio.to_thread(payment.finish))

    def send_datagram(self, data: bytes | bytearray | memoryview) -> None:
        """Send one unreliable datagram on the connection (see
        :meth:`dtp.socket.DTPSocket.send_datagram`). Never waits: while the transport
        holds more than ``dtp.protocol.connection.DATAGRAM_SEND_BACKLOG`` unsent bytes (the peer
        is stalled or slow) it is dropped and counted in
        :attr:`datagrams_send_dropped`."""
        session = self._session
        if session.terminated is not None:
            raise session.error or ConnectionClosed("the connection is closed")
        transport = self._proto.transport
        backlog = 0 if transport is None else transport.get_write_buffer_size()
        if self._conn.send_datagram(data, backlog):
            self._proto.flush()

    def send_datagrams(self, datagrams: Iterable[bytes | bytearray | memoryview]) -> int:
        """:meth:`send_datagram` for many at once (sealed and written together; when one
        of them is not bytes-like or too large, none is sent). Returns how many went
        out: the first ones (the rest did not fit the backlog, and were counted)."""
        session = self._session
        if session.terminated is not None:
            raise session.error or ConnectionClosed("the connection is closed")
        transport = self._proto.transport
        backlog = 0 if transport is None else transport.get_write_buffer_size()
        sent = self._conn.send_datagrams(datagrams, backlog)
        if sent:
            self._proto.flush()
        return sent

    @property
    def max_datagram_size(self) -> int:
        """The largest datagram :meth:`send_datagram` takes (over the ledger carrier,
        less than the config's ``max_datagram_size``: a datagram fits one record)."""
        return self._conn.max_datagram_size

    @property
    def datagrams_send_dropped(self) -> int:
        """Datagrams :meth:`send_datagram` / :meth:`send_datagrams` dropped because the
        carrier was backed up (for the whole connection)."""
        return self._conn.datagrams_send_dropped

    @property
    def datagrams_dropped(self) -> int:
        """Datagrams that arrived but were dropped because they were not read in time
        (the connection keeps the newest 1024)."""
        return self._session.datagrams_dropped

    def set_datagram_sink(self, sink: Callable[[bytes], None] | None) -> None:
        """Have the connection's datagrams pushed to ``sink`` as they arrive (those
        already queued first) instead of read with :meth:`recv_datagram`; None undoes
        it. For relays: no task wake-up per datagram."""
        session = self._session
        session.datagram_sink = sink
        if sink is not None:
            self._proto.pinned = self._owner  # its consumer may hold no reader or writer
            while session.datagrams:
                sink(session.datagrams.popleft())

    async def recv_datagram(self) -> bytes:
        """The connection's next datagram."""
        session = self._session
        if not session.datagrams:
            await self._proto.wait_for(
                lambda: bool(session.datagrams) or session.terminated is not None
            )
        if not session.datagrams:
            raise session.error or ConnectionClosed("the connection is closed")
        return session.datagrams.popleft()

    async def open_stream(self) -> tuple[DTPStreamReader, DTPStreamWriter]:
        """Open another stream on this connection; at the peer's stream limit, wait
        until it allows another (one of ours finished), as a connect waits for the
        listener's backlog. Raises the connection's error if it ends first."""
        session = self._session
        conn = self._conn
        session.check_writable(self._stream_id)
        if not conn.can_open_stream():
            proto = self._proto
            proto.stream_slot_waiters += 1
            try:
                await proto.wait_for(
                    lambda: session.terminated is not None or conn.can_open_stream()
                )
            finally:
                proto.stream_slot_waiters -= 1
            session.check_writable(self._stream_id)
        stream_id = conn.open_stream()
        self._proto.flush()
        return DTPStreamReader(self._proto, stream_id), DTPStreamWriter(
            self._proto, stream_id, primary=False
        )

    async def accept_stream(self) -> tuple[DTPStreamReader, DTPStreamWriter]:
        """Wait for the peer to open a stream."""
        session = self._session

        def ready() -> bool:
            while session.incoming_streams and session.incoming_streams[0] == 0:
                session.incoming_streams.popleft()
            return bool(session.incoming_streams) or session.terminated is not None

        await self._proto.wait_for(ready)
        if not session.incoming_streams:
            raise session.error or ConnectionClosed("the connection is closed")
        stream_id = session.incoming_streams.popleft()
        return DTPStreamReader(self._proto, stream_id), DTPStreamWriter(
            self._proto, stream_id, primary=False
        )

    def __repr__(self) -> str:
        return f"<DTPStreamWriter stream={self._stream_id} peer={self.get_extra_info('peername')}>"


async def open_connection(
    host: str | HostAddress,
    port: int | None = None,
    *,
    server_key: bytes | None = None,
    expected_server_key: bytes | None = None,
    identity: HostIdentity | None = None,
    config: ConnectionConfig | None = None,
    timeout: float | None = None,
    ledger: Ledger | None = None,
    deposit: int | None = None,
    cap_id: str | None = None,
    carrier: CarrierChoice = "auto",
    ledger_options: LedgerCarrierOptions | None = None,
    metering: MeteringConfig | None = None,
    subscription: str | None = None,
    sponsor_pool: str | None = None,
    limit: int = _LIMIT,
) -> tuple[DTPStreamReader, DTPStreamWriter]:
    """Connect and return the first stream's (reader, writer).

    Arguments as :func:`dtp.socket.create_connection`: ``host`` and ``port`` name the
    carrier endpoint, or ``host`` is a DTP address (``"dtp://0x<host id>:<port>"`` or a
    :class:`~dtp.address.HostAddress`, ``port`` omitted) reached through ``ledger`` with
    ``identity`` paying ``deposit``; the ledger calls run in a worker thread. The
    writer's ``connection_id`` / ``escrow_id`` name the ledger connection then; a host
    without a TCP endpoint (or ``carrier="ledger"``) is reached over the ledger carrier,
    as with the blocking API. Raises
    ConnectionRefused, HandshakeError or DTPTimeoutError as the blocking API does.
    A connection by host ID is metered as with the blocking API (``metering``), and may
    pay with a ``subscription`` or through a ``sponsor_pool`` as there.

    ``timeout`` bounds the carrier connect and the handshake; left out it is None (no
    bound), as asyncio's own connects have none: :func:`socket.getdefaulttimeout`, which
    the blocking API takes then, is for blocking sockets (wrap the call in
    :func:`asyncio.timeout` for an overall bound).

    ``limit``: the line limit of the connection's readers (readline, readuntil), as
    :func:`asyncio.open_connection`'s (64 KiB).
    """
    check_connect_timeout(timeout)
    _check_limit(limit)
    if port is None:
        address = HostAddress.parse(host) if isinstance(host, str) else host
        if ledger is None or identity is None:
            raise ValueError("connecting to a DTP address needs ledger=... and identity=...")
        reader, writer = await _open_by_host_id(
            address,
            ledger,
            identity,
            timeout,
            server_key=pinned_host_key(server_key, expected_server_key),
            config=config,
            deposit=deposit,
            cap_id=cap_id,
            carrier=carrier,
            ledger_options=ledger_options,
            metering=metering,
            subscription=subscription,
            sponsor_pool=sponsor_pool,
        )
        writer._proto.limit = limit
        return reader, writer
    if (
        isinstance(host, HostAddress)
        or ledger is not None
        or deposit is not None
        or cap_id
        or carrier == "ledger"
        or ledger_options is not None
        or subscription is not None
        or sponsor_pool is not None
    ):
        raise ValueError("ledger, deposit, cap_id and the ledger carrier need a DTP address")
    if metering is not None:
        raise ValueError("metering applies only to a DTP address (dtp://…)")
    cfg, _ = direct_client_config(
        config, identity, server_key, expected_server_key, HostIdentity.generate
    )
    reader, writer = await _open(host, port, cfg, timeout)
    writer._proto.limit = limit
    return reader, writer


def _keeps_views(transport: asyncio.BaseTransport) -> bool:
    """Whether ``transport`` may keep the buffer it was given to write rather than copy
    what it could not send at once: asyncio's socket transports do from Python 3.12;
    before, they copied (the stdlib's, that is: any other is taken to keep it)."""
    return _VIEWS_KEPT or type(transport).__module__ != "asyncio.selector_events"


_VIEWS_KEPT = sys.version_info >= (3, 12)


def _check_limit(limit: int) -> None:
    if limit <= 0:
        raise ValueError("Limit cannot be <= 0")  # (asyncio.StreamReader's words)


async def _open_by_host_id(
    address: HostAddress,
    ledger: Ledger,
    identity: HostIdentity,
    timeout: float | None,
    *,
    server_key: bytes | None,
    config: ConnectionConfig | None,
    deposit: int | None,
    cap_id: str | None,
    carrier: CarrierChoice,
    ledger_options: LedgerCarrierOptions | None,
    metering: MeteringConfig | None,
    subscription: str | None,
    sponsor_pool: str | None,
) -> tuple[DTPStreamReader, DTPStreamWriter]:
    """open_connection for a DTP address, overlapping as dtp.socket does: the TCP
    connect starts as soon as the service is resolved (while the open is signed), and
    the open executes while the server works on the first handshake message."""
    # The preparation may open the connection on the ledger (paying by subscription or
    # sponsor pool, or over the ledger carrier), in a worker thread, which a cancelled
    # connect cannot stop: what it opened for a connect cancelled meanwhile is abandoned
    # (half-closed, so the deposit comes back), by the thread itself or, when the
    # result was ready but not yet taken, by another.
    check_connect_options(metering, ledger_options)
    handover = threading.Lock()
    taken: list[tuple[PreparedConnection, PendingTcp | None]] = []
    cancelled = False

    def prepare() -> tuple[PreparedConnection, PendingTcp | None]:
        result = prepare_connecting_early(
            ledger,
            address,
            identity,
            deposit=deposit,
            cap_id=cap_id,
            server_key=server_key,
            config=config,
            carrier=carrier,
            subscription=subscription,
            sponsor_pool=sponsor_pool,
        )
        with handover:
            if not cancelled:
                taken.append(result)
                return result
        _abandon_prepared(ledger, identity, address, result)
        return result

    try:
        prepared, early = await asyncio.to_thread(prepare)
    except asyncio.CancelledError:
        with handover:
            cancelled = True
            left = list(taken)
        for result in left:  # ready, but the cancel came before we took it
            threading.Thread(
                target=_abandon_prepared, args=(ledger, identity, address, result)
            ).start()
        raise
    pending_open = prepared.pending_open
    # the open runs in a worker thread, which a cancelled connect cannot stop: a failed
    # connect waits for it before it decides what to half-close
    landing: asyncio.Future[OpenedConnection] | None = None
    payments: list[ClientPayment] = []

    async def while_waiting(proto: _Protocol) -> None:
        nonlocal landing
        opened = prepared.opened
        if pending_open is not None:
            landing = asyncio.ensure_future(asyncio.to_thread(pending_open.execute))
            opened = await asyncio.shield(landing)
        if metering is None or metering.enabled:
            payments.append(
                await asyncio.to_thread(
                    ClientPayment,
                    ledger,
                    identity,
                    address.host_id,
                    prepared.connection_id,
                    proto.conn,
                    metering,
                    now=proto.loop.time(),
                    opened=opened,
                )
            )

    try:
        if prepared.endpoint is None:
            bridge = await _threaded_or_released(
                lambda: connect_ledger_carrier(
                    ledger,
                    identity,
                    prepared.connection_id,
                    prepared.server_address,
                    ledger_options,
                ),
                lambda bridge: bridge.socket.close(),  # (its thread ends with its socket)
            )
            reader, writer = await _open(
                *bridge.peername,
                prepared.config,
                timeout,
                sock=bridge.socket,
                while_waiting=while_waiting,
            )
            writer._proto.peername = bridge.peername
        else:
            # the host's endpoints in turn until one answers (each with the timeout)
            pending_tcp = early
            tcp, reached = await _threaded_or_released(
                lambda: connect_any(pending_tcp, prepared.endpoints, timeout),
                lambda made: made[0].close(),
            )
            reader, writer = await _open(
                *reached, prepared.config, timeout, sock=tcp, while_waiting=while_waiting
            )
    except BaseException as exc:
        if early is not None:
            early.close()
        if landing is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(landing)
        await asyncio.to_thread(abandon_host_connection, ledger, identity, address, prepared, exc)
        raise
    writer.connection_id = prepared.connection_id
    writer.escrow_id = prepared.escrow_id
    if payments:
        proto = writer._proto
        proto.payment = payments[0]
        proto.session.on_receipt = payments[0].on_server_receipt
    return reader, writer


async def _threaded_or_released(make: Callable[[], T], release: Callable[[T], None]) -> T:
    """``make()`` in a worker thread, which a cancelled await cannot stop: cancelled
    meanwhile, what it makes is released once it is there (a ledger bridge's thread and
    socket pair, a connected TCP socket: else they leak, the thread running on)."""
    job = asyncio.ensure_future(asyncio.to_thread(make))
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:

        def made(job: asyncio.Future[T]) -> None:
            if not job.cancelled() and job.exception() is None:
                release(job.result())

        job.add_done_callback(made)
        raise


def _abandon_prepared(
    ledger: Ledger,
    identity: HostIdentity,
    address: HostAddress,
    result: tuple[PreparedConnection, PendingTcp | None],
) -> None:
    """Abandon what :func:`prepare_connecting_early` made for a connect cancelled while
    it ran: its early TCP connect, and the connection if it opened one."""
    prepared, early = result
    if early is not None:
        early.close()
    abandon_host_connection(
        ledger, identity, address, prepared, asyncio.CancelledError("the connect was cancelled")
    )


async def _open(
    host: str,
    port: Any,
    cfg: ConnectionConfig,
    timeout: float | None,
    sock: socket.socket | None = None,
    *,
    while_waiting: Callable[[_Protocol], Awaitable[None]] | None = None,
) -> tuple[DTPStreamReader, DTPStreamWriter]:
    """Carrier connect + handshake + acceptance with a ready client config; with
    ``sock`` (a connected socket, e.g. a ledger bridge's), over that instead of TCP.
    ``while_waiting(protocol)`` runs once the first handshake message is out, while the
    server works on it; what it raises fails the connect."""
    loop = asyncio.get_running_loop()
    session = Session(bounded_by_caller(cfg, timeout), now=loop.time())
    proto = _Protocol(session, loop)

    async def establish() -> None:
        try:
            if sock is None:
                await loop.create_connection(lambda: proto, host, port)
            else:
                await loop.create_connection(lambda: proto, sock=sock)
        except OSError as exc:
            raise carrier_error(host, port, exc) from exc
        if while_waiting is not None:
            await while_waiting(proto)
        await proto.wait_for(
            lambda: session.conn.handshake_hash is not None or session.terminated is not None
        )
        if session.terminated is None:
            session.conn.open_stream()
            proto.flush()
            await proto.wait_for(lambda: session.accepted or session.terminated is not None)
        if not session.accepted:
            raise HandshakeError.for_client(session.error)

    # asyncio.timeout, not wait_for: on Python 3.11 wait_for returns the inner result
    # when a cancel comes as the handshake completes, so a cancelled open_connection
    # would return a live connection (the cancellation swallowed); here establish() runs
    # in the caller's task, which the cancel reaches directly.
    try:
        async with asyncio.timeout(timeout):
            await establish()
    except BaseException as exc:
        _abort(proto, CloseCode.HANDSHAKE_FAILED, "client gave up")
        if isinstance(exc, TimeoutError):
            if timeout is None:  # (a ledger call's, in while_waiting)
                raise DTPTimeoutError(f"connecting to {host}:{port} timed out") from None
            raise connect_timed_out(endpoint_text(host, port), timeout) from None
        raise
    return DTPStreamReader(proto, 0), DTPStreamWriter(proto, 0, primary=True)


def _peer_label(proto: _Protocol) -> Any:
    """Who is at the other end of ``proto``, for a log line: its ledger connection, or
    its TCP address."""
    if proto.peername is not None or proto.transport is None:
        return proto.peername
    return proto.transport.get_extra_info("peername")


def _abort(proto: _Protocol, code: int, reason: str) -> None:
    proto.conn.close(code, reason)
    proto.flush()
    proto.close_carrier(drain=False)


#: The ledger half-closes of abandoned metered connections (see _close_abandoned)
_FINISHING: set[asyncio.Task[None]] = set()


def _abandoned(ref: weakref.ref[_Protocol]) -> None:
    """The last reader and writer of a client connection were garbage-collected with the
    connection open: it is closed, as asyncio's ``StreamWriter.__del__`` closes its
    transport (nobody can use or close it, and keepalives hold off the idle timeout:
    it would stay open for good, as the peer's end). A finalizer runs wherever the garbage
    collector starts, perhaps inside a seal on this very loop: it only schedules."""
    proto = ref()
    if proto is None:
        return
    loop = proto.loop
    if proto.session.terminated is not None or loop.is_closed():
        return
    with contextlib.suppress(RuntimeError):  # (the loop closed meanwhile)
        loop.call_soon_threadsafe(_close_abandoned, proto)


def _close_abandoned(proto: _Protocol) -> None:
    """:func:`_abandoned`'s close, on the loop, at once (no task: the loop may be
    ending). What flow control still holds is cut short: the peer reads an error then,
    not a clean end. A metered connection pays its final receipt first and is
    half-closed on the ledger afterwards, as its writer's close() does (else it stays
    open for good, keepalives holding off the idle timeout, its deposit locked)."""
    if proto.session.terminated is not None or proto.conn.closed:
        return
    try:
        payment = proto.payment
        if payment is not None:
            payment.closing()  # the final receipt goes out before CLOSE, in the same write
            _abort(proto, CloseCode.NO_ERROR, "")
            task = proto.loop.create_task(asyncio.to_thread(payment.finish))
            _FINISHING.add(task)  # (held: a task only the loop refers to may be collected)
            task.add_done_callback(_FINISHING.discard)
            return
        if proto.conn.send_buffered():
            _abort(proto, CloseCode.APPLICATION, UNSENT)
        else:
            _abort(proto, CloseCode.NO_ERROR, "")
    except Exception as exc:
        # left to asyncio's log, it would stay open for good: nobody holds it to close
        # it, and its keepalives hold off the peer's idle timeout
        proto._fail(exc)


def _being_cancelled() -> bool:
    """Whether the current task was cancelled (``Task.cancelling``), rather than a
    CancelledError having come from something it awaited (a future cancelled
    elsewhere)."""
    task = asyncio.current_task()
    return task is None or task.cancelling() > 0


class _Arrival(asyncio.Protocol):
    """A server's new connection until its handshake starts (dtp.handshake_gate): it
    reads the client's first record, then waits for its handshake slots unread. It
    holds its socket and what the client sent -- no Session, task or timer -- and is the
    connection's entry in the server's :class:`~dtp.handshake_gate.Admission` for good
    (its handshake's end releases its slots by it). Once the handshake may start, the
    transport goes to the connection's :class:`_Protocol` (:meth:`DTPServer._begin`)."""

    def __init__(
        self, server: DTPServer, config: ConnectionConfig, by_address: bool, peername: Any = None
    ) -> None:
        self.server = server
        self.config = config
        #: capped by the client's address (TCP); else a ledger bridge, a local socket
        self.by_address = by_address
        self.peername = peername
        self.transport: asyncio.Transport | None = None
        self.reader = FirstMessage()
        self.key: str | None = None
        self.deadline = 0.0  # its accept plus its handshake timeout (monotonic)
        self.proto: _Protocol | None = None  # made as its handshake starts
        self.lost = False
        self.gave_way = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        try:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                from dtp.carriers.tcp import tune

                with contextlib.suppress(OSError):
                    tune(sock)
            self.server._arrived(self)
        except Exception:
            # (a server fault at a connection's start: closed, the server goes on)
            logger.exception("dtp: a new connection could not be taken in")
            transport.close()

    def data_received(self, data: bytes) -> None:
        progress = self.reader.feed(data)
        if progress is Progress.COMPLETE:
            assert self.transport is not None
            self.transport.pause_reading()  # (until its handshake starts)
            self.server._proven(self)
        elif progress is Progress.INVALID:
            self.server._not_dtp(self)

    def eof_received(self) -> bool | None:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.server._admission.dropped(self)


def _waiting_gone(arrival: _Arrival) -> bool:
    """Whether a connection waiting for a handshake slot was closed meanwhile."""
    return arrival.lost or arrival.transport is None or arrival.transport.is_closing()


class DTPServer:
    """A listening asyncio DTP server (see :func:`start_server`).

    New connections are admitted as :class:`dtp.socket.DTPServer` admits them, by the
    same engine (:class:`dtp.handshake_gate.Admission`, docs/protocol.md §8):

    * until it has sent its complete first handshake record, within
      ``first_message_timeout`` (3 s), a connection holds only its socket: at most
      ``backlog`` of them on the server and ``max_handshakes_per_address +
      max_waiting_per_address`` from one address, the oldest (of the address holding
      the most) closed to make room for a newcomer (counted in :attr:`unproven_closed`,
      as those that time out);
    * then it takes one of the ``max_handshakes`` (32) slots of the server and one of
      the ``max_handshakes_per_address`` (8) of its IP address (an IPv6 /64; None lifts
      that cap), or waits for them, unread, in a line of at most ``backlog`` (the
      server's) or ``max_waiting_per_address`` (its address's), in arrival order, until
      its accept plus its handshake timeout. A proven connection that has to wait makes
      the oldest *half-handshake* -- one waiting for its client's next message -- give
      way (closed, counted in :attr:`half_handshakes_evicted`), so clients that stopped
      midway cannot hold the slots against clients that speak;
    * one that finds a line full, or waited past its deadline, is closed with no DTP
      reply, counted in :attr:`busy_refused`.

    Connections over the ledger carrier skip the first step and the address cap. A
    handshake's slots are free again however it ends (accepted, refused, failed, timed
    out, given way, cancelled), and :meth:`close` closes the connections still waiting
    (and any whose accept completes after it)."""

    def __init__(
        self,
        callback: ClientCallback,
        identity: HostIdentity,
        accept: AcceptHook | None,
        config: ConnectionConfig,
        admit: AdmitHook | None = None,
        max_handshakes_per_address: int | None = DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
        max_waiting_per_address: int = DEFAULT_MAX_WAITING_PER_ADDRESS,
        limit: int = _LIMIT,
        settle_on_close: bool = False,
        max_handshakes: int = DEFAULT_MAX_HANDSHAKES,
        backlog: int = 128,
        first_message_timeout: float = DEFAULT_FIRST_MESSAGE_TIMEOUT,
    ) -> None:
        """``max_handshakes`` (ValueError unless an int of at least 1, as the blocking
        server's), ``backlog`` (the longest line of connections waiting for one of
        them to end, and of those waiting for their first message; at least one) and
        ``first_message_timeout``: see the class docstring."""
        # first: a bad bound, or settle_on_close without ledger admission, fails before
        # anything starts (a backlog listen() refuses too: it left a bound socket open)
        _check_backlog(backlog)
        self._admission: Admission[_Arrival] = Admission(
            max_handshakes=max_handshakes,
            max_handshakes_per_address=max_handshakes_per_address,
            max_waiting_per_address=max_waiting_per_address,
            max_waiting=max(backlog, 1),
            max_unproven=max(backlog, 1),
            first_message_timeout=checked_first_message_timeout(first_message_timeout),
            start=self._begin,
            close=self._close_unserved,
            give_way=self._give_way,
            gone=_waiting_gone,
        )
        self._handshake_slots = self._admission.server_slots
        self._address_slots = self._admission.address_slots
        self._expiry: asyncio.TimerHandle | None = None  # the admission's next deadline
        # the heap's free pages go back to the system after churn (dtp.heap_release)
        self._heap = HeapRelease()
        self._heap_look: asyncio.TimerHandle | None = None
        self._serving = served_connections(admit, identity, settle_on_close)
        self._limit = limit
        self._callback = callback
        self.identity = identity
        self._accept = accept
        self._admit = admit
        self._config = config
        self._server: asyncio.base_events.Server | None = None
        self._ledger_listener: LedgerListener | None = None
        self._ledger_watch: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        with contextlib.suppress(RuntimeError):  # (made outside a loop: get_loop() None)
            self._loop = asyncio.get_running_loop()
        #: listen_ledger's arguments while start_server(start_serving=False) holds it
        #: back, until start_serving()
        self._ledger_pending: tuple[Ledger, str, int, LedgerCarrierOptions | None] | None = None
        self.handshakes_failed = 0
        self.refused = 0
        #: Connections closed unserved: their address's line, or the server's, was full,
        #: or they waited in it past the handshake timeout
        self.busy_refused = 0
        #: Connections closed before their complete first handshake record: timed out
        #: (``first_message_timeout``), or the oldest, making room for newer ones
        self.unproven_closed = 0
        #: Half-handshakes (waiting for their client's next message) ended to make room
        #: for proven connections waiting for a slot (also in :attr:`handshakes_failed`)
        self.half_handshakes_evicted = 0
        # IK first messages seen: a replayed one is turned away before the hooks, so it
        # never holds a client's ledger connection (dtp.replay_guard)
        self._replays = ReplayGuard()

    @property
    def handshakes_in_progress(self) -> int:
        """Handshakes in progress now (at most ``max_handshakes``)."""
        return self._admission.in_progress

    @property
    def handshakes_waiting(self) -> int:
        """Connections waiting for one of the ``max_handshakes`` slots (not those
        waiting in their own address's line, nor for their first message)."""
        return self._admission.waiting

    @property
    def unproven(self) -> int:
        """Connections waiting for their complete first handshake record now."""
        return len(self._admission.unproven)

    @property
    def replays_refused(self) -> int:
        """Replayed IK first messages turned away (also counted in
        :attr:`handshakes_failed`): see :mod:`dtp.replay_guard`."""
        return self._replays.refused

    @property
    def noise_public_key(self) -> bytes:
        return self.identity.noise_public

    @property
    def sockets(self) -> tuple[Any, ...]:
        return tuple(self._server.sockets) if self._server else ()

    @property
    def address(self) -> tuple[str, int]:
        if not self.sockets:
            raise LocalProtocolError("this server has no TCP listener (ledger carrier only)")
        name = self.sockets[0].getsockname()
        return name[0], name[1]

    def listen_ledger(
        self,
        ledger: Ledger,
        host_id: str,
        port: int,
        options: LedgerCarrierOptions | None = None,
    ) -> LedgerListener:
        """Also accept connections to ``host_id``:``port`` that come over the ledger
        carrier, as :meth:`dtp.socket.DTPServer.listen_ledger` does (call it from the
        event loop). The listener watches the ledger in a thread of its own and hands
        each bridged connection to the loop."""
        if self._ledger_listener is not None:
            raise LocalProtocolError("this server already listens on the ledger")
        loop = asyncio.get_running_loop()
        config = ledger_config(self._config)

        def handoff(bridge: LedgerBridge) -> None:  # in the listener's thread
            try:
                loop.call_soon_threadsafe(self._accept_ledger, bridge, config)
            except RuntimeError:  # the loop is closed: nobody will serve it
                bridge.socket.close()  # (its thread ends with it)

        listener = LedgerListener(ledger, self.identity, host_id, port, handoff, options=options)
        self._ledger_listener = listener

        async def until_closed() -> None:
            await self._closed.wait()

        # The listener's thread lives no longer than the loop: asyncio.run ending with
        # the server still open (this task cancelled) stops it; it watched the ledger on
        # for good, and handed connections to a closed loop.
        self._ledger_watch = loop.create_task(until_closed())
        self._ledger_watch.add_done_callback(lambda _: listener.close(timeout=0))
        return listener

    def _accept_ledger(self, bridge: LedgerBridge, config: ConnectionConfig) -> None:
        loop = asyncio.get_running_loop()

        def factory() -> _Arrival:
            # by_address=False: the bridge is a local socket, not the client's IP
            arrival = self._protocol_factory(config, by_address=False)
            arrival.peername = bridge.peername
            return arrival

        async def attach() -> None:
            try:
                await loop.connect_accepted_socket(factory, sock=bridge.socket)
            except OSError as exc:
                logger.warning("ledger connection %s: %s", bridge.peername[1], exc)
                bridge.socket.close()

        task = loop.create_task(attach())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _protocol_factory(
        self, config: ConnectionConfig | None = None, *, by_address: bool = True
    ) -> _Arrival:
        """A new connection's protocol until its handshake starts (``by_address``: a TCP
        client, capped by its address and held to its first message; else a ledger
        bridge)."""
        return _Arrival(self, config or self._config, by_address)

    def _arrived(self, arrival: _Arrival) -> None:
        """A new connection (its transport just made): it waits for its first record
        (TCP), or for its slots at once (a ledger bridge)."""
        transport = arrival.transport
        assert transport is not None
        if self._closed.is_set():
            # accepted as close() ran (a ledger bridge handed over just before it, its
            # attach still under way): closed unserved, as the blocking server closes
            # what it accepted once closed, rather than started after the server's end
            transport.close()
            return
        now = time.monotonic()
        # the connection's own handshake timeout: a ledger connection's is longer (its
        # records take ledger transactions)
        arrival.deadline = now + arrival.config.handshake_timeout
        if self._loop is None:
            self._loop = asyncio.get_running_loop()  # (made outside it: its first connection)
        self._heap.connected(now)
        if self._heap_look is None:
            self._look_at_heap()
        if not arrival.by_address:
            transport.pause_reading()  # (its first record is read as its handshake starts)
            self._admission.proven(arrival, None, arrival.deadline, now)
            self._arm_expiry()
            return
        peer = transport.get_extra_info("peername")
        if not peer:
            transport.close()  # the client is gone already
            return
        arrival.key = address_key(str(peer[0]))
        self._admission.arrived(arrival, arrival.key, now)
        self._arm_expiry()

    def _proven(self, arrival: _Arrival) -> None:
        """``arrival`` sent its complete first record: on to the handshake slots."""
        self._admission.proven(arrival, arrival.key, arrival.deadline, time.monotonic())
        self._arm_expiry()  # (it may wait in a line, until its deadline)

    def _not_dtp(self, arrival: _Arrival) -> None:
        """``arrival``'s first bytes are not a DTP handshake record: closed, no reply."""
        if self._admission.dropped(arrival):
            self.handshakes_failed += 1
        if arrival.transport is not None:
            arrival.transport.close()

    def _arm_expiry(self) -> None:
        """Have the next deadline -- a first-message timeout, a wait in a line -- met on
        time (one timer for them all)."""
        deadline = self._admission.next_deadline()
        loop = self._loop
        if deadline is None or loop is None or not loop.is_running():
            return  # (nothing waits; or the loop is ending: close() closes them)
        delay = max(deadline - time.monotonic(), 0.0)
        if self._expiry is not None:
            if self._expiry.when() <= loop.time() + delay:
                return  # (it fires first: then it looks again)
            self._expiry.cancel()
        self._expiry = loop.call_later(delay, self._expire)

    def _look_at_heap(self) -> None:
        """Trim the heap when :class:`~dtp.heap_release.HeapRelease` says so, and look
        again when it says (one timer, made only while connections come)."""
        self._heap_look = None
        loop = self._loop
        if loop is None or not loop.is_running() or self._closed.is_set():
            return
        now = time.monotonic()
        if self._heap.due(now):
            release_free_heap()
        look = self._heap.next_look(now)
        if look is not None:
            self._heap_look = loop.call_later(max(look - now, 0.0), self._look_at_heap)

    def _expire(self) -> None:
        self._expiry = None
        self._admission.expire(time.monotonic())
        self._arm_expiry()

    def _begin(self, arrival: _Arrival) -> bool:
        """The admission's ``start``: ``arrival`` holds its slots; its handshake begins
        (a Session, the transport handed to its :class:`_Protocol`, its first record
        read). False when it cannot (the server closed, the client left): closed."""
        transport = arrival.transport
        if self._closed.is_set() or _waiting_gone(arrival) or transport is None:
            if transport is not None:
                transport.close()
            return False
        proto: _Protocol | None = None
        try:
            loop = asyncio.get_running_loop()
            session = Session(arrival.config, now=loop.time())
            proto = _Protocol(session, loop)
            proto.limit = self._limit
            proto.peername = arrival.peername
            arrival.proto = proto
            transport.set_protocol(proto)
            proto.connection_made(transport)
            first = arrival.reader.take()
            if first:
                proto.data_received(first)
            transport.resume_reading()
            self._start_serving(arrival)
        except Exception as exc:  # (out of memory for a task, say: the connection ends)
            if proto is not None:
                proto._fail(exc)
            else:
                transport.close()
            return False
        return True

    def _start_serving(self, arrival: _Arrival) -> None:
        started: list[bool] = []  # set by _serve's first step
        assert arrival.proto is not None
        proto = arrival.proto
        task = proto.loop.create_task(self._serve(arrival, started))

        def done(task: asyncio.Task[None]) -> None:
            self._tasks.discard(task)
            if task.cancelled() and not started:
                # cancelled before its first step (the loop shutting down): none of
                # _serve ran, its finally blocks included
                self._admission.ended(arrival, time.monotonic(), start_next=False)
                _abort(proto, CloseCode.HANDSHAKE_FAILED, "the server is shutting down")

        self._tasks.add(task)
        task.add_done_callback(done)

    def _close_unserved(self, arrivals: list[_Arrival], why: Why) -> None:
        """The admission's ``close``: connections it turned away (``why``)."""
        if not arrivals:
            return
        if why == "busy":
            self.busy_refused += len(arrivals)
        elif why != "gone":
            self.unproven_closed += len(arrivals)
        for arrival in arrivals:
            transport = arrival.transport
            if transport is not None:
                logger.debug("closed a connection from %s unserved: %s", arrival.key, why)
                transport.close()

    def _give_way(self, arrival: _Arrival) -> None:
        """The admission's ``give_way``: end a half-handshake, for a proven connection
        waiting for a slot (its task ends it, and its slot goes on)."""
        self.half_handshakes_evicted += 1
        arrival.gave_way = True
        if arrival.proto is not None:
            _abort(arrival.proto, CloseCode.HANDSHAKE_FAILED, "gave way to a waiting client")
            arrival.proto._notify()

    async def _serve(self, arrival: _Arrival, started: list[bool]) -> None:
        """One connection: the handshake and hooks, then the client callback. It holds
        its slots (one of the server's, one of its address's) until its handshake ends.
        Cancelled (the loop shutting down), it aborts the connection rather than leave
        the transport open."""
        started.append(True)
        cancelled = False
        proto = arrival.proto
        assert proto is not None
        try:
            accepted = await self._handshake(proto, arrival)
        except asyncio.CancelledError:
            # (only a cancel of this task -- the loop ending -- closes those waiting: a
            # CancelledError of something it awaited leaves the server serving them)
            cancelled = _being_cancelled()
            _abort(proto, CloseCode.HANDSHAKE_FAILED, "the server is shutting down")
            raise
        finally:
            # however the handshake ended (accepted, refused, failed, timed out, an error
            # or a cancellation): its slots are free for the next connections
            self._admission.ended(arrival, time.monotonic(), start_next=not cancelled)
            if not cancelled and not self._closed.is_set():
                self._arm_expiry()  # (those it handed on may wait in a line now)
        if not accepted:
            return
        session = proto.session
        reader = DTPStreamReader(proto, 0)
        writer = DTPStreamWriter(proto, 0, primary=True)
        # the connection stays open once the callback returned, as asyncio's server
        # keeps its writer (the callback may have handed the pair on, or kept neither)
        proto.pinned = writer._owner
        try:
            result = self._callback(reader, writer)
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            writer.abort("the server is shutting down")
            # (the loop is ending: no drain can run on it, the carrier closes now)
            proto.close_carrier(drain=False)
            raise
        except DTPError as exc:
            if isinstance(exc, LocalProtocolError) and session.terminated is None:
                # the callback misused a live stream (a write after write_eof() or
                # close()): a bug of its own, reported as any other exception below.
                # At INFO, nobody saw it: the client only read an abort
                self._callback_failed(proto, exc)
                writer.abort("internal error")
                return
            logger.info("connection from %s ended: %s", session.authenticated_address, exc)
            if session.terminated is None and not writer._closing:
                # an error of the callback's own (a stream the peer reset) while the
                # connection goes on: nobody serves it any more, and the client must
                # not wait on it. (Not once the first stream is closing: that close
                # ends it, after what is queued went out. A drain() waiting when another
                # task closed the writer raises ConnectionClosed at once; aborted here,
                # what the close was still sending was cut and the client read an
                # error.)
                writer.abort("internal error")
        except Exception as exc:
            # then the connection ends, the peer reading an error, not a clean end
            self._callback_failed(proto, exc)
            writer.abort("internal error")

    @staticmethod
    def _callback_failed(proto: _Protocol, exc: Exception) -> None:
        """Report what a client callback raised to the loop's exception handler, as
        asyncio.start_server reports it (a program that set its own handler saw
        nothing when this went to our logger)."""
        proto.loop.call_exception_handler(
            {
                "message": "Unhandled exception in client_connected_cb",
                "exception": exc,
                "transport": proto.transport,
                "peer_address": proto.session.authenticated_address,
            }
        )

    async def _handshake(self, proto: _Protocol, arrival: _Arrival) -> bool:
        """The handshake and the hooks: True once the client is accepted."""
        session = proto.session
        if arrival.by_address and session.authenticated_address is None:
            # its first record, read, got our reply: its client's next message is due.
            # (A ledger bridge's first record comes over the ledger, slowly: it passed
            # the ledger carrier's own admission, and never gives way)
            self._admission.waiting_for_client(arrival)
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel (the
        # loop ending) that comes as the handshake completes, and the callback would run
        # in a task asyncio.run then waits on for good
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(session.conn.config.handshake_timeout):
                await proto.wait_for(
                    lambda: (
                        session.authenticated_address is not None
                        or session.terminated is not None
                        or arrival.gave_way
                    )
                )
        self._admission.authenticated(arrival)
        if arrival.gave_way:
            self.handshakes_failed += 1
            return False
        if session.terminated is not None or session.authenticated_address is None:
            self.handshakes_failed += 1
            _abort(proto, CloseCode.HANDSHAKE_FAILED, "handshake failed")
            return False
        conn = session.conn
        # before the hooks: a replay must not reserve the client's ledger connection
        if self._replays.is_replay(conn, _peer_label(proto)):
            self.handshakes_failed += 1
            _abort(proto, CloseCode.HANDSHAKE_FAILED, "handshake failed")
            return False
        if self._accept is not None or self._admit is not None:
            # IK: message 2 goes now, and the client works on it while the hooks (the
            # ledger admission) decide; the verdict follows it. Without hooks the verdict
            # is at once: both go in one flight, as one wake-up
            conn.answer()
            proto.flush()
        peer = peer_info(
            session.authenticated_address,
            conn.peer_connection_id,
            conn.peer_port,
            conn.peer_static,
        )
        verdict = await self._run_hook(peer)
        if session.terminated is not None or conn.closed:
            # the client gave up (or vanished) while the hooks ran: nothing to accept
            # (accept() would raise, and the task's error never be retrieved)
            self.handshakes_failed += 1
            _abort(proto, CloseCode.HANDSHAKE_FAILED, "handshake failed")
            return False
        if verdict is None and isinstance(self._admit, LedgerAdmission):
            verdict = self._serve_once(proto, peer)
        if verdict is not None:
            self.refused += 1
            session.conn.refuse(verdict)
            proto.flush()
            proto.close_carrier()
            return False
        session.conn.accept()
        self._replays.accepted(conn)
        session.process_events()
        proto.flush()
        return True

    def _serve_once(self, proto: _Protocol, peer: PeerInfo) -> str | None:
        """A client the ledger admitted: one DTP connection per ledger connection at a
        time, within the connection limits the Host publishes (None, the ID taken until
        the carrier closes), or the refusal (docs/escrow.md §2)."""
        cid = peer.connection_id
        assert cid is not None  # (the ledger admitted it by this ID)
        assert isinstance(self._admit, LedgerAdmission)
        refusal = self._serving.reserve(cid, peer.address, self._admit.limits)
        if refusal is None:
            # (never blocks the loop: a settlement on close runs in a thread)
            proto.closed_future.add_done_callback(lambda _: self._serving.release(cid))
        return refusal

    async def _run_hook(self, peer: PeerInfo) -> str | None:
        """None to accept, or the refusal reason (``accept`` first, then ``admit``)."""
        hooks: list[tuple[Callable[[Any], Any], Any, bool]] = []
        if self._accept is not None:
            hooks.append((self._accept, peer.address, False))
        if self._admit is not None:
            threaded = not inspect.iscoroutinefunction(self._admit)
            hooks.append((self._admit, peer, threaded))
        for hook, arg, threaded in hooks:
            try:
                verdict = await asyncio.to_thread(hook, arg) if threaded else hook(arg)
                if inspect.isawaitable(verdict):
                    verdict = await verdict
            except Exception:
                logger.exception("accept hook failed for %s", peer.address)
                return HOOK_FAILED
            except asyncio.CancelledError:
                if _being_cancelled():
                    raise  # the loop is ending: this handshake with it
                # the hook's own (it awaited a task cancelled elsewhere): a hook failure.
                # Passed on, it read as the server shutting down, and every connection
                # waiting for a handshake slot was closed with this one
                logger.exception("accept hook failed for %s", peer.address)
                return HOOK_FAILED
            reason = refusal_reason(verdict)
            if reason is not None:
                return reason
        return None

    async def _start(self, host: str, port: int, backlog: int, start_serving: bool = True) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._protocol_factory,
            host,
            port,
            backlog=backlog,
            reuse_address=True,
            start_serving=start_serving,
        )

    def get_loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the server runs on (as :meth:`asyncio.Server.get_loop`)."""
        return self._loop

    def is_serving(self) -> bool:
        """True while the server accepts connections (as
        :meth:`asyncio.Server.is_serving`): started, and not closed."""
        if self._closed.is_set():
            return False
        if self._server is not None and self._server.is_serving():
            return True
        return self._ledger_listener is not None

    async def start_serving(self) -> None:
        """Start accepting connections, if ``start_server(start_serving=False)`` held
        them back (nothing to do otherwise, or once closed), as
        :meth:`asyncio.Server.start_serving`."""
        if self._closed.is_set():
            return
        if self._server is not None:
            await self._server.start_serving()
        pending, self._ledger_pending = self._ledger_pending, None
        if pending is not None:
            self.listen_ledger(*pending)

    async def wait_settled(self, timeout: float | None = None) -> bool:
        """With ``settle_on_close``: wait until the ledger connections of the DTP
        connections that ended so far are settled (True), or ``timeout`` seconds
        (False). Without it there is nothing to wait for (True)."""
        return await asyncio.to_thread(self._serving.wait_settled, timeout)

    def close(self) -> None:
        """Stop listening (handshakes in progress and connections already accepted go
        on; those still waiting for a handshake slot, their address's or the server's,
        are closed)."""
        if self._server is not None:
            self._server.close()
        if self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if self._heap_look is not None:
            self._heap_look.cancel()
            self._heap_look = None
        # those waiting for their first record or for a slot (the slots those in the
        # server's line held free again: nobody is left to take them)
        for arrival in self._admission.drain(time.monotonic()):
            if arrival.transport is not None:
                arrival.transport.close()
        if self._ledger_listener is not None:
            # told to stop, not joined: its thread may be in a ledger read for seconds
            # (a Sui node's event poll), which would hold the event loop; wait_closed()
            # joins it, in a thread
            self._ledger_listener.close(timeout=0)
        self._closed.set()

    async def wait_closed(self) -> None:
        """Wait until the server is closed (as :meth:`asyncio.Server.wait_closed`, at
        once when it is already), its ledger listener's thread ended too (up to 5 s).
        A server on the ledger carrier alone returned at once however open it was."""
        if self._server is not None:
            await self._server.wait_closed()
        else:
            await self._closed.wait()
        listener = self._ledger_listener
        if listener is not None and listener.running:
            await asyncio.to_thread(listener.close)

    async def serve_forever(self) -> None:
        """Accept connections until cancelled; then the server is closed, as
        :meth:`asyncio.Server.serve_forever` (its ledger listener and the connections
        waiting for a handshake slot too: only the TCP listener was). On a closed server
        it raises RuntimeError, as asyncio's (one on the ledger carrier alone returned
        at once, as if it had served and ended)."""
        if self._closed.is_set():
            raise RuntimeError(f"server {self!r} is closed")
        await self.start_serving()
        try:
            if self._server is not None:
                await self._server.serve_forever()
                return
            await self._closed.wait()  # ledger carrier only: serve until closed
        except asyncio.CancelledError:
            if not self._closed.is_set():
                self.close()
            raise

    async def __aenter__(self) -> DTPServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await self.wait_closed()


async def start_server(
    client_connected_cb: ClientCallback,
    host: str | None,
    port: int | None,
    *,
    identity: HostIdentity,
    accept: AcceptHook | None = None,
    admit: AdmitHook | None = None,
    config: ConnectionConfig | None = None,
    backlog: int = 128,
    ledger: Ledger | None = None,
    host_id: str | None = None,
    dtp_port: int | None = None,
    carriers: tuple[str, ...] | None = None,
    ledger_options: LedgerCarrierOptions | None = None,
    max_handshakes: int = DEFAULT_MAX_HANDSHAKES,
    max_handshakes_per_address: int | None = DEFAULT_MAX_HANDSHAKES_PER_ADDRESS,
    max_waiting_per_address: int = DEFAULT_MAX_WAITING_PER_ADDRESS,
    start_serving: bool = True,
    limit: int = _LIMIT,
    settle_on_close: bool = False,
    first_message_timeout: float = DEFAULT_FIRST_MESSAGE_TIMEOUT,
    open_grace: float | None = None,
) -> DTPServer:
    """Listen on ``host:port``; ``client_connected_cb(reader, writer)`` runs for each
    accepted client (the ``accept`` hook, sync or async, may refuse it first; then the
    ``admit`` hook, given a :class:`~dtp.admission.PeerInfo`). It may be a coroutine
    function or a plain one. An exception it raises goes to the loop's exception
    handler, as with :func:`asyncio.start_server`, and the connection is aborted (the
    client reads ConnectionClosed, not the clean end asyncio's close gives); the
    connection's own end raised in it (a DTPError other than a LocalProtocolError on a
    live connection: the peer reset a stream, closed, vanished) is logged at INFO.

    With ``ledger``, ``host_id`` and ``dtp_port`` (the DTP port served, a service of that
    Host), clients are admitted only through :class:`~dtp.admission.LedgerAdmission`, as
    with :func:`dtp.socket.create_server`: their handshake must name an Open ledger
    connection of theirs to this host and port with a funded escrow, and the host's
    firewall must permit them; others get ConnectionRefused with the reason.
    ``settle_on_close=True`` closes and settles each ledger connection as its DTP
    connection ends, and each one refused at one of the Host's connection limits as it
    is refused, refunding the client its whole deposit at once (by default the ledger
    connection stays Open, for the client to reconnect on, until the half-close
    timeout; a client refused at a limit half-closes it and collects its refund after
    that timeout); see :func:`dtp.socket.create_server`.

    ``carriers`` as in :func:`dtp.socket.create_server`: with ``"ledger"`` (the default
    when ``host`` is None) the server also accepts connections that come over the ledger
    carrier, for a host that publishes no endpoint (docs/ledger-carrier.md).

    ``max_handshakes``: at most that many handshakes in progress at once on the whole
    server (as :func:`dtp.socket.create_server`'s; ValueError unless an int of at least
    1, before anything listens); further connections wait for one to end in a line of at
    most ``backlog``. ``max_handshakes_per_address`` / ``max_waiting_per_address``: at
    most that many handshakes from one client IP address in progress at once (None: no
    cap), and at most that many of its connections waiting for one to end.
    ``first_message_timeout``: seconds a new connection has to send its complete first
    handshake record (ValueError unless a number > 0); at most ``backlog`` connections
    wait for theirs, the oldest closed to make room. See :class:`DTPServer`.

    ``open_grace``: with ledger admission, seconds a connection a client names is looked
    for on the ledger before it is refused as unknown, as :func:`dtp.socket.create_server`'s.

    ``start_serving=False``: accept nothing until :meth:`DTPServer.start_serving` (or
    ``serve_forever()``), as :func:`asyncio.start_server`. ``limit``: the readers' line
    limit, as there (64 KiB).
    """
    _check_limit(limit)
    check_open_grace_use(open_grace, ledger)
    if carriers is None:
        carriers = ("tcp",) if host is not None else ("ledger",)
    if not carriers or not set(carriers) <= {"tcp", "ledger"}:
        raise ValueError(f"carriers must be 'tcp' and/or 'ledger', got {carriers!r}")
    if ("tcp" in carriers) != (host is not None and port is not None):
        raise ValueError("host and port are needed for the 'tcp' carrier, and only for it")
    if "ledger" in carriers and (ledger is None or host_id is None or dtp_port is None):
        raise ValueError("the ledger carrier needs ledger, host_id and dtp_port")
    if ledger is not None or host_id is not None or dtp_port is not None:
        if ledger is None or host_id is None or dtp_port is None:
            raise ValueError("ledger admission needs ledger, host_id and dtp_port together")
        if admit is not None:
            raise ValueError("pass either admit or ledger/host_id/dtp_port, not both")
        admit = LedgerAdmission(ledger, host_id, dtp_port, open_grace=open_grace)
    base = config or ConnectionConfig(identity=identity, is_client=False)
    cfg = replace(base, identity=identity, is_client=False)
    server = DTPServer(
        client_connected_cb,
        identity,
        accept,
        cfg,
        admit,
        max_handshakes_per_address=max_handshakes_per_address,
        max_waiting_per_address=max_waiting_per_address,
        limit=limit,
        settle_on_close=settle_on_close,
        max_handshakes=max_handshakes,
        backlog=backlog,
        first_message_timeout=first_message_timeout,
    )
    if host is not None and port is not None:
        await server._start(host, port, backlog, start_serving)
    if "ledger" in carriers and not start_serving:
        assert ledger is not None and host_id is not None and dtp_port is not None
        server._ledger_pending = (ledger, host_id, dtp_port, ledger_options)
    elif "ledger" in carriers:
        assert ledger is not None and host_id is not None and dtp_port is not None
        try:
            server.listen_ledger(ledger, host_id, dtp_port, ledger_options)
        except BaseException:
            # (a host it cannot serve, say): the TCP listener started first goes too,
            # rather than listen on with nobody holding the server
            server.close()
            raise
    return server


async def serve(
    host_id: str,
    port: int,
    callback: PaidCallback,
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
) -> PaidAioServer:
    """Serve a paid DTP service on ``port`` of the Host ``host_id`` (as
    :func:`dtp.socket.serve`); ``callback(reader, writer)`` gets a paid stream pair.
    The handshake bounds (``max_handshakes``, ``backlog``, ``max_handshakes_per_address``,
    ``max_waiting_per_address``) and ``open_grace`` are :func:`start_server`'s. Returns
    the running :class:`~dtp.paid_aio.PaidAioServer`; see :mod:`dtp.paid_aio`."""
    from dtp.hostid.paid.aio import serve as serve_paid

    return await serve_paid(
        host_id,
        port,
        callback,
        ledger=ledger,
        identity=identity,
        address=address,
        receipts=receipts,
        policy=policy,
        config=config,
        endpoint=endpoint,
        backlog=backlog,
        max_handshakes=max_handshakes,
        max_handshakes_per_address=max_handshakes_per_address,
        max_waiting_per_address=max_waiting_per_address,
        open_grace=open_grace,
    )
