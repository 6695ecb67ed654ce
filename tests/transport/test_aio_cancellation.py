"""dtp.aio against the asyncio semantics its users rely on: cancelled waits, the loop
ending after ``close()``, a client callback that fails with a DTP error, and reads on a
connection whose peer was killed. Real sockets on 127.0.0.1; the killed peer is the
echo server of tests/support/servers.py in its own process.

dtp.aio as an asyncio user expects it: a cancellation is never swallowed.

On Python 3.11 ``asyncio.wait_for`` returns its inner result when the cancel comes
after the inner task finished but before ``wait_for`` woke: a cancelled
``open_connection(..., timeout=...)`` returned a live connection, and a server's
connection task cancelled (the loop ending) as its handshake completed ran the client
callback on, so ``asyncio.run`` waited on it for good; a writer's close over an
acknowledging carrier, cancelled as a change arrived, went on for up to 30 s.
In-process server and client on 127.0.0.1; the cancel is landed at that instant by a
wrapper around the protocol's ``_after_io`` / ``_notify`` (which still run): a real
race, made certain."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

import dtp.aio
import dtp.transport.asyncio._streams
from dtp.errors import ConnectionClosed, ConnectionLost, DTPError, DTPTimeoutError
from dtp.hostid.ledger_carrier._bridge import ledger_config
from dtp.hostid.paid._aio import PaidReader, PaidWriter
from dtp.hostid.paid._asyncio import PaidConnection
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import ConnectionConfig
from dtp.transport.asyncio._protocol import Protocol
from dtp.transport.asyncio._server import _Arrival
from tests.support.leaks import resource_warnings
from tests.support.procs import ServerProc, server_process

Handler = Callable[[dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def _connected(
    handle: Handler,
    server_window: int | None = None,
    client_config: ConnectionConfig | None = None,
) -> AsyncIterator[tuple[dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter]]:
    """A DTP server on 127.0.0.1 serving ``handle`` (its stream window
    ``server_window`` when given), and a client connection to it (made with
    ``client_config`` when given); the server is closed at the end."""
    identity = HostIdentity.generate()
    config = None
    if server_window is not None:
        config = ConnectionConfig(identity=identity, is_client=False, stream_window=server_window)
    server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity, config=config)
    async with server:
        yield await dtp.aio.open_connection(
            *server.address, server_key=identity.noise_public, config=client_config
        )


async def _buffered(reader: dtp.aio.DTPStreamReader, n: int) -> None:
    """Wait until ``n`` bytes are buffered on ``reader``'s stream."""
    async with asyncio.timeout(10):
        while len(reader._buffer()) < n:
            await asyncio.sleep(0.01)


def test_a_cancelled_wait_closed_leaves_the_close_going_on() -> None:
    """``asyncio.wait_for(writer.wait_closed(), short)`` timing out must not cancel the
    connection's closed future: a later ``wait_closed()`` raised CancelledError."""

    async def main() -> None:
        go = asyncio.Event()

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            await go.wait()  # the client's bytes stay queued on its side until then
            await reader.read()

        async with _connected(handle, server_window=64 * 1024) as (_reader, writer):
            writer.write(b"x" * (256 * 1024))  # beyond the server's window
            writer.close()  # waits for the queue to leave before it closes
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(writer.wait_closed(), 0.2)
            go.set()
            await asyncio.wait_for(writer.wait_closed(), 5)
            assert writer.transport is not None and writer.transport.is_closing()

    asyncio.run(main())


def test_close_without_wait_closed_at_the_loop_end_leaves_nothing_open() -> None:
    """As asyncio's ``StreamWriter.close()``: a writer closed as ``asyncio.run`` ends
    (its graceful close cancelled with the rest) does not leave its transport open.
    The peer is in another process, so nothing of its end closes ours meanwhile."""

    async def main(srv: ServerProc) -> None:
        reader, writer = await dtp.aio.open_connection(
            "127.0.0.1", srv.port, server_key=srv.key, timeout=10
        )
        writer.write(b"hi")
        assert await asyncio.wait_for(reader.readexactly(2), 5) == b"hi"
        writer.close()
        # returns: asyncio.run cancels the close under way

    with server_process("echo", api="asyncio") as srv:
        left = resource_warnings(lambda: asyncio.run(main(srv)))
    assert [m for m in left if "unclosed" in m] == []


