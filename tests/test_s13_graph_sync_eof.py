"""A one-shot catch-up (``until_synced=True``, connect()'s default) that did not happen
raises instead of returning as if it had: a peer that closes the stream before its END
(GraphSyncError; connect() and sync_stream() returned, ``session.synced`` False), and a
peer that sends its END and then stops reading what we push (connect()'s timeout: our
END was only queued, the writer's DTPTimeoutError was dropped and connect() returned
with ``synced`` True and nothing delivered)."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading
import time

import msgpack
import pytest

import dtp.aio
import dtp.socket
from dtp.errors import DTPTimeoutError
from dtp.graph import Graph, GraphSyncError, connect, sync_stream
from dtp.graph.sync import END, HELLO, VERSION
from dtp.keys import HostIdentity


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
