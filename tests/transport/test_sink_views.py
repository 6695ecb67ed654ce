"""Push delivery without a copy or a wake-up per chunk (the tunnels' forwarding path):
a sink set with ``views=True`` gets memoryviews of the connection's read buffer, and
bytes pushed to a sink wake no task waiting on the connection for something else (a
server's accept_stream() looks when it starts and at the stream's end, not per chunk).
The tunnel's TCP side writes such a view straight to its socket and queues a copy of
only what the socket did not take (:meth:`dtp.daemon._tunnel.TcpLeg.write_chunk`).
In-process server and client on 127.0.0.1, a socket pair for the TCP side."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from typing import Any

import pytest

import dtp.aio
from dtp.daemon._tunnel import TcpLeg, _plain_descriptor
from dtp.identity.keys import HostIdentity

CHUNKS = 40
CHUNK = 1000


def test_a_sink_with_views_gets_views_and_wakes_no_other_waiter() -> None:
    async def main() -> None:
        identity = HostIdentity.generate()
        report: asyncio.Future[tuple[bytes, set[type], int, list[Any]]] = (
            asyncio.get_running_loop().create_future()
        )

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            proto = writer._proto
            looks = 0
            plain_wait = proto.wait_change

            async def counted(key: int | None = None) -> None:
                nonlocal looks
                looks += 1
                await plain_wait(key)

            proto.wait_change = counted  # type: ignore[method-assign]
            accepting = asyncio.ensure_future(writer.accept_stream())
            await asyncio.sleep(0)  # (it waits now: one look)
            got: list[bytes] = []
            kinds: set[type] = set()
            ended: list[Any] = []
            done = asyncio.Event()

            def on_data(view: memoryview) -> None:
                kinds.add(type(view))
                got.append(bytes(view))  # (valid during the call only: copied to keep)

            def on_end(error: BaseException | None) -> None:
                ended.append(error)
                done.set()

            await asyncio.sleep(0.05)  # (what is buffered first comes as views too)
            reader.set_sink(on_data, on_end, views=True)
            await asyncio.wait_for(done.wait(), 10)
            accepting.cancel()
            report.set_result((b"".join(got), kinds, looks, ended))

        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity)
        async with server:
            _, writer = await dtp.aio.open_connection(
                *server.address, server_key=identity.noise_public
            )
            sent = bytearray()
            for i in range(CHUNKS):
                chunk = bytes([i]) * CHUNK
                writer.write(chunk)
                sent += chunk
                await writer.drain()
                await asyncio.sleep(0.005)  # (each its own record, most likely)
            writer.write_eof()
            data, kinds, looks, ended = await asyncio.wait_for(report, 10)
            writer.close()
            await writer.wait_closed()
        assert data == bytes(sent)
        assert kinds == {memoryview}
        assert ended == [None]
        # the accept_stream() waiter looked once when it started, and at most once more
        # (the stream's end concerns every waiter): not once per chunk
        assert looks <= 3, looks

    asyncio.run(main())


def test_pushed_bytes_wake_no_task_waiting_on_any_change() -> None:
    """A task waiting on any change of the connection (``wait_change()`` with no key, as
    a readuntil() of another stream waits) is not woken by the chunks pushed
    to a sink, only by what concerns it: here the stream's end."""

    async def main() -> None:
        identity = HostIdentity.generate()
        report: asyncio.Future[tuple[int, int]] = asyncio.get_running_loop().create_future()

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            proto = writer._proto
            done = asyncio.Event()
            chunks = 0
            wakes = 0

            def on_data(view: memoryview) -> None:
                nonlocal chunks
                chunks += 1

            def on_end(error: BaseException | None) -> None:
                done.set()

            async def watch() -> None:
                nonlocal wakes
                while not done.is_set():
                    await proto.wait_change()
                    wakes += 1

            reader.set_sink(on_data, on_end, views=True)
            watching = asyncio.ensure_future(watch())
            await asyncio.wait_for(done.wait(), 10)
            await asyncio.sleep(0)  # (the watcher sees the end)
            watching.cancel()
            report.set_result((chunks, wakes))

        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity)
        async with server:
            _, writer = await dtp.aio.open_connection(
                *server.address, server_key=identity.noise_public
            )
            for i in range(CHUNKS):
                writer.write(bytes([i]) * CHUNK)
                await writer.drain()
                await asyncio.sleep(0.005)  # (each its own record, most likely)
            writer.write_eof()
            chunks, wakes = await asyncio.wait_for(report, 10)
            writer.close()
            await writer.wait_closed()
        assert chunks >= CHUNKS // 4  # (records arrived one or a few at a time)
        # the end woke it; a control frame of the peer's might once more: not per chunk
        assert wakes <= 2, (chunks, wakes)

    asyncio.run(main())