def test_a_callback_failing_with_a_dtp_error_ends_the_connection() -> None:
    """A client callback that raises a DTPError of its own (here a write after
    write_eof()) while the connection goes on: the connection is aborted, as for any
    other exception, instead of left open with nobody serving it."""

    async def main() -> None:

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            writer.write_eof()
            writer.write(b"too late")  # LocalProtocolError

        async with _connected(handle) as (reader, writer):
            assert await asyncio.wait_for(reader.read(), 5) == b""
            with pytest.raises(ConnectionClosed, match="internal error"):
                await asyncio.wait_for(writer.recv_datagram(), 5)
            writer.close()
            await writer.wait_closed()

    asyncio.run(main())


@pytest.mark.parametrize("method", ["readexactly", "readuntil", "readline"])
def test_reads_on_a_killed_peer_raise_the_connection_error(method: str) -> None:
    """The peer process killed mid-stream: readexactly/readuntil/readline raise the
    connection's typed error (as read() does, and as asyncio's raise the connection's
    exception), not the IncompleteReadError / short line of a clean end; the bytes
    that came are left for read(), and at_eof() is False (it was True: a
    ``while not reader.at_eof()`` loop ended as if all had come)."""

    async def main() -> None:
        with server_process("echo", api="asyncio") as srv:
            reader, writer = await dtp.aio.open_connection(
                "127.0.0.1", srv.port, server_key=srv.key, timeout=10
            )
            writer.write(b"partial")
            await _buffered(reader, 7)
            srv.kill()
            call = {
                "readexactly": lambda: reader.readexactly(100),
                "readuntil": lambda: reader.readuntil(b"\n"),
                "readline": lambda: reader.readline(),
            }[method]
            with pytest.raises(ConnectionLost):
                await asyncio.wait_for(call(), 10)
            assert not reader.at_eof()  # (as asyncio's after the connection's error)
            assert await reader.read(100) == b"partial"
            assert not reader.at_eof()
            with pytest.raises(ConnectionLost):
                await reader.read(100)
            writer.close()
            await writer.wait_closed()

    asyncio.run(main())


def test_a_clean_close_still_ends_reads_with_incomplete_read() -> None:
    """The peer closing the connection cleanly (without write_eof) is an end, not an
    error: IncompleteReadError with what came, and readline() gives the short line."""

    async def main() -> None:

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            writer.write(b"part")
            writer.close()
            await writer.wait_closed()

        async with _connected(handle) as (reader, writer):
            with pytest.raises(asyncio.IncompleteReadError) as info:
                await asyncio.wait_for(reader.readexactly(10), 5)
            assert info.value.partial == b"part"
            assert await reader.readline() == b""
            assert reader.at_eof()
            writer.close()
            await writer.wait_closed()

    asyncio.run(main())


class _AlwaysPaid:
    """A paid connection's gate that always serves (PaidReader's side of it)."""

    async def wait_paid(self) -> None:
        return None

    def unpaid_end(self) -> bool:  # (the gate serves: never an end unpaid)
        return False

    def room(self, nbytes: int) -> int:
        return nbytes

    async def pace(self, nbytes: int) -> int:
        return nbytes

    async def throttle(self, nbytes: int = 0, requests: int = 0) -> None:
        return None


