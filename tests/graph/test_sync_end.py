"""A one-shot catch-up (``until_synced=True``, connect()'s default) that did not happen
raises instead of returning as if it had: a peer that closes the stream before its END
(GraphSyncError; connect() and sync_stream() returned, ``session.synced`` False), and a
peer that sends its END and then stops reading what we push (connect()'s timeout: our
END was only queued, the writer's DTPTimeoutError was dropped and connect() returned
with ``synced`` True and nothing delivered).

A live sync session whose connection ends cleanly while its writer is in a send (a
GraphServer that closes as the session sends its part of the exchange) returns as a
session whose peer left: the clean close is no failure, neither for the writer that
gets the ConnectionClosed nor for a reader back at its loop's top before the end of
the stream (an order of the two threads that load can bring about, as in
tests/graph/test_sync_server.py's with-block test). Driven here by a stream double that
orders the two threads so: the server's side is a real SyncSession."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import threading
import time
from pathlib import Path
from typing import Any

import msgpack
import pytest

import dtp.aio
import dtp.socket
from dtp.errors import ConnectionClosed, DTPError, DTPTimeoutError
from dtp.graph import Graph, GraphSyncError, SyncSession, connect, sync_blocking, sync_stream
from dtp.graph.sync import END, HELLO, VERSION
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import ConnectionConfig


def _hello_with_fields() -> bytes:
    # a peer that says it holds 5 fields, then leaves before pushing them
    body = msgpack.packb([HELLO, VERSION, os.urandom(16), 5, 12345], use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def test_connect_raises_when_the_peer_leaves_before_end() -> None:
    identity = HostIdentity.generate()
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=identity)
    served = threading.Event()

    def handler(sock: dtp.socket.DTPSocket) -> None:
        try:
            sock.sendall(_hello_with_fields())
            sock.shutdown(socket.SHUT_WR)  # a clean end of its side, no END
            while sock.recv(1 << 16):  # until the client is gone
                pass
        except Exception:
            pass
        finally:
            sock.close()
            served.set()

    thread = threading.Thread(target=server.serve_forever, args=(handler,), daemon=True)
    thread.start()
    graph = Graph()
    try:
        with pytest.raises(GraphSyncError, match="before the sync completed"):
            connect(graph, server.address, server_key=server.noise_public_key, timeout=5)
        assert served.wait(5)
    finally:
        server.close()
        graph.close()


def test_sync_stream_raises_when_the_peer_leaves_before_end() -> None:
    async def main() -> None:
        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            writer.write(_hello_with_fields())
            writer.write_eof()
            while await reader.read(1 << 16):
                pass
            writer.close()

        identity = HostIdentity.generate()
        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity)
        reader, writer = await dtp.aio.open_connection(
            "127.0.0.1", server.address[1], server_key=identity.noise_public
        )
        graph = Graph()
        try:
            with pytest.raises(GraphSyncError, match="before the sync completed"):
                await asyncio.wait_for(sync_stream(graph, reader, writer, until_synced=True), 5)
        finally:
            writer.close()
            server.close()
            await server.wait_closed()
            graph.close()

    asyncio.run(main())


def test_connect_raises_when_the_peer_does_not_take_what_it_asked_for() -> None:
    identity = HostIdentity.generate()
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=identity)
    release = threading.Event()

    def handler(sock: dtp.socket.DTPSocket) -> None:
        # "I hold nothing, send me everything", END at once, then never read
        body = msgpack.packb([HELLO, VERSION, os.urandom(16), 0, 0], use_bin_type=True)
        end = msgpack.packb([END], use_bin_type=True)
        sock.sendall(struct.pack(">I", len(body)) + body + struct.pack(">I", len(end)) + end)
        release.wait(10)

    thread = threading.Thread(target=server.serve_forever, args=(handler,), daemon=True)
    thread.start()
    graph = Graph()
    for i in range(12):  # 12 MB: three times the stream window
        graph.put(f"big/{i}", {"v": "x" * 1_000_000})
    try:
        started = time.monotonic()
        with pytest.raises(DTPTimeoutError):
            connect(graph, server.address, server_key=server.noise_public_key, timeout=1)
        assert time.monotonic() - started < 5
    finally:
        release.set()
        server.close()
        graph.close()


class _ClosingStream:
    """A stream to ``server`` (a real session) whose connection ends cleanly during the
    client's second send (ConnectionClosed, code 0). The reads bring the server's
    bytes as it makes them; once the send has failed, one more read brings a byte (the
    start of a message that never completes, as a close cuts one), which sends the
    reader back to its loop's top; then the end."""

    def __init__(self, server: SyncSession) -> None:
        self.server = server
        self.sends = 0
        self.closed_in_send = threading.Event()
        self.lock = threading.Lock()
        self.pending = server.data_to_send()  # its HELLO
        self.answered = threading.Event()
        self.tail = [b"\x00"]

    def sendall(self, data: Any) -> None:
        with self.lock:
            self.sends += 1
            if self.sends == 1:
                self.server.receive_data(bytes(data))
                self.pending += self.server.data_to_send()
                self.answered.set()
                return
        self.closed_in_send.set()
        raise ConnectionClosed("the connection is closed")

    def recv_into(self, buf: Any) -> int:
        with self.lock:
            data, self.pending = self.pending, b""
        if not data and self.answered.wait(10):
            with self.lock:
                data, self.pending = self.pending, b""
        if not data:
            assert self.closed_in_send.wait(10)
            data = self.tail.pop() if self.tail else b""
        buf[: len(data)] = data
        return len(data)

    def abort(self, reason: str = "") -> None:
        pass


