"""The asyncio stream pair of a DTP connection: :class:`DTPStreamReader` and
:class:`DTPStreamWriter`, the :class:`asyncio.StreamReader` / ``StreamWriter`` interface."""

from __future__ import annotations

import asyncio
import contextlib
import operator
import sys
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from dtp.errors import ConnectionClosed, DTPError, LocalProtocolError, StreamReset
from dtp.native.reference._limits import MAX_SEAL_HEAD
from dtp.protocol.connection import CloseCode
from dtp.transport._hooks import NOT_PAID, ConnectionHook
from dtp.transport._session import ACCEPT_KEY, CARRIER_DRAIN, UNSENT, StreamSink
from dtp.transport.asyncio._begun import start_now
from dtp.transport.asyncio._protocol import BROAD_KEY, CARRIER_GRACE, Protocol, abort, end_unpaid
from dtp.transport.blocking._checks import readable

SEND_HIGH_WATER = 512 * 1024
#: How long ``close()`` on a connection's first stream waits for queued data to leave
#: over a reliable carrier (TCP) before it closes anyway (the peer then sees an error,
#: not a clean end)
CLOSE_LINGER = 5.0
#: The same over a lossy carrier (the ledger), where data has left only once
#: acknowledged; the closing period's wait for the carrier's end (docs/protocol.md 3.1)
#: comes out of it too: the close waits at most this, CARRIER_DRAIN and CARRIER_GRACE
LOSSY_CLOSE_LINGER = 30.0