@pytest.mark.parametrize("kind", ["plain", "paid"])
def test_cancelled_readexactly_calls_give_no_credit_twice(kind: str) -> None:
    """A cancelled readexactly() puts back what it had gathered; taking those bytes
    again must not return their flow-control credit a second time. It did: each
    ``wait_for(reader.readexactly(n), t)`` that timed out let the peer send as much
    again beyond the window, so a reader polling that way buffered without bound.
    (``paid``: the same through dtp.hostid.paid._aio's PaidReader, which puts back alike.)"""
    window = 64 * 1024

    async def main() -> None:

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            writer.write(b"a" * (3 * window))  # let out as the client's reads give credit
            assert await writer.recv_datagram() == b"go"
            writer.write(b"b" * (40 * window))  # as far as the credit given goes
            writer.send_datagram(b"mark")  # behind what went out
            await reader.read()

        client = ConnectionConfig(
            identity=HostIdentity.generate(),
            is_client=True,
            stream_window=window,
            connection_window=window,
        )
        async with _connected(handle, client_config=client) as (reader, writer):
            reads: Any = reader if kind == "plain" else PaidReader(reader, _AlwaysPaid())  # type: ignore[arg-type]
            # a read larger than all that comes, cancelled until all 3 windows came
            async with asyncio.timeout(10):
                while len(reader._buffer()) < 3 * window:
                    with pytest.raises(TimeoutError):
                        await asyncio.wait_for(reads.readexactly(100 * window), 0.05)
            for _ in range(5):  # each takes the 3 windows back and puts them back
                with pytest.raises(TimeoutError):
                    await asyncio.wait_for(reads.readexactly(100 * window), 0.02)
            assert len(reader._buffer()) == 3 * window
            writer.send_datagram(b"go")  # behind every credit update sent
            assert await asyncio.wait_for(writer.recv_datagram(), 5) == b"mark"
            # credit for what was read once (3 windows) and a window ahead of it, and
            # the slack of credit sent each quarter window: not 5 times 3 windows more
            assert len(reader._buffer()) <= 3 * window + 2 * window
            assert await asyncio.wait_for(reads.readexactly(3 * window), 5) == b"a" * (3 * window)
            writer.abort()

    asyncio.run(main())


def test_drain_raises_when_the_peer_closed_with_writes_left_unsent() -> None:
    """The peer closes the connection cleanly while what was written here waits for
    flow-control credit it will never give: drain() raises ConnectionClosed (it
    returned as if all had gone out; asyncio's drain() raises once the connection is
    lost, dtp.socket's sendall() raises too)."""

    async def main() -> None:

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            await reader.readexactly(10)
            writer.close()
            await writer.wait_closed()

        async with _connected(handle, server_window=64 * 1024) as (reader, writer):
            writer.write(b"x" * 2_000_000)  # far beyond the server's window
            with pytest.raises(ConnectionClosed, match="before all that was written"):
                await asyncio.wait_for(writer.drain(), 5)
            assert await reader.read(10) == b""  # a clean end for the reader
            writer.close()
            await writer.wait_closed()

    asyncio.run(main())


def test_write_eof_after_close_does_nothing_as_asyncio() -> None:
    """As asyncio's (a closing transport ignores write_eof()): write_eof() on a stream
    already closed is a no-op. On an opened stream it raised LocalProtocolError (its
    close() had sent the end of the stream)."""

    async def main() -> None:

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            stream_reader, stream_writer = await writer.accept_stream()
            stream_writer.write(await stream_reader.read())
            stream_writer.write_eof()
            await reader.read()

        async with _connected(handle) as (_reader, writer):
            stream_reader, stream_writer = await writer.open_stream()
            stream_writer.write(b"abc")
            stream_writer.write_eof()
            assert await asyncio.wait_for(stream_reader.read(), 5) == b"abc"
            stream_writer.close()
            stream_writer.write_eof()
            assert stream_writer.is_closing()
            writer.close()
            writer.write_eof()
            await writer.wait_closed()

    asyncio.run(main())


class _RateLimited:
    """A paid connection's gate that serves, with rate limits that hold every read
    (PaidReader's side of it); counts the bytes charged to them."""

    def __init__(self) -> None:
        self.charged = 0
        self.requests = 0
        self.limited = True
        # what a put-back needs of the connection's state
        # (dtp.hostid.paid._asyncio.PaidConnection)
        self.charged_streams: set[int] = set()
        self.charged_datagrams: deque[bytes] = deque()
        self.proto: Any = None

    # the put-backs are the connection's own (they need only the state above)
    wake = PaidConnection.wake
    put_back_stream = PaidConnection.put_back_stream
    put_back_datagram = PaidConnection.put_back_datagram

    async def wait_paid(self) -> None:
        return None

    def unpaid_end(self) -> bool:  # (the gate serves: never an end unpaid)
        return False

    def room(self, nbytes: int) -> int:
        return nbytes

    def write_now(self, nbytes: int, first: bool = False) -> int:  # (no bytes/s limit: whole)
        return nbytes

    async def pace(self, nbytes: int) -> int:
        return nbytes

    def charge_sent(self, nbytes: int) -> bool:
        self.charged += nbytes
        return False

    async def throttle(self, nbytes: int = 0, requests: int = 0) -> None:
        self.charged += nbytes
        self.requests += requests
        if self.limited and (nbytes or requests):
            await asyncio.sleep(30)