def test_a_clean_close_during_a_send_ends_a_live_session_without_error(tmp_path: Path) -> None:
    served = Graph(tmp_path / "served.db")
    peer = Graph(tmp_path / "peer.db")
    served.put("s", {"v": 1})
    peer.put("p", {"v": 2})
    server = SyncSession(served, live=True)
    server.start()
    stream = _ClosingStream(server)
    try:
        session = sync_blocking(peer, stream)
        assert isinstance(session, SyncSession)
        assert stream.closed_in_send.is_set()  # the close came during a send
    finally:
        server.close()
        served.close()
        peer.close()


SERVER = HostIdentity.generate()


BOUND = 10.0


def test_an_asyncio_catch_up_cut_off_mid_push_raises_graph_sync_error() -> None:
    """The peer sends its HELLO and END, reads nothing more and closes the connection
    cleanly: our pushes, held by its small window, never all go (drain() raises a
    ConnectionClosed with code 0). It raised that ConnectionClosed; the blocking
    runner (whose writer takes code 0 for the end) raises GraphSyncError."""
    ours, theirs = Graph(), Graph()
    for i in range(400):
        ours.put(f"n{i}", {"v": "x" * 2000})  # about 800 KB: past the writer's high water

    async def handler(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        session = SyncSession(theirs)
        session.start()
        try:
            writer.write(session.data_to_send())  # HELLO
            await writer.drain()
            while session.peer_root is None:
                data = await reader.read(4096)
                assert data
                session.receive_data(data)
            writer.write(session.data_to_send())  # END: it has nothing to push
            await writer.drain()
        finally:
            session.close()
        writer.close()  # clean, our pushes unread
        with contextlib.suppress(DTPError):
            await writer.wait_closed()

    async def main() -> None:
        config = ConnectionConfig(
            identity=SERVER, is_client=False, stream_window=16384, connection_window=32768
        )
        server = await dtp.aio.start_server(handler, "127.0.0.1", 0, identity=SERVER, config=config)
        try:
            reader, writer = await dtp.aio.open_connection(
                *server.address, server_key=SERVER.noise_public, timeout=BOUND
            )
            try:
                async with asyncio.timeout(BOUND):
                    with pytest.raises(GraphSyncError, match="before the sync completed"):
                        await sync_stream(ours, reader, writer, until_synced=True)
            finally:
                writer.close()
                with contextlib.suppress(DTPError):
                    await writer.wait_closed()
        finally:
            server.close()
            await server.wait_closed()

    try:
        asyncio.run(main())
    finally:
        ours.close()
        theirs.close()