def test_write_chunk_queues_a_copy_of_what_the_socket_did_not_take() -> None:
    """A view larger than the socket takes: the rest is queued as a copy (the buffer
    behind the view is reused at once), and the next chunk goes after it, in order."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        theirs.setblocking(False)
        transport, leg = await loop.connect_accepted_socket(lambda: TcpLeg(lambda n: None), ours)
        try:
            assert _plain_descriptor(transport) >= 0
            buf = bytearray(os.urandom(2 << 20))
            first = bytes(buf)
            leg.write_chunk(transport, memoryview(buf))
            assert transport.get_write_buffer_size() > 0  # (the socket took only part)
            buf[:] = bytes(len(buf))  # the buffer reused: the queued rest is a copy
            second = os.urandom(1000)
            leg.write_chunk(transport, memoryview(bytearray(second)))
            got = bytearray()
            want = len(first) + len(second)
            async with asyncio.timeout(20):
                while len(got) < want:
                    data = await loop.sock_recv(theirs, 1 << 20)
                    assert data
                    got += data
            assert bytes(got) == first + second
        finally:
            transport.close()
            theirs.close()
            await asyncio.sleep(0)

    asyncio.run(main())


def test_only_plain_stream_transports_are_written_directly() -> None:
    class _Other:
        def get_extra_info(self, name: str, default: Any = None) -> Any:
            raise AssertionError("not asked: the transport's kind says no first")

    assert _plain_descriptor(_Other()) == -1  # type: ignore[arg-type]


def test_write_chunk_after_the_peer_closed_reports_through_the_transport() -> None:
    """The TCP peer gone: the direct write's EPIPE/ECONNRESET falls back to the
    transport's write, which ends the connection with the error as it always does
    (nothing raised to the caller). Once the connection is lost its descriptor number
    may belong to another socket: nothing is written to it any more."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        transport, leg = await loop.connect_accepted_socket(lambda: TcpLeg(lambda n: None), ours)
        other_a, other_b = socket.socketpair()
        fd = _plain_descriptor(transport)
        taken = False
        try:
            assert fd >= 0
            theirs.close()
            await asyncio.sleep(0.01)
            leg.write_chunk(transport, memoryview(b"x" * 1000))  # raises nothing
            async with asyncio.timeout(5):
                await leg.lost
            assert isinstance(leg.error, OSError), leg.error
            # the closed descriptor's number now names another socket
            os.dup2(other_a.fileno(), fd)
            taken = True
            # (the tunnel writes only while the transport is open; uvloop's write refuses a
            # closed transport with RuntimeError, asyncio's drops what it is given)
            with contextlib.suppress(RuntimeError):
                leg.write_chunk(transport, memoryview(b"not for this socket"))
            other_b.setblocking(False)
            try:
                stray = other_b.recv(100)
            except BlockingIOError:
                stray = b""
            assert stray == b""
        finally:
            transport.close()
            await asyncio.sleep(0)
            if taken:
                os.close(fd)
            other_a.close()
            other_b.close()

    asyncio.run(main())


def test_a_view_kept_past_the_call_raises_on_use() -> None:
    """A views sink's view is released when on_data returns: kept and used later, it
    raises ValueError rather than read the connection's reused read buffer. Both ways a
    view is delivered: what was buffered before the sink was set, and what arrives
    after."""

    async def main() -> None:
        identity = HostIdentity.generate()
        report: asyncio.Future[tuple[list[memoryview], bytes]] = (
            asyncio.get_running_loop().create_future()
        )
        first_read = asyncio.Event()

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            kept: list[memoryview] = []
            got = bytearray()

            def on_data(view: memoryview) -> None:
                got.extend(view)  # (during the call: valid)
                kept.append(view)

            def on_end(error: BaseException | None) -> None:
                if not report.done():
                    report.set_result((kept, bytes(got)))

            await asyncio.sleep(0.05)  # the first chunk waits in the stream's buffer
            reader.set_sink(on_data, on_end, views=True)
            first_read.set()

        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity)
        async with server:
            _, writer = await dtp.aio.open_connection(
                *server.address, server_key=identity.noise_public
            )
            writer.write(b"a" * CHUNK)
            await writer.drain()
            await asyncio.wait_for(first_read.wait(), 10)
            writer.write(b"b" * CHUNK)
            writer.write_eof()
            kept, got = await asyncio.wait_for(report, 10)
            writer.close()
            await writer.wait_closed()
        assert got == b"a" * CHUNK + b"b" * CHUNK
        assert len(kept) >= 2
        for view in kept:
            with pytest.raises(ValueError):
                bytes(view)

    asyncio.run(main())