@pytest.mark.parametrize("method", ["read", "readexactly", "readline", "readuntil"])
def test_a_paid_read_cancelled_while_rate_limited_consumes_nothing(method: str) -> None:
    """dtp.hostid.paid._aio: a read cancelled (asyncio.wait_for) while the rate limits hold it
    after it took its bytes puts them back, charged once (dropped, they would be lost:
    the stream would go on without them)."""

    async def main() -> None:

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            writer.write(b"hello world\n")
            await reader.read()

        async with _connected(handle) as (reader, writer):
            await _buffered(reader, 12)
            gate = _RateLimited()
            paid = PaidReader(reader, gate)  # type: ignore[arg-type]
            call = {
                "read": lambda: paid.read(5),
                "readexactly": lambda: paid.readexactly(5),
                "readline": lambda: paid.readline(),
                "readuntil": lambda: paid.readuntil(b" "),
            }[method]
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(call(), 0.1)
            charged = gate.charged
            assert charged in (5, 6, 12)  # what the read had taken
            gate.limited = False
            assert await asyncio.wait_for(paid.readexactly(12), 5) == b"hello world\n"
            assert gate.charged == 12  # each byte once
            writer.close()
            await writer.wait_closed()

    asyncio.run(main())


def test_a_paid_accept_stream_cancelled_while_rate_limited_keeps_the_stream() -> None:
    """dtp.hostid.paid._aio: accept_stream() cancelled while the request rate holds it puts
    the stream it had taken back for the next accept_stream(), charged once (it was
    lost: its client waited on it for good)."""

    async def main() -> None:
        gate = _RateLimited()

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            assert await reader.readexactly(2) == b"go"  # the stream came before it
            gate.proto = writer._proto
            paid = PaidWriter(writer, gate)  # type: ignore[arg-type]
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(paid.accept_stream(), 0.1)
            gate.limited = False
            stream_reader, stream_writer = await asyncio.wait_for(paid.accept_stream(), 5)
            stream_writer.write(await stream_reader.readexactly(3))
            await reader.read()

        async with _connected(handle) as (_reader, writer):
            stream_reader, stream_writer = await writer.open_stream()
            stream_writer.write(b"req")
            writer.write(b"go")
            assert await asyncio.wait_for(stream_reader.readexactly(3), 5) == b"req"
            assert gate.requests == 1
            writer.close()
            await writer.wait_closed()

    asyncio.run(main())


def test_a_client_gone_during_the_accept_hook_is_a_failed_handshake(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The client gives up (its connect timed out) while the server's async accept
    hook runs: the server counts a failed handshake and ends the connection. Its task
    died with accept()'s LocalProtocolError ("Task exception was never retrieved")."""
    protos: list[_Arrival] = []
    make = dtp.aio.DTPServer._protocol_factory

    def recording(self: dtp.aio.DTPServer, *args: Any, **kw: Any) -> _Arrival:
        arrival = make(self, *args, **kw)
        protos.append(arrival)
        return arrival

    monkeypatch.setattr(dtp.aio.DTPServer, "_protocol_factory", recording)
    problems: list[dict[str, Any]] = []
    called: list[bool] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, c: problems.append(c))
        identity = HostIdentity.generate()

        async def hook(address: str) -> None:
            # until the client's end has reached the server
            proto = protos[0].proto  # (its handshake began: the hook runs)
            while proto is not None and proto.session.terminated is None:
                await asyncio.sleep(0.01)

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            called.append(True)

        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity, accept=hook)
        async with server:
            with pytest.raises(DTPTimeoutError):
                await dtp.aio.open_connection(
                    *server.address, server_key=identity.noise_public, timeout=0.3
                )
            async with asyncio.timeout(5):
                while server.handshakes_failed == 0 or server._tasks:
                    await asyncio.sleep(0.01)
        gc.collect()  # a task's unretrieved error is reported when it is collected

    asyncio.run(main())
    assert problems == []
    assert called == []


