"""What a tunnel is on the wire, and the byte pump both ends share.

A DTP connection from a forwarder to the daemon carries, on stream 0, the control
channel (client → daemon: signed receipts, :data:`dtp.daemon._fees.RECEIPT_SIZE` bytes
each), and one further stream per forwarded TCP connection. On each tunnel stream the
daemon first answers one status: ``0x00`` (connected to a backend, bytes follow) or
``0x01`` + u16 length + UTF-8 reason (no tunnel; the stream ends).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import sys
import threading
from collections.abc import Callable
from typing import Protocol, cast

from dtp.errors import DTPError, TunnelError
from dtp.protocol.connection import close_reason_bytes
from dtp.transport.asyncio._protocol import reads_synchronously
from dtp.transport.asyncio._streams import DTPStreamReader, DTPStreamWriter

try:
    import fcntl
except ImportError:  # (not POSIX: a cut tunnel waits for its transport's buffer alone)
    fcntl = None  # type: ignore[assignment]

# SIOCOUTQ, the same number as TIOCOUTQ: on sockets Linux answers it with the bytes not
# yet acknowledged; other kernels answer with another count, or not at all
_OUTQ: int | None = 0x5411 if sys.platform.startswith("linux") else None

__all__ = [
    "CHUNK",
    "STATUS_OK",
    "PaidInPart",
    "TcpLeg",
    "read_status",
    "refusal",
    "splice_leg",
]

CHUNK = 1 << 20
STATUS_OK = b"\x00"
_REFUSED = 1
TUNNEL_RESET = 1
"""The code of the RESET_STREAM that ends a tunnel cut short (its TCP side was reset
or failed, it was cut for unpaid usage, or a stopping daemon cut it)."""


class PaidInPart(TunnelError):
    """Raised by a tunnel's count for a chunk it covers only in part (a deposit used up
    in the middle of it): its first :attr:`covered` bytes are counted and go on to the
    peer, then the tunnel is cut -- bytes paid for are never dropped with the rest."""

    def __init__(self, message: str, covered: int) -> None:
        super().__init__(message)
        self.covered = covered


class _Reader(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


class _Writer(Protocol):
    def write(self, data: bytes | memoryview) -> None: ...

    def write_eof(self) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...


def refusal(reason: str) -> bytes:
    """The status that refuses a tunnel with ``reason``."""
    raw = close_reason_bytes(reason)  # (UTF-8 cut at a character, as a CLOSE's)
    return bytes([_REFUSED]) + struct.pack(">H", len(raw)) + raw


async def read_status(reader: _Reader) -> None:
    """Read the daemon's status on a tunnel stream; raises :class:`TunnelError` with the
    daemon's reason when it refused."""
    first = await _exactly(reader, 1)
    if first == STATUS_OK:
        return
    if first[0] != _REFUSED:
        raise TunnelError(f"unexpected tunnel status byte {first[0]}")
    size = struct.unpack(">H", await _exactly(reader, 2))[0]
    raise TunnelError((await _exactly(reader, size)).decode("utf-8", "replace"))