class DTPStreamReader:
    """Reads one stream; the :class:`asyncio.StreamReader` interface."""

    #: The read waiting for bytes, if one is: a second one raises RuntimeError (each
    #: reader's own once set; until then this, shared: a store fewer a stream served)
    _waiting: str | None = None

    def __init__(self, proto: Protocol, stream_id: int) -> None:
        self._proto = proto
        # (proto.owner()'s, its owner read inline: a stream served makes a reader and a
        # writer, a call fewer each)
        ref = proto._owner
        owner = ref() if ref is not None else None
        self._owner = owner if owner is not None else proto.owner()
        self._session = proto.session
        self._stream_id = stream_id

    @property
    def stream_id(self) -> int:
        return self._stream_id

    # -- push delivery ----------------------------------------------------------------------

    def set_sink(
        self,
        on_data: Callable[[bytes], None] | Callable[[memoryview], None],
        on_end: Callable[[BaseException | None], None],
        *,
        views: bool = False,
    ) -> StreamSink:
        """Have this stream's bytes pushed to ``on_data`` as they arrive (what is
        buffered first), instead of read; ``on_end(error)`` follows once (None at the
        end of the stream). For relays: no task wake-up and no buffer per chunk. Pause
        with :meth:`pause_sink` when the consumer is backed up (the peer then stops at
        its flow-control window) and resume with :meth:`resume_sink`. Do not read the
        stream afterwards.

        With ``views``, ``on_data`` gets a :class:`memoryview` of the connection's read
        buffer instead of a ``bytes`` copy (no copy per chunk: for a consumer that writes
        each chunk on at once). The view is valid only during the call: it is released
        when ``on_data`` returns, so using it later raises :class:`ValueError`; copy
        (``bytes(view)``) what you keep, a slice of it too, as the buffer is reused."""
        sink = StreamSink(on_data, on_end, views=views)
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

    def _take_from_stream(self, n: int) -> bytes:
        data = self._session.take(self._stream_id, n)
        if data:
            proto = self._proto
            # return flow-control credit promptly; a take queues nothing else, so with
            # none due and no meter to tell there is nothing to flush (most reads)
            if proto.hook is not None or proto.conn.credit_due():
                proto.flush()
        return data

    def _unread(self, data: bytes) -> None:
        """Put ``data``, taken by a read that did not complete (cancelled, or failed),
        back in front of the stream for the next read, consuming nothing, as asyncio's
        reads. Its credit stays given, counted as credited (given twice, each timed-out
        ``wait_for(readexactly(n), t)`` let the peer send that much more beyond the
        window). Not into a stream closed here meanwhile: its reads give b"" from then
        on."""
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
        if not self._session.readable(self._stream_id):
            await self._wait_for_bytes(name)

    async def _wait_for_bytes(self, name: str) -> None:
        """:meth:`_wait_readable` once a read found nothing to take (the protocol's
        ``wait_for`` written out: a read that waits asks ``readable`` once a wake-up;
        :meth:`read` of ``n`` bytes has it written out in turn)."""
        if self._waiting is not None:
            self._claim_wait(name)  # (raises)
        self._waiting = name
        session = self._session
        stream_id = self._stream_id
        proto = self._proto
        try:
            while True:
                # (Protocol.wait_change written out)
                waiter = proto.listen(stream_id)
                try:
                    await waiter
                finally:
                    # (unlisten's own test first: a wake-up took the waiter off the lists)
                    if not waiter.done() or waiter.cancelled():
                        proto.unlisten(waiter, stream_id)
                # (Session.readable's usual answer, bytes came, first: with no call)
                buf = session.streams.get(stream_id)
                if (buf is not None and buf.data) or session.readable(stream_id):
                    return
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
        ended (see :meth:`Session.cut_short <dtp.transport._session.Session.cut_short>`; not on the
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
            session = self._session
            stream_id = self._stream_id
            buf = session.streams.get(stream_id)
            if buf is not None and buf.eof and buf.data and buf.reset_code is None:
                # the whole stream is here with its end (a short request): what the
                # loop below comes to, its first take, without the loop
                return self._take_from_stream(len(buf.data))
            chunks: list[bytes] = []
            try:
                while True:
                    # (_wait_readable inline: a coroutine fewer a pass when the bytes
                    # and the end are there already, as a short request's are)
                    if not session.readable(stream_id):
                        await self._wait_for_bytes("read")
                    chunk = self._take_from_stream(1 << 30)
                    if not chunk:
                        return b"".join(chunks)
                    chunks.append(chunk)
                    buf = session.streams.get(stream_id)
                    if buf is not None and buf.eof and not buf.data and buf.reset_code is None:
                        # the end came with the bytes, as a short request's does: what
                        # the next pass would come to (a take of b""), without it
                        return b"".join(chunks)
            except BaseException:
                # cancelled (asyncio.wait_for timing out), or the stream reset / the
                # connection failed: what was taken goes back in front of the stream,
                # for the next read (dropped, it would be lost)
                self._unread(b"".join(chunks))
                raise
        session = self._session
        stream_id = self._stream_id
        buf = session.streams.get(stream_id)
        if (
            # (Session.readable's usual answer, a buffer of nothing yet on a live
            # connection, first: with no call)
            buf is not None
            and not (buf.data or buf.eof or buf.reset_code is not None or buf.discarded)
            and session.terminated is None
        ) or not session.readable(stream_id):
            # (_wait_for_bytes written out: a coroutine fewer a read that waits, and
            # the resumption of its frame)
            if self._waiting is not None:
                self._claim_wait("read")  # (raises)
            self._waiting = "read"
            proto = self._proto
            try:
                while True:
                    # (Protocol.listen(stream_id), written out: a call fewer a read; its
                    # table read each time, as _notify makes a new one)
                    waiter = proto.loop.create_future()
                    keyed = proto._keyed
                    some = keyed.get(stream_id)
                    if some is None:
                        keyed[stream_id] = [waiter]
                    else:
                        some.append(waiter)
                    try:
                        await waiter
                    finally:
                        if not waiter.done() or waiter.cancelled():
                            proto.unlisten(waiter, stream_id)
                    buf = session.streams.get(stream_id)
                    if (buf is not None and buf.data) or session.readable(stream_id):
                        break
            finally:
                self._waiting = None
        # (_take_from_stream written out: a call fewer a read)
        data = session.take(stream_id, n)
        if data:
            proto = self._proto
            rl = proto.conn.records  # (Connection.credit_due, written out)
            if proto.hook is not None or rl.pending_max_data or rl.pending_stream_credit:
                proto.flush()
        return data

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
            return self._take_from_stream(n)
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
                chunk = self._take_from_stream(need)
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
                return self._take_from_stream(index + len(separator))
            if len(buf) + 1 - len(separator) > limit:
                raise asyncio.LimitOverrunError(
                    "separator not found within the limit", len(buf) + 1 - len(separator)
                )
            if self._ended() or self._reset_or_failed():
                failure = self._failure()
                if failure is not None:
                    raise failure  # (consuming nothing, as asyncio's)
                raise asyncio.IncompleteReadError(
                    self._take_from_stream(len(buf)) if buf else b"", None
                )
            start = max(0, len(buf) - len(separator) + 1)
            # What is buffered stays (a cancelled or failing readuntil consumes nothing,
            # as asyncio's), but its credit goes back now, or a line longer than the
            # window would never end; the limit bounds what this lets the peer send
            # ahead.
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
            self._take_from_stream(
                exc.consumed + 1 if buf.startswith(b"\n", exc.consumed) else len(buf)
            )
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

    # A connection by host ID (dtp.hostid._asyncio.HostStreamWriter) names its ledger
    # objects; a plain one has none.
    connection_id: str | None = None
    """The ledger connection (TransportControl) ID when connected by host ID."""
    escrow_id: str | None = None
    # (each writer's own once set; until then these, shared: a stream served makes a
    # writer, four stores fewer)
    _closing = False
    _eof_sent = False
    #: The code close() asks the peer to stop sending with (reset()'s, else 0)
    _stop_code = 0
    _close_task: asyncio.Future[None] | None = None

    def __init__(self, proto: Protocol, stream_id: int, primary: bool) -> None:
        self._proto = proto
        ref = proto._owner  # (as DTPStreamReader's)
        owner = ref() if ref is not None else None
        self._owner = owner if owner is not None else proto.owner()
        self._session = proto.session
        self._conn = proto.conn
        self._stream_id = stream_id
        self._primary = primary

    @property
    def stream_id(self) -> int:
        return self._stream_id

    @property
    def peer_address(self) -> str | None:
        """On a server: the client's verified Sui address."""
        return self._conn.peer_address

    async def top_up(self, amount: int) -> None:
        """Raises :class:`~dtp.errors.LocalProtocolError`: only a paid connection (by
        host ID with a deposit: :class:`dtp.hostid._asyncio.HostStreamWriter`) can be
        topped up."""
        raise LocalProtocolError(NOT_PAID)

    # -- what the layers above use ------------------------------------------------------------

    @property
    def layer(self) -> ConnectionLayer:
        """What a layer above this one (a connection by host ID's payment, a paid
        server's receipt gate) uses to ride on the connection: not for applications."""
        return ConnectionLayer(self)

    @property
    def connection_ended(self) -> bool:
        """Whether the connection has ended (closed, aborted or timed out)."""
        return self._session.terminated is not None

    @property
    def reliable_carrier(self) -> bool:
        """Whether the connection's carrier is reliable and ordered (TCP), so that the
        connection itself does not acknowledge or retransmit
        (``ConnectionConfig.reliable_carrier``)."""
        return self._conn.config.reliable_carrier

    def connection_closed(self) -> asyncio.Future[None]:
        """A future done once the connection and its carrier are closed, to await or to
        pass to :func:`asyncio.wait`: a new one per call, shielding the connection's own,
        so that cancelling it (a cancelled wait) cancels nothing else; from the event
        loop."""
        return asyncio.shield(self._proto.closed_future)

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

    def _check_payable(self, nbytes: int, requests: int = 0) -> None:
        """On a connection whose hook pays for it (a paid client's): raise
        PaymentRequired, the connection ended, when what it pays cannot cover
        ``nbytes`` more bytes and ``requests`` more streams, those queued included
        (``ConnectionHook.refuse_write``; the blocking socket's ``_check_payable``)."""
        proto = self._proto
        hook = proto.hook
        if hook is None:
            return
        conn = self._conn
        queued = conn.send_buffered() + nbytes
        if not requests and conn.used_bytes() + queued <= hook.payable_bytes:
            return
        reason = hook.refuse_write(queued, requests)
        if reason is not None:
            raise end_unpaid(proto, reason)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Queue bytes (call :meth:`drain` to wait for room). Anything bytes-like is
        taken (an ``array('i')``: its bytes, as a socket sends them); what is not raises
        TypeError -- a strided view BufferError, as a socket's send() -- in any state,
        before anything is queued (asyncio's transport failed the connection then). On a
        paid connection, a write its deposit cannot pay ends it: PaymentRequired."""
        # (readable()'s own first case inline: bytes, most writes, a call fewer)
        view = memoryview(data) if type(data) is bytes else readable(data)
        if self._closing or self._eof_sent:
            raise LocalProtocolError("write on a closed or half-closed DTP stream")
        session = self._session
        buf = session.streams.get(self._stream_id)
        if session.terminated is not None or (buf is not None and buf.send_stopped is not None):
            session.check_writable(self._stream_id)  # (raises: its tests, written out above)
        if view:
            proto = self._proto
            if proto.hook is not None:
                self._check_payable(len(view))
            transport = proto.transport
            if transport is not None and not transport.is_closing():
                # the lane: sealed straight from the caller's bytes into records that
                # go to the transport at once; what it cannot send now it keeps
                while view:
                    sealed = self._conn.seal_fast(self._stream_id, view, proto.now())
                    if sealed is None:
                        break
                    transport.write(sealed[0])
                    if transport.get_write_buffer_size() and _keeps_views(transport):
                        self._conn.sealed_kept()
                    view = view[sealed[1] :]
                if not view:
                    # the meter, control frames, timers: a seal queues nothing and moves
                    # the timers only later, so with no meter and the timer armed there
                    # is nothing to flush (every write on a quiet stream)
                    if proto.hook is not None or proto._timer is None:
                        proto.flush()
                    return
            # no defensive copy: the connection seals the bytes now or copies them
            self._conn.send_stream_data(self._stream_id, view)
            proto.flush()

    def writelines(self, lines: Any) -> None:
        """:meth:`write` of the pieces joined. Two pieces of bytes, the first short (a
        message's length prefix and its body: ``RpcProtocol.begin_request_parts``), go
        as one seal of both where the stream's credit takes them at once, with no
        joined copy made (the records are those of the joined bytes)."""
        if type(lines) is tuple and len(lines) == 2:
            head, body = lines
            if (
                type(head) is bytes
                and type(body) is bytes
                and 0 < len(head) <= MAX_SEAL_HEAD
                and body
                and not (self._closing or self._eof_sent)
                and self._proto.hook is None
            ):
                session = self._session
                buf = session.streams.get(self._stream_id)
                proto = self._proto
                transport = proto.transport
                if (
                    session.terminated is None
                    and (buf is None or buf.send_stopped is None)
                    and transport is not None
                    and not transport.is_closing()
                ):
                    # (write's lane, for both pieces at once: all of them, or the join)
                    conn = self._conn
                    sealed = conn.seal_fast(self._stream_id, body, proto.now(), head)
                    if sealed is not None:
                        transport.write(sealed[0])
                        if transport.get_write_buffer_size() and _keeps_views(transport):
                            conn.sealed_kept()
                        if proto._timer is None:
                            proto.flush()
                        return
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

    def write_eof(self, data: bytes | bytearray | memoryview = b"") -> None:
        """Half-close: the peer reads EOF after what was written (nothing to do once
        closed, as asyncio's). With ``data``, those last bytes first, in the same frame
        as the end: a short answer then takes one record, where ``write()`` then
        ``write_eof()`` take two (a request-response service's reply: the peer gets one
        message, not two). ``data`` is checked as :meth:`write` checks it, and raises as
        it does on a closed or half-closed stream."""
        view = memoryview(data) if type(data) is bytes else readable(data)  # (as write's)
        if view:
            if self._closing or self._eof_sent:
                raise LocalProtocolError("write on a closed or half-closed DTP stream")
            session = self._session
            buf = session.streams.get(self._stream_id)
            if session.terminated is not None or (buf is not None and buf.send_stopped is not None):
                session.check_writable(self._stream_id)  # (raises: its tests, as write()'s)
            if self._proto.hook is not None:
                self._check_payable(len(view))
        elif self._eof_sent or self._closing or self._session.terminated is not None:
            return
        self._eof_sent = True
        self._conn.send_stream_data(self._stream_id, view if view else b"", end_stream=True)
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

        proto = self._proto
        # (Connection.send_buffered's answer for one stream, written out: every drain
        # asks it)
        stream = self._conn._streams.get(self._stream_id)
        if not (
            self._closing
            or self._session.terminated is not None
            or (
                not proto._write_paused
                and (
                    stream.base_offset + len(stream.send_buf) - stream.next_offset
                    if stream is not None
                    else 0
                )
                < SEND_HIGH_WATER
            )
        ):
            # (room() written out first: with room already, the common case, no wait is
            # built, no closure made and no call made: the same answer, a coroutine fewer
            # a drain)

            def room() -> bool:
                # (a close here ends the wait: what is queued is wait_closed()'s to wait
                # for, and a peer not reading would hold a writing task's drain() for
                # good, or for the first stream's CLOSE_LINGER)
                return (
                    self._closing
                    or self._session.terminated is not None
                    or (
                        not self._proto.write_paused
                        and self._conn.send_buffered(self._stream_id) < SEND_HIGH_WATER
                    )
                )

            await proto.wait_for(room)
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
            hook = self._proto.hook
            if self._primary and hook is not None:  # the peer closed first
                self._close_task = asyncio.ensure_future(asyncio.to_thread(hook.after_close))
            return
        if self._primary:
            task = asyncio.ensure_future(self._close_connection())
            task.add_done_callback(self._close_ended)
            self._close_task = task
            self._proto._notify()  # (a drain() waiting raises now: see there)
        else:
            proto = self._proto
            stream_id = self._stream_id
            if (
                self._eof_sent
                and not proto._waiters
                and stream_id not in proto._keyed
                and self._session.drop_finished(stream_id)
            ):
                # both halves done and read, the connection done with the stream, and
                # nothing waiting on it: what the close below comes to (no frame, the
                # buffer gone, no task to wake), in one step
                return
            # (whether this queues anything for the peer: a stream whose both ends are
            # done -- a request answered with write_eof() -- queues nothing, and its
            # close needs no flush)
            queued = not self._eof_sent
            if queued:
                with contextlib.suppress(DTPError):
                    self._conn.send_stream_data(self._stream_id, b"", end_stream=True)
            # Closed both ways, as asyncio's close() and the blocking API's: the peer is
            # asked to stop sending, and what is unread is dropped, its credit returned
            # (held for good, two such streams would stall every other stream); reads
            # give b"".
            session = self._session
            buf = session.streams.get(self._stream_id)
            if not (buf is not None and (buf.eof or buf.reset_code is not None)):
                queued = True
                with contextlib.suppress(DTPError):
                    self._conn.stop_sending(self._stream_id, self._stop_code)
            if buf is not None and buf.data:
                queued = True  # (discard returns their credit)
            if session.process_events():
                queued = True  # (what they applied may have queued credit)
            session.discard(self._stream_id)
            # its buffer goes once the connection is done with the stream too (as the
            # blocking API's): kept, a connection carrying many short streams (the
            # daemon's tunnels) would hold one for each, for good
            session.forget(self._stream_id)
            # (what waits on this stream's reads, and whatever forget()'s processing of
            # the events of the session concerns: the connection's end, say)
            self._proto.notify_changes(self._stream_id)
            if queued:
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
        instead, so the transport is not left open, a hook's last frames going out first
        (ConnectionHook.before_close)."""
        if task.cancelled():
            hook = self._proto.hook
            if hook is not None:
                hook.before_close()
            if self._conn.send_buffered():
                # what was written is cut short: the peer must not read a clean end
                abort(self._proto, CloseCode.APPLICATION, UNSENT)
            else:
                abort(self._proto, CloseCode.NO_ERROR, "")

    async def _close_connection(self) -> None:
        conn = self._conn
        deadline = self._proto.loop.time() + LOSSY_CLOSE_LINGER  # (lossy carriers only)
        if conn.config.reliable_carrier:
            # (asyncio.timeout, not wait_for: see below)
            with contextlib.suppress(TimeoutError, DTPError):
                async with asyncio.timeout(CLOSE_LINGER):
                    await self._proto.wait_for(
                        lambda: conn.send_buffered() == 0 or self._session.terminated is not None
                    )
        else:
            # over a lossy carrier (the ledger) data has left only once acknowledged,
            # and an ACK is no event: look again every 50 ms, for up to 30 s
            # (asyncio.timeout, not wait_for, which on Python 3.11 may swallow a cancel)
            while self._session.terminated is None and (
                conn.send_buffered() or conn.awaiting_acks()
            ):
                if self._proto.loop.time() >= deadline:
                    break
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.05):
                        await self._proto.wait_change()
        hook = self._proto.hook
        if hook is not None:
            hook.before_close()  # its last frames go out before CLOSE, in the same write
        if (
            (hook is None or not hook.keeps_clean_close)
            and conn.send_buffered()
            and self._session.terminated is None
        ):
            # the linger ran out with bytes never sent: the peer must read an error, not
            # the clean end of a stream cut short (unless the hook keeps its clean
            # CLOSE: ConnectionHook.keeps_clean_close)
            conn.close(CloseCode.APPLICATION, UNSENT)
        else:
            conn.close(CloseCode.NO_ERROR, "")
        self._proto.flush()
        if hook is not None:
            # the peer closes its end once its layer above is done with the
            # connection: ConnectionHook.close_wait (as the blocking socket's drain)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(hook.close_wait):
                    await asyncio.shield(self._proto.closed_future)
        self._proto.close_carrier()
        # until the carrier is closed (the peer closed its side, or CARRIER_DRAIN; over a
        # lossy carrier, after the closing period too, out of what is left of
        # LOSSY_CLOSE_LINGER): a loop ending meanwhile cancels this task, and the cancel
        # closes it at once
        wait = CARRIER_DRAIN + CARRIER_GRACE
        if conn.closing:
            wait += max(0.0, deadline - self._proto.loop.time())
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await asyncio.shield(self._proto.closed_future)
        if hook is not None:
            await asyncio.to_thread(hook.after_close)  # half-close on the ledger, if needed

    async def wait_closed(self) -> None:
        """Wait until the connection is fully closed (first stream) or until this
        stream's queued data has been handed on. (On another stream, unlike asyncio's,
        it does not wait for a close: not closed, it returns once what was written went
        out; closed, while a peer that stopped reading holds that back, it waits as
        asyncio's does for a transport that cannot flush.)"""
        if self._primary:
            # shielded: a cancelled wait (asyncio.wait_for) must not cancel the shared
            # future (every later wait_closed() would raise CancelledError) or the close
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

    def abort(self, reason: str = "aborted", *, code: int = CloseCode.APPLICATION) -> None:
        """Close the whole connection at once, dropping queued data. Reads and drain()
        raise ConnectionClosed from now on (as asyncio's drain() raises once the
        transport was aborted). ``code``: the CLOSE's, an application's (from
        ``CloseCode.APPLICATION``, 0x1000, to 2**62 - 1: docs/protocol.md §11), which the
        peer's error carries (a paid server's ``CLOSE_SUBSCRIPTION_ENDED`` is raised as
        :class:`~dtp.errors.SubscriptionEnded`)."""
        if (
            not isinstance(code, int)
            or isinstance(code, bool)
            or not CloseCode.APPLICATION <= code < 1 << 62
        ):
            raise ValueError(f"an abort's code is an int from 0x1000 to 2**62 - 1, not {code!r}")
        was_closing, self._closing = self._closing, True
        self._conn.close(code, reason)
        self._proto.flush()
        # the end is known now, not only once the transport reports it lost: a drain()
        # right after returned as if all had gone out
        self._session.process_events()
        self._proto._notify()
        self._proto.close_carrier()
        hook = self._proto.hook
        if self._primary and hook is not None and not was_closing:
            # the hook's end of the connection, as the blocking API's abort() (and
            # close()) runs it: ConnectionHook.after_close. wait_closed() waits for it.
            self._close_task = asyncio.ensure_future(asyncio.to_thread(hook.after_close))

    def send_datagram(self, data: bytes | bytearray | memoryview) -> None:
        """Send one unreliable datagram on the connection (see
        :meth:`dtp.socket.DTPSocket.send_datagram`). Never waits: while the transport
        holds more than ``dtp.protocol.connection.DATAGRAM_SEND_BACKLOG`` unsent bytes (the peer
        is stalled or slow) it is dropped and counted in
        :attr:`datagrams_send_dropped`."""
        session = self._session
        if session.terminated is not None:
            raise session.error or ConnectionClosed("the connection is closed")
        if self._proto.hook is not None:
            self._check_payable(memoryview(data).nbytes)  # (a paid client's deposit)
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
        if self._proto.hook is not None:
            # (a paid client's deposit: all of them, as they go out together)
            datagrams = list(datagrams)
            self._check_payable(sum(memoryview(d).nbytes for d in datagrams))
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
        session.datagram_run_sink = None
        if sink is not None:
            self._proto.pinned = self._owner  # its consumer may hold no reader or writer
            while session.datagrams:
                sink(session.datagrams.popleft())

    def set_datagram_run_sink(self, sink: Callable[[list[bytes]], None] | None) -> None:
        """:meth:`set_datagram_sink` for a sink that takes each run of datagrams that
        arrived together as one list (a relay sends the run on in one call); it
        replaces the sink :meth:`set_datagram_sink` set, and that one replaces it."""
        session = self._session
        session.datagram_run_sink = sink
        session.datagram_sink = None
        if sink is not None:
            self._proto.pinned = self._owner  # its consumer may hold no reader or writer
            if session.datagrams:
                queued = list(session.datagrams)
                session.datagrams.clear()
                sink(queued)

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
        if self._proto.hook is not None:
            self._check_payable(0, requests=1)  # (a stream is a request: paid for)
        stream_id = conn.open_stream()
        self._proto.flush()
        # (a stream of a connection by host ID has a HostStreamWriter too: top_up works)
        return DTPStreamReader(self._proto, stream_id), type(self)(
            self._proto, stream_id, primary=False
        )

    async def accept_stream(self) -> tuple[DTPStreamReader, DTPStreamWriter]:
        """Wait for the peer to open a stream (RuntimeError while :meth:`serve_streams`
        takes them)."""
        session = self._session
        if self._proto.stream_handler is not None:
            raise RuntimeError("accept_stream() while serve_streams() takes the streams")

        def ready() -> bool:
            while session.incoming_streams and session.incoming_streams[0] == 0:
                session.incoming_streams.popleft()
            return bool(session.incoming_streams) or session.terminated is not None

        await self._proto.wait_for(ready, ACCEPT_KEY)
        if not session.incoming_streams:
            raise session.error or ConnectionClosed("the connection is closed")
        stream_id = session.incoming_streams.popleft()
        return DTPStreamReader(self._proto, stream_id), type(self)(
            self._proto, stream_id, primary=False
        )

    async def serve_streams(
        self, handler: Callable[[DTPStreamReader, DTPStreamWriter], Awaitable[object]]
    ) -> None:
        """Serve each stream the peer opens with ``handler(reader, writer)``, in a task
        of its own, until the connection ends; then wait for the handlers still
        running, and return. The streams waiting to be accepted go first.

        What an ``accept_stream()`` loop that starts a task per stream does, sooner:
        each task is started as the stream's opening is read, not by a task woken to
        accept it, and its first step runs then, with the task current (a call whose
        request came whole is answered in the turn of the loop that read it, not in
        the next two). The writer is closed when the handler returns, if it did not close
        it; a handler that raises has its exception passed to the loop's exception
        handler and its stream reset (code 0: the peer reads StreamReset, not a clean
        end). Cancelled, it resets the streams still served (code 0) and cancels their
        handlers' tasks, as a handler cancelled otherwise resets its stream: the peer's
        reads end in StreamReset rather than wait. One at a time on a connection;
        :meth:`accept_stream` raises RuntimeError meanwhile."""
        proto = self._proto
        if proto.stream_handler is not None:
            raise RuntimeError("serve_streams() is running already on this connection")
        session = self._session
        loop = proto.loop
        # the handlers' tasks and writers by stream: each takes itself off as it ends
        # (a done callback would cost a callback of the loop of its own, often a pass)
        tasks: dict[int, tuple[asyncio.Task[None], DTPStreamWriter]] = {}
        kind = type(self)

        async def serve(reader: DTPStreamReader, writer: DTPStreamWriter) -> None:
            try:
                await handler(reader, writer)
            except asyncio.CancelledError:
                writer.reset(0)  # (else the peer's read() on it would wait forever)
                raise
            except Exception as exc:
                loop.call_exception_handler(
                    {
                        "message": "a serve_streams() handler raised",
                        "exception": exc,
                        "stream_id": writer.stream_id,
                    }
                )
                writer.reset(0)
            else:
                if not writer._closing:
                    writer.close()
            finally:
                tasks.pop(writer._stream_id, None)

        def start(stream_id: int) -> None:
            reader = DTPStreamReader(proto, stream_id)
            writer = kind(proto, stream_id, primary=False)
            # (its first step at once, as the stream's opening is read: a call whose
            # request came whole is answered in that turn of the loop, not the next)
            task, ended = start_now(loop, serve(reader, writer))
            if not ended:
                tasks[stream_id] = (task, writer)

        proto.stream_handler = start
        try:
            proto.start_streams()
            while session.terminated is None:
                await proto.wait_change(BROAD_KEY)
        except BaseException:
            # reset first: a task cancelled before its first step never runs serve()
            for task, writer in list(tasks.values()):
                writer.reset(0)
                task.cancel()
            raise
        finally:
            if proto.stream_handler is start:
                proto.stream_handler = None
        if tasks:
            await asyncio.gather(*(task for task, _ in tasks.values()), return_exceptions=True)

    def __repr__(self) -> str:
        return f"<DTPStreamWriter stream={self._stream_id} peer={self.get_extra_info('peername')}>"


def _keeps_views(transport: asyncio.BaseTransport) -> bool:
    """Whether ``transport`` may keep the buffer it was given to write rather than copy
    what it could not send at once: asyncio's socket transports do from Python 3.12;
    before, they copied (the stdlib's, that is: any other is taken to keep it)."""
    return _VIEWS_KEPT or type(transport).__module__ != "asyncio.selector_events"


_VIEWS_KEPT = sys.version_info >= (3, 12)


class ConnectionLayer:
    """The members a layer above the transport uses on an asyncio connection
    (:attr:`DTPStreamWriter.layer`), from the event loop: its hook
    (:class:`~dtp.transport._hooks.ConnectionHook`) and its driver. Kept off the
    writer's own face, which is the application's."""

    __slots__ = ("_proto", "_session")

    def __init__(self, writer: DTPStreamWriter) -> None:
        self._proto = writer._proto
        self._session = writer._session

    @property
    def hook(self) -> ConnectionHook | None:
        """As the blocking driver's (:class:`dtp.transport.blocking._socket.ConnectionLayer`)."""
        return self._proto.hook

    def set_hook(
        self, hook: ConnectionHook | None, on_receipt: Callable[[bytes], None] | None = None
    ) -> None:
        """As the blocking driver's, from the event loop."""
        self._proto.hook = hook
        self._session.on_receipt = on_receipt

    def check_live(self) -> None:
        """Raise the connection's error (ConnectionClosed, ...) once it has ended."""
        if self._session.terminated is not None:
            raise self._session.error or ConnectionClosed("the connection is closed")

    def run_and_flush(self, action: Callable[[], None]) -> None:
        """Run ``action`` (it may queue frames on the connection: a hook's), then send
        what it queued."""
        action()
        self._proto.flush()

    @property
    def driver(self) -> Protocol:
        """The connection's I/O driver, for a layer above that runs its own rules on the
        connection (a paid server's receipt gate:
        :class:`dtp.hostid.paid._asyncio.PaidConnection`)."""
        return self._proto

    def wake(self) -> None:
        """Have a paused reader or a waiting drain() look at their conditions again."""
        self._proto.wake()