class _StalledReader:
    """A blocking DTP server in a thread whose one connection is not read until
    :meth:`release`; then it reads to the end and records how the stream ended."""

    def __init__(self) -> None:
        import threading

        import dtp.socket

        self.identity = HostIdentity.generate()
        config = ConnectionConfig(identity=self.identity, is_client=False, stream_window=64 * 1024)
        self.server = dtp.socket.create_server(
            ("127.0.0.1", 0), identity=self.identity, config=config
        )
        self.go = threading.Event()
        self.outcome: list[object] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        sock, _ = self.server.accept(timeout=10)
        with sock:
            self.go.wait(10)
            sock.settimeout(10)
            try:
                while sock.recv(1 << 20):
                    pass
                self.outcome.append("clean end")
            except Exception as exc:
                self.outcome.append(exc)

    def release(self) -> object:
        self.go.set()
        self.thread.join(15)
        self.server.close()
        assert len(self.outcome) == 1
        return self.outcome[0]


def _assert_the_peer_reads_no_clean_end(
    close: Callable[[dtp.aio.DTPStreamWriter], Awaitable[None]],
) -> None:
    """In asyncio.run, a client writes far beyond a stalled peer's window, then
    ``close(writer)``: once released, the peer reads an error after what came, not the
    clean end of a stream cut short."""
    peer = _StalledReader()

    async def main() -> None:
        _reader, writer = await dtp.aio.open_connection(
            *peer.server.address, server_key=peer.identity.noise_public
        )
        writer.write(b"x" * 1_000_000)  # far beyond the server's window
        await close(writer)

    try:
        asyncio.run(main())
    finally:
        outcome = peer.release()
    assert isinstance(outcome, ConnectionClosed), outcome
    assert "before all that was written was sent" in str(outcome)


def test_close_cut_short_by_the_loop_end_is_no_clean_end_for_the_peer() -> None:
    """close() with bytes still queued, then asyncio.run ending: the connection is
    aborted with an error, so the peer does not read the clean end of a stream that
    was cut short."""

    async def close(writer: dtp.aio.DTPStreamWriter) -> None:
        writer.close()  # and asyncio.run ends

    _assert_the_peer_reads_no_clean_end(close)


def test_close_whose_linger_runs_out_is_no_clean_end_for_the_peer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """close() waits CLOSE_LINGER for queued bytes to leave; when they did not, the
    CLOSE says so (it said NO_ERROR: the peer read a clean end of a truncated stream)."""
    monkeypatch.setattr(dtp.transport.asyncio._streams, "CLOSE_LINGER", 0.3)

    async def close(writer: dtp.aio.DTPStreamWriter) -> None:
        writer.close()
        await asyncio.wait_for(writer.wait_closed(), 5)

    _assert_the_peer_reads_no_clean_end(close)


def test_drain_right_after_abort_raises() -> None:
    """As asyncio's (drain() after transport.abort() raises): abort() ends the
    connection at once for drain() and the reads, not only once the transport reports
    it lost (a drain() right after returned as if what was written had gone out)."""

    async def main() -> None:

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            await reader.read()

        async with _connected(handle) as (reader, writer):
            writer.write(b"x" * 100_000)
            writer.abort("given up")
            assert writer.is_closing()
            with pytest.raises(ConnectionClosed, match="given up"):
                await writer.drain()
            with pytest.raises(ConnectionClosed, match="given up"):
                await reader.read(10)
            await asyncio.wait_for(writer.wait_closed(), 5)

    asyncio.run(main())


def test_wait_closed_ends_when_the_peer_stopped_reading(monkeypatch: pytest.MonkeyPatch) -> None:
    """The peer process stopped (SIGSTOP) with the carrier's buffers full: close() then
    wait_closed() ends once the carrier made no progress for CARRIER_GRACE (it waited
    for good: the transport's close() waits to write what it holds)."""
    import os
    import signal

    monkeypatch.setattr(dtp.transport.asyncio._streams, "CLOSE_LINGER", 0.3)

    async def main(srv: ServerProc) -> None:
        _reader, writer = await dtp.aio.open_connection(
            "127.0.0.1", srv.port, server_key=srv.key, timeout=10
        )
        os.kill(srv.proc.pid, signal.SIGSTOP)
        try:
            transport = writer.transport
            assert transport is not None
            # until the carrier holds what the stopped peer will not take
            async with asyncio.timeout(8):
                while transport.get_write_buffer_size() == 0 or not writer.get_write_buffer_size():
                    writer.write(b"y" * (1 << 20))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(writer.drain(), 0.2)
            writer.close()
            await asyncio.wait_for(writer.wait_closed(), 5)
            assert transport.is_closing()
        finally:
            os.kill(srv.proc.pid, signal.SIGCONT)

    with server_process("sink", api="asyncio") as srv:
        asyncio.run(main(srv))