async def _exactly(reader: _Reader, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await reader.read(n - len(data))
        if not chunk:
            raise TunnelError("the tunnel closed before the daemon answered")
        data += chunk
    return data


class _DTPWriter(_Writer, Protocol):
    def get_write_buffer_size(self) -> int: ...

    def is_closing(self) -> bool: ...


READ_CHUNK = 256 * 1024
"""The TCP side's read size (uvloop's own read buffer is as large)."""

_shared = threading.local()


def _shared_read_buffer() -> memoryview:
    """One read buffer per thread, shared by the tunnels of the loop running there: the
    loop reads into it and hands it to :meth:`TcpLeg.buffer_updated` in one callback,
    whose bytes are sealed (or copied) before it returns, so an idle tunnel holds no
    buffer of its own."""
    buf: memoryview | None = getattr(_shared, "rbuf", None)
    if buf is None:
        buf = _shared.rbuf = memoryview(bytearray(READ_CHUNK))
    return buf


# The stream transports whose descriptor carries the bytes as written (no TLS record
# layer in between): asyncio's socket transport, uvloop's TCP and Unix ones.
_PLAIN_TRANSPORTS = frozenset(
    {
        ("asyncio.selector_events", "_SelectorSocketTransport"),
        ("uvloop.loop", "TCPTransport"),
        ("uvloop.loop", "UnixTransport"),
    }
)


def _plain_descriptor(transport: asyncio.BaseTransport) -> int:
    """The socket descriptor a chunk may be written to directly while ``transport``
    holds nothing unsent, or -1 (a TLS transport, or one we do not know)."""
    if (type(transport).__module__, type(transport).__name__) not in _PLAIN_TRANSPORTS:
        return -1
    sock = transport.get_extra_info("socket")
    try:
        return -1 if sock is None else int(sock.fileno())
    except (OSError, ValueError):
        return -1


class TcpLeg(asyncio.BufferedProtocol):
    """The TCP side of a tunnel as a protocol: bytes from the TCP peer go straight into
    the DTP stream (no StreamReader buffer and no task switch per chunk); reading
    pauses while the DTP stream holds more than :data:`HIGH_WATER` unsent bytes.

    The loop reads into a buffer shared by the thread's tunnels (where it reads
    synchronously, as selector loops and uvloop do), sealed into records from there: no
    bytes object per chunk. Bytes from the DTP stream are written to the socket
    straight from the connection's read buffer while the transport holds nothing unsent
    (:meth:`write_chunk`). Until :meth:`attach` names the DTP stream, reading is paused.
    """

    def __init__(self, count: Callable[[int], float | None]) -> None:
        # returns how long to hold reading (the client's rate limit, receipts that lag);
        # asked again with 0 when the hold ends, and reading resumes only once it says 0
        self._count = count
        self._throttled = False
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._sink: _DTPWriter | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._draining = False
        self.read_done: asyncio.Future[None] = self._loop.create_future()
        """Done when the TCP peer sent EOF (forwarded) or the connection failed."""
        self.lost: asyncio.Future[None] = self._loop.create_future()
        self.error: BaseException | None = None
        self._close_when_made = False
        self._on_writable: Callable[[], None] | None = None
        """Set while a pushing DTP stream is paused for our transport's buffer."""
        self._early: list[bytes] = []
        """What was read before :meth:`attach` (uvloop reads on from connection_made)."""
        self._early_eof = False
        # the thread's shared buffer, held by reference (it costs an idle tunnel
        # nothing), so that a read asks no thread-local for it
        self._rbuf = (
            _shared_read_buffer()
            if reads_synchronously(self._loop)
            else memoryview(bytearray(READ_CHUNK))
        )
        self._views = False
        """Whether the sink seals what it is given at once (a :class:`DTPStreamWriter`):
        then a read goes to it as a view of the read buffer, not as bytes of its own."""
        self._can_write = True
        """False while the transport's buffer is over its high-water mark (a plain flag:
        asked at every chunk pushed to the TCP side)."""
        self._fd = -1
        """The plain socket's descriptor (:func:`_plain_descriptor`), or -1."""

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # (a stream transport, asyncio's or uvloop's: uvloop's are no asyncio.Transport
        # subclasses, so no isinstance check here)
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        self._fd = _plain_descriptor(transport)
        if self._close_when_made:
            transport.close()
        elif self._sink is None:
            transport.pause_reading()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._rbuf

    def buffer_updated(self, nbytes: int) -> None:
        view = self._rbuf[:nbytes]
        # (a DTPStreamWriter seals the bytes at once, or copies them; another writer may
        # keep what it is given)
        self.data_received(view if self._views else bytes(view))

    def data_received(self, data: bytes | memoryview) -> None:
        sink = self._sink
        if sink is None:
            # read before attach(): uvloop starts reading after connection_made returns,
            # so its pause there does not hold (asyncio's does). Kept for attach(), and
            # paused again: nothing more is read until there is a DTP stream to take it
            self._early.append(bytes(data))
            if self.transport is not None:
                self.transport.pause_reading()
            return
        try:
            hold = self._count(len(data))
        except DTPError as exc:
            # this tunnel cannot go on: what the count covered goes on, then it is cut
            # (by splice_leg, which lets the other direction's bytes reach the peer first)
            if isinstance(exc, PaidInPart) and exc.covered:
                with contextlib.suppress(DTPError, RuntimeError):
                    sink.write(data[: exc.covered])
            self._stop(exc)
            return
        except RuntimeError as exc:
            self.fail(exc)
            return
        try:
            sink.write(data)
        except (DTPError, RuntimeError) as exc:
            self.fail(exc)
            return
        if not self._draining and sink.get_write_buffer_size() > HIGH_WATER:
            self._draining = True
            assert self.transport is not None
            self.transport.pause_reading()
            self._loop.create_task(self._drain(sink))
        if hold and self.transport is not None and not self._throttled:
            self._throttled = True
            self.transport.pause_reading()
            self._loop.call_later(hold, self._unthrottle)

    def _unthrottle(self) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or self.lost.done():
            # the tunnel ended while held: nothing more to count or resume. (Else it would
            # go on asking the count every few ms -- a status write each time -- while the
            # connection stays unpaid, and then record a denial for a tunnel gone.)
            self._throttled = False
            return
        try:
            hold = self._count(0)
        except DTPError as exc:
            self._throttled = False
            self._stop(exc)
            return
        except RuntimeError as exc:
            self._throttled = False
            self.fail(exc)
            return
        if hold:
            self._loop.call_later(hold, self._unthrottle)
            return
        self._throttled = False
        if not self._draining and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    async def _drain(self, sink: _DTPWriter) -> None:
        try:
            await sink.drain()
        except DTPError as exc:
            self.fail(exc)
            return
        self._draining = False
        if not self._throttled and self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    def eof_received(self) -> bool:
        if self._sink is None:
            self._early_eof = True  # (passed on by attach(), after the bytes before it)
        else:
            with contextlib.suppress(DTPError, RuntimeError):
                self._sink.write_eof()
        self._finish(self.read_done)
        self._loop.call_later(RESET_CHECK, self._check_reset)
        return True  # keep the transport open: the other direction may still flow

    def _check_reset(self) -> None:
        """After the peer's EOF the transport reads no more, so a reset from the peer
        (a client giving up on a response) would go unseen until the next write -- never,
        while the far side sends nothing: the tunnel would stay open. The socket's
        pending error tells."""
        transport = self.transport
        if transport is None or transport.is_closing() or self.lost.done():
            return
        sock = transport.get_extra_info("socket")
        try:
            code = 0 if sock is None else sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except OSError as exc:
            self.fail(exc)
            return
        if code:
            self.fail(OSError(code, os.strerror(code)))  # (BrokenPipeError after an EOF)
        else:
            self._loop.call_later(RESET_CHECK, self._check_reset)

    def connection_lost(self, exc: Exception | None) -> None:
        # the descriptor is closed now and its number free for the next socket opened:
        # write_chunk must never write to it again
        self._fd = -1
        if exc is not None and self.error is None:
            self.error = exc
        self._can_write = True
        self._writable.set()
        self._finish(self.read_done)
        self._finish(self.lost)

    def pause_writing(self) -> None:
        self._can_write = False
        self._writable.clear()

    def resume_writing(self) -> None:
        self._can_write = True
        self._writable.set()
        resume, self._on_writable = self._on_writable, None
        if resume is not None:
            resume()

    # -- tunnel ------------------------------------------------------------------------------

    @staticmethod
    def _finish(future: asyncio.Future[None]) -> None:
        if not future.done():
            future.set_result(None)

    def attach(self, sink: _DTPWriter) -> None:
        """Start reading into ``sink`` (what was read before, first)."""
        self._sink = sink
        self._views = type(sink) is DTPStreamWriter
        early, self._early = self._early, []
        for data in early:
            self.data_received(data)
        if self._early_eof:
            with contextlib.suppress(DTPError, RuntimeError):
                sink.write_eof()
            return
        if (
            self.transport is not None
            and not self.transport.is_closing()
            and not self._draining
            and not self._throttled
        ):
            self.transport.resume_reading()

    def close(self) -> None:
        """Close the TCP connection (at once, or as soon as it is made)."""
        if self.transport is None:
            self._close_when_made = True
        else:
            self.transport.close()

    def _stop(self, exc: BaseException) -> None:
        """End this tunnel with ``exc`` without resetting the TCP peer yet: reading
        stops, and :func:`splice_leg` resets it once what was sent to it left us."""
        if self.error is None:
            self.error = exc
        if self.transport is not None and not self.transport.is_closing():
            self.transport.pause_reading()
        self._finish(self.read_done)

    async def deliver(self, idle: float, most: float) -> None:
        """Stop reading, and wait until what was written to the TCP peer left us: the
        transport's buffer, and the kernel's send queue, acknowledged by the peer
        (where the kernel tells: :func:`_unacknowledged`). A reset drops both unsent;
        the peer reads what it acknowledged before it sees the reset. The wait goes on
        while the peer takes some of it within every ``idle`` seconds (a slow reader
        gets all it was sent), for ``most`` seconds at most."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        with contextlib.suppress(RuntimeError):
            transport.pause_reading()
        loop = self._loop
        start = moved = loop.time()
        least = -1
        while not transport.is_closing() and not self.lost.done():
            left = transport.get_write_buffer_size() + _unacknowledged(self._fd)
            if not left:
                return
            now = loop.time()
            if least < 0 or left < least:
                least, moved = left, now
            if now - moved >= idle or now - start >= most:
                return
            await asyncio.sleep(DELIVERY_POLL)

    def fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        if self.transport is not None:
            reset_tcp(self.transport)  # cut short: not the clean end of the transfer
        self._finish(self.read_done)

    def write_chunk(self, transport: asyncio.Transport, data: memoryview) -> None:
        """Write ``data``, a view valid only now, to the TCP peer: straight to the
        socket while the transport holds nothing unsent (the order kept, no copy), and
        what the socket does not take now a copy queued on the transport (which may
        keep what it is given: uvloop's does). An error of the direct write is left to
        the transport's own write, which reports it as it always does. A closing
        transport's socket is never written to directly (its descriptor may be closed
        and its number reused at any moment): what it gets goes through its write."""
        sent = 0
        if self._fd >= 0 and not transport.is_closing() and not transport.get_write_buffer_size():
            try:
                sent = os.write(self._fd, data)
            except OSError:
                sent = 0
        if sent < len(data):
            transport.write(bytes(data[sent:]))

    async def copy_from(self, source: _Reader, count: Callable[[int], float | None]) -> None:
        """Copy the DTP stream ``source`` to the TCP peer until EOF, then half-close.

        A :class:`dtp.aio.DTPStreamReader` pushes its bytes straight into the TCP
        transport (no task wake-up per chunk); while the transport is backed up, the
        stream holds its flow-control credit, so the DTP peer waits."""
        if isinstance(source, DTPStreamReader):
            await self._push_from(source, count)
            return
        while True:
            data = await source.read(CHUNK)
            if not data:
                break
            transport = self.transport
            if transport is None or transport.is_closing():
                raise ConnectionResetError("the TCP side of the tunnel closed")
            try:
                hold = count(len(data))
            except PaidInPart as exc:
                transport.write(data[: exc.covered])
                raise
            transport.write(data)
            if not self._writable.is_set():
                await self._writable.wait()
            while hold:
                await asyncio.sleep(hold)
                hold = count(0)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write_eof()

    async def _push_from(
        self, source: DTPStreamReader, count: Callable[[int], float | None]
    ) -> None:
        done: asyncio.Future[None] = self._loop.create_future()
        holds: set[str] = set()  # why the stream is paused: "writable", "rate"

        def hold(reason: str) -> None:
            if not holds:
                source.pause_sink()
            holds.add(reason)

        def release(reason: str) -> None:
            if reason in holds:
                holds.discard(reason)
                if not holds and not done.done():
                    source.resume_sink()

        def on_data(data: memoryview) -> None:
            if done.done():
                return  # the tunnel is cut: what arrives before the reset goes nowhere
            transport = self.transport
            if transport is None or transport.is_closing():
                done.set_exception(ConnectionResetError("the TCP side of the tunnel closed"))
                return
            try:
                wait = count(len(data))
            except DTPError as exc:
                # this tunnel cannot go on (a used-up deposit, unpaid usage): it alone is
                # cut, with this error; raised into the connection's input, it would close
                # the connection and every other tunnel on it. What the count covered of
                # this chunk is paid for: it goes on
                if isinstance(exc, PaidInPart) and exc.covered:
                    self.write_chunk(transport, data[: exc.covered])
                done.set_exception(exc)
                return
            self.write_chunk(transport, data)
            if not self._can_write:
                hold("writable")
                self._on_writable = lambda: release("writable")
            if wait and "rate" not in holds:
                hold("rate")
                self._loop.call_later(wait, look_again)

        def look_again() -> None:
            # the hold is over: resumed only once the count has nothing more to hold for
            if done.done():
                return
            try:
                wait = count(0)
            except DTPError as exc:
                done.set_exception(exc)
                return
            if wait:
                self._loop.call_later(wait, look_again)
            else:
                release("rate")

        def on_end(error: BaseException | None) -> None:
            if done.done():
                return
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(None)

        source.set_sink(on_data, on_end, views=True)
        try:
            await done
        finally:
            self._on_writable = None
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write_eof()


HIGH_WATER = 512 * 1024
CUT_DELIVERY = 5.0
"""Seconds a cut tunnel waits, with no progress, for what it sent its TCP peer to leave
us (the peer reading it) before the reset, which would drop what is still unsent; and
how long it waits for its DTP stream to send what it queued."""
CUT_DELIVERY_MOST = 120.0
"""Seconds a cut tunnel waits at most for a TCP peer that keeps reading what it was
sent, however slowly: what was paid for, up to the transport's high-water mark and the
kernel's send queue (some MiB), reaches a peer reading 64 KiB/s."""
DELIVERY_POLL = 0.01
RESET_CHECK = 1.0
"""Seconds between looks for a reset from a TCP peer that sent EOF (see
:meth:`TcpLeg._check_reset`)."""


async def splice_leg(
    leg: TcpLeg,
    reader: _Reader,
    writer: _DTPWriter,
    count_back: Callable[[int], float | None],
) -> BaseException | None:
    """Run a tunnel between an attached :class:`TcpLeg` and a DTP stream until both
    directions ended (or one failed); closes both. Returns the first error."""
    leg.attach(writer)
    back = asyncio.ensure_future(leg.copy_from(reader, count_back))
    error: BaseException | None = None
    cut = True  # until both directions ended: a cancel (a stopping daemon) cuts too
    try:
        try:
            await asyncio.wait([back, leg.read_done], return_when=asyncio.FIRST_COMPLETED)
            if back.done():
                error = back.exception()  # the DTP side failed, or ended: wait for TCP EOF
                if error is None:
                    await leg.read_done
                    error = leg.error
            else:
                error = leg.error  # the TCP side failed, or sent EOF: wait for the DTP side
                if error is None:
                    # ... or for the TCP side's loss (a reset after its EOF): the DTP side,
                    # paused for the lost transport's full buffer or idle, would wait for
                    # good
                    await asyncio.wait([back, leg.lost], return_when=asyncio.FIRST_COMPLETED)
                    if back.done():
                        back.result()
                    else:
                        error = leg.error or ConnectionResetError(
                            "the TCP side of the tunnel closed"
                        )
            cut = error is not None
        except Exception as exc:
            error = exc
        if cut:
            # what the tunnel passed on either way (counted, and paid for on a paid
            # service) reaches its peer before the resets, which would drop it unsent
            if not back.done():
                back.cancel()
            await asyncio.wait([back])
            await leg.deliver(CUT_DELIVERY, CUT_DELIVERY_MOST)
            await _stream_sent(writer, asyncio.get_running_loop().time() + CUT_DELIVERY)
    finally:
        if not back.done():
            back.cancel()
        if leg.transport is not None:
            if cut:
                reset_tcp(leg.transport)
            else:
                leg.transport.close()
        # a tunnel cut short ends as a reset on both sides, as a TCP proxy passes a
        # reset on: closed cleanly, the far TCP peer read the clean end of a transfer
        # cut in the middle (a backend reset mid-response looked like a full response)
        with contextlib.suppress(Exception):
            if cut:
                reset_stream(writer)
            else:
                writer.close()
    return error


async def _stream_sent(writer: _DTPWriter, deadline: float) -> None:
    """Wait until ``writer`` (a DTP stream) sent what was written to it, or it is
    closing (its connection ended: nothing more goes out), or ``deadline`` (the loop's
    time) passed."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(DTPError):
        while writer.get_write_buffer_size() and not writer.is_closing() and loop.time() < deadline:
            await asyncio.sleep(DELIVERY_POLL)


def _unacknowledged(fd: int) -> int:
    """Bytes in the kernel's send queue of the socket ``fd`` that its peer has not
    acknowledged (Linux's ``SIOCOUTQ``); 0 where that cannot be asked."""
    if fd < 0 or fcntl is None or _OUTQ is None:
        return 0
    try:
        raw = fcntl.ioctl(fd, _OUTQ, b"\0\0\0\0")
    except OSError:
        return 0
    return int(struct.unpack("i", raw)[0])


def reset_tcp(transport: asyncio.Transport) -> None:
    """Close a TCP connection with a reset (RST), not the FIN that tells its peer the
    transfer ended: ``abort()`` alone sends a FIN."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # a connection already closed: OSError on asyncio's socket; uvloop's pseudo-socket
        # makes a socket of the closed descriptor, -1: ValueError. Both suppressed, so
        # that the abort below always runs (tests/daemon/test_tunnel_resets.py, uvloop)
        with contextlib.suppress(OSError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def reset_stream(writer: _Writer) -> None:
    """End a tunnel's DTP stream with RESET_STREAM: the peer's reads raise
    :class:`dtp.errors.StreamReset` instead of seeing a clean end, and its end of the
    tunnel resets its TCP peer. Other writers are closed."""
    if isinstance(writer, DTPStreamWriter):
        writer.reset(TUNNEL_RESET)
    else:
        writer.close()
