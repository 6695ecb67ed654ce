"""Graph sync against a peer that never reads: a session whose live backlog overflows
ends (SyncBacklogExceeded) even while its writer is blocked sending to that peer.

The writer watches ``lagging`` also while blocked in sendall / drain() on a peer that
does not read (the first exchange is not bounded by the backlog), so the session --
thread or task, connection, buffers -- does not live for as long as the peer stays
connected."""

from __future__ import annotations

import asyncio
import os
import struct
import threading
import time
from collections.abc import Callable

import msgpack
import pytest

import dtp.aio
import dtp.socket
from dtp.graph import Graph, GraphServer, SyncSession, sync_stream
from dtp.graph.sync import HELLO, VERSION, SyncBacklogExceeded
from dtp.identity.keys import HostIdentity

BIG = "x" * 1_000_000  # values of about 1 MB: a table of 12 MB is 3x the stream window


def _hello_of_an_empty_peer() -> bytes:
    body = msgpack.packb([HELLO, VERSION, os.urandom(16), 0, 0], use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def _big_graph() -> Graph:
    graph = Graph()
    for i in range(12):
        graph.put(f"big/{i}", {"v": BIG})
    return graph


def _wait_for(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def small_backlog(monkeypatch: pytest.MonkeyPatch) -> None:
    # the runners take SyncSession's default backlog (64 MiB): make it small here
    monkeypatch.setitem(SyncSession.__init__.__kwdefaults__, "max_backlog", 100_000)


@pytest.mark.usefixtures("small_backlog")
def test_blocking_session_blocked_in_sendall_ends_when_the_backlog_overflows() -> None:
    graph = _big_graph()
    server = GraphServer(graph, ("127.0.0.1", 0), HostIdentity.generate())
    peer = dtp.socket.create_connection(server.address, 5, server_key=server.noise_public_key)
    try:
        peer.sendall(_hello_of_an_empty_peer())  # "send me everything", then never read
        # the server's writer blocks in sendall on the first exchange; live changes
        # pile up behind it (more of them until the session ends: those put before the
        # server took the HELLO go out with the first exchange, not as live ones)
        deadline = time.monotonic() + 10
        i = 0
        while server.sessions != 1 and time.monotonic() < deadline:
            for _ in range(50):
                graph.put(f"live/{i}", {"v": "y" * 1000})
                i += 1
            _wait_for(lambda: server.sessions == 1, 0.05)
        assert server.sessions == 1, "the session never ended"
        assert server.errors == 0  # (SyncBacklogExceeded is not a protocol error)
    finally:
        peer.abort()
        server.close()
        graph.close()


@pytest.mark.usefixtures("small_backlog")
def test_asyncio_session_blocked_in_drain_ends_when_the_backlog_overflows() -> None:
    async def main() -> None:
        graph = _big_graph()
        ended: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            try:
                await sync_stream(graph, reader, writer)
                ended.set_result(None)
            except Exception as exc:
                ended.set_result(exc)
            finally:
                writer.close()

        identity = HostIdentity.generate()
        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity)
        _reader, writer = await dtp.aio.open_connection(
            "127.0.0.1", server.address[1], server_key=identity.noise_public
        )
        try:
            writer.write(_hello_of_an_empty_peer())  # then never read
            await writer.drain()

            done = threading.Event()
            ended.add_done_callback(lambda _: done.set())

            def changes() -> None:  # from another thread, as a local writer would
                # until the session ends: those put before the server took the HELLO
                # go out with the first exchange, not as live ones
                deadline = time.monotonic() + 10
                i = 0
                while not done.is_set() and time.monotonic() < deadline:
                    for _ in range(50):
                        graph.put(f"live/{i}", {"v": "y" * 1000})
                        i += 1
                    done.wait(0.05)

            thread = threading.Thread(target=changes)
            thread.start()
            exc = await asyncio.wait_for(ended, 15)
            await asyncio.to_thread(thread.join)
            assert isinstance(exc, SyncBacklogExceeded), exc
        finally:
            writer.abort()
            server.close()
            await server.wait_closed()
            graph.close()

    asyncio.run(main())