def test_closing_streams_with_unread_data_does_not_stall_the_others() -> None:
    """A stream closed with what the peer sent on it unread (two of them hold the
    connection's whole window): its bytes are dropped and their credit returned, and
    the peer is asked to stop, as the blocking API's close() does; the connection's
    other streams go on (they stalled for good), and the closed stream's reads end
    cleanly (readline() raised the StreamReset the peer answered the stop with)."""

    async def main() -> None:
        stopped: list[BaseException] = []

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            async def flood(stream_writer: dtp.aio.DTPStreamWriter) -> None:
                try:
                    stream_writer.write(b"z" * (5 << 20))  # beyond a stream's window
                    await stream_writer.drain()
                    while True:
                        stream_writer.write(b"z" * 65536)
                        await stream_writer.drain()
                except DTPError as exc:
                    stopped.append(exc)  # the peer asked us to stop

            floods = []
            for _ in range(2):
                _, stream_writer = await writer.accept_stream()
                floods.append(asyncio.ensure_future(flood(stream_writer)))
            assert await reader.readexactly(4) == b"ping"
            writer.write(b"pong" * 1000)
            await asyncio.gather(*floods)
            await reader.read()

        async with _connected(handle) as (reader, writer):
            closed = []
            for _ in range(2):
                stream_reader, stream_writer = await writer.open_stream()
                stream_writer.write(b"hi")
                await _buffered(stream_reader, 1)  # its flood has begun
                stream_writer.close()  # done with it: nothing of it read
                closed.append(stream_reader)
            writer.write(b"ping")
            assert await asyncio.wait_for(reader.readexactly(4000), 5) == b"pong" * 1000
            for stream_reader in closed:  # closed here: a clean end for every read
                assert await asyncio.wait_for(stream_reader.read(), 5) == b""
                assert await asyncio.wait_for(stream_reader.readline(), 5) == b""
                with pytest.raises(asyncio.IncompleteReadError):
                    await asyncio.wait_for(stream_reader.readexactly(1), 5)
                assert stream_reader.at_eof()
            async with asyncio.timeout(5):
                while len(stopped) < 2:
                    await asyncio.sleep(0.01)
            writer.close()
            await writer.wait_closed()

    asyncio.run(main())


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _after_data(monkeypatch: pytest.MonkeyPatch, then: Callable[[Protocol], None]) -> None:
    """Have ``then(protocol)`` run after each of the protocols' reads is applied (its
    ``_after_io``, which every carrier read ends with)."""
    real = Protocol._after_io

    def after_io(self: Protocol) -> None:
        real(self)
        then(self)

    monkeypatch.setattr(Protocol, "_after_io", after_io)


def test_open_connection_cancelled_as_its_handshake_completes_raises_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The task is cancelled in the loop iteration the server's acceptance arrives:
    when ``cancel()`` says it reached the task, awaiting it raises CancelledError and
    no connection is left open (it returned the connection, the cancel swallowed)."""

    async def main() -> None:
        identity = HostIdentity.generate()

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            await reader.read()
            writer.close()

        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity)
        async with server:
            loop = asyncio.get_running_loop()
            tasks: list[asyncio.Future[object]] = []
            reached: list[bool] = []

            def then(proto: Protocol) -> None:
                if proto.conn.is_client and proto.session.accepted and not reached:
                    reached.append(False)  # (once)
                    loop.call_soon(lambda: reached.__setitem__(0, tasks[0].cancel()))

            _after_data(monkeypatch, then)
            before = _fds()
            tasks.append(
                asyncio.ensure_future(
                    dtp.aio.open_connection(
                        *server.address, server_key=identity.noise_public, timeout=600
                    )
                )
            )
            outcome: BaseException | None = None
            try:
                _reader, writer = await asyncio.wait_for(asyncio.shield(tasks[0]), 60)
            except asyncio.CancelledError as exc:
                outcome = exc
            else:
                writer.close()
                await asyncio.wait_for(writer.wait_closed(), 30)
            assert reached, "the acceptance never arrived"
            if reached[0]:
                assert isinstance(outcome, asyncio.CancelledError), "cancellation swallowed"
            async with asyncio.timeout(30):
                while _fds() > before:
                    await asyncio.sleep(0.01)

    asyncio.run(main())


def test_a_server_connection_cancelled_as_its_handshake_completes_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server's task for a connection is cancelled (as asyncio.run does at its end)
    in the loop iteration the client's handshake completes: the task ends cancelled and
    the client sees its connection end. It ran the callback on, which waited for the
    client for good (asyncio.run hung on it)."""

    async def main() -> None:
        identity = HostIdentity.generate()

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            await reader.read()  # the client sends nothing: until it goes
            writer.close()

        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity)
        async with server:
            loop = asyncio.get_running_loop()
            cancelled: list[asyncio.Task[None]] = []
            reached: list[bool] = []

            def cancel(task: asyncio.Task[None]) -> None:
                reached.append(task.cancel())

            # the server reads the client's first record as its handshake starts (its
            # first record was read before it took a slot): in IK it completes then,
            # the connection's task made right behind it
            real = server._start_serving

            def start_then_cancel(arrival: _Arrival) -> None:
                real(arrival)
                assert arrival.proto is not None and arrival.proto.session.authenticated_address
                if not cancelled:
                    (task,) = server._tasks
                    cancelled.append(task)
                    loop.call_soon(cancel, task)

            monkeypatch.setattr(server, "_start_serving", start_then_cancel)
            reader, writer = await dtp.aio.open_connection(
                *server.address, server_key=identity.noise_public, timeout=60
            )
            try:
                async with asyncio.timeout(60):
                    while not reached:
                        await asyncio.sleep(0.01)
                assert reached == [True]
                (task,) = cancelled
                done, _ = await asyncio.wait([task], timeout=30)
                assert task in done, "the cancelled connection task runs on"
                assert task.cancelled()
                with pytest.raises(ConnectionError):
                    await asyncio.wait_for(reader.read(), 30)
            finally:
                writer.close()
                await asyncio.wait_for(writer.wait_closed(), 30)

    asyncio.run(main())


def test_a_close_over_an_acknowledged_carrier_cancelled_as_data_arrives_is_cancelled(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """close() over a carrier that acknowledges (the ledger carrier's config, here over
    TCP) with bytes held by flow control: its close task, cancelled (as asyncio.run does
    at its end) as the peer's bytes arrive, ends cancelled and the connection is
    aborted. The cancel was swallowed: the close went on waiting for room for up to
    30 s (asyncio.run with it)."""

    async def main() -> None:
        identity = HostIdentity.generate()
        server_config = ledger_config(ConnectionConfig(identity=identity, is_client=False))
        client_config = ledger_config(ConnectionConfig(identity=identity, is_client=True))
        ended = asyncio.Event()

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            # reads nothing (the client's bytes stay held by flow control), and keeps
            # sending: each arrival wakes the client's close
            try:
                for _ in range(60_000):
                    writer.write(b"t")
                    await asyncio.sleep(0.01)
            except ConnectionError:
                pass
            finally:
                ended.set()

        server = await dtp.aio.start_server(
            handle, "127.0.0.1", 0, identity=identity, config=server_config
        )
        async with server:
            loop = asyncio.get_running_loop()
            reader, writer = await dtp.aio.open_connection(
                *server.address, server_key=identity.noise_public, config=client_config, timeout=60
            )
            armed: list[bool] = []
            reached: list[bool] = []
            real = Protocol._notify

            def notify(self: Protocol) -> None:
                real(self)
                task = writer._close_task
                if self is writer._proto and armed and not reached and task is not None:
                    reached.append(False)
                    loop.call_soon(lambda: reached.__setitem__(0, task.cancel()))

            monkeypatch.setattr(Protocol, "_notify", notify)
            writer.write(b"x" * (4 << 20))  # beyond the window: held
            writer.close()
            task = writer._close_task
            assert task is not None
            # the close is in its wait for room by then
            loop.call_later(0.5, armed.append, True)
            async with asyncio.timeout(60):
                while not reached:
                    await asyncio.sleep(0.01)
            assert reached == [True]
            done, _ = await asyncio.wait([task], timeout=20)
            assert task in done, "the cancelled close goes on"
            assert task.cancelled()
            assert writer.is_closing()
            await asyncio.wait_for(ended.wait(), 30)
            with pytest.raises(ConnectionError):  # aborted: bytes were cut short
                await asyncio.wait_for(reader.read(), 30)

    asyncio.run(main())
