"""The peer's clean close of the connection ends a graph sync session run on a stream
other than the first as the end of that stream does (since the close cuts such a stream
short, its reads raise ConnectionClosed with code 0, and a live session raised it where
it had returned; a one-shot catch-up raised it where GraphSyncError is documented). And
a sink attached after the connection ended ends as one attached before it did (it got
ConnectionClosed even on the first stream, and after our own clean close). Real
connections on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import msgpack
import pytest

import dtp.aio
import dtp.socket
from dtp.errors import ConnectionClosed, DTPError
from dtp.graph import Graph, GraphSyncError, SyncSession, sync_blocking, sync_stream
from dtp.graph.sync import HELLO, VERSION
from dtp.identity.keys import HostIdentity

SERVER = HostIdentity.generate()
BOUND = 10.0

Reader = dtp.aio.DTPStreamReader
Writer = dtp.aio.DTPStreamWriter


def _frame(message: list[object]) -> bytes:
    body = msgpack.packb(message, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def _hello_with_fields() -> bytes:
    """A HELLO that says 5 fields are to come (a catch-up is not done until they are)."""
    return _frame([HELLO, VERSION, os.urandom(16), 5, 12345])


# -- blocking: a peer that syncs on a second stream, then closes the connection ------------


@contextlib.contextmanager
def _second_stream() -> Iterator[tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket]]:
    """(the peer's connection, our second stream on it, whose first bytes the peer has
    not yet seen: it accepts the stream once they come)."""
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER) as srv:
        client = dtp.socket.create_connection(
            srv.address, timeout=BOUND, server_key=SERVER.noise_public
        )
        try:
            client.sendall(b"?")
            peer, _ = srv.accept(timeout=BOUND)
            try:
                peer.settimeout(BOUND)
                assert peer.recv(1) == b"?"
                stream = client.open_stream()
                stream.settimeout(BOUND)
                try:
                    yield peer, stream
                finally:
                    stream.close()
            finally:
                peer.close()
        finally:
            client.close()


def _sync_then(peer: dtp.socket.DTPSocket, graph: Graph, end: Callable[[], None]) -> None:
    """The peer's side: accept the stream, run the initial exchange by hand (a real
    SyncSession), then ``end()`` -- never ending the stream itself."""
    stream = peer.accept_stream()
    session = SyncSession(graph)
    session.start()
    try:
        while not session.synced:
            out = session.data_to_send()
            if out:
                stream.sendall(out)
                continue
            session.receive_data(stream.recv(1 << 16))
        out = session.data_to_send()
        if out:
            stream.sendall(out)
    finally:
        session.close()
    end()


def _in_thread(target: Callable[[], None]) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, errors


def test_a_live_blocking_sync_on_a_second_stream_returns_at_the_peers_clean_close(
    tmp_path: Path,
) -> None:
    ours, theirs = Graph(tmp_path / "ours.db"), Graph(tmp_path / "theirs.db")
    try:
        ours.put("a", {"v": 1})
        theirs.put("b", {"v": 2})
        with _second_stream() as (peer, stream):
            thread, errors = _in_thread(lambda: _sync_then(peer, theirs, peer.close))
            session = sync_blocking(ours, stream)  # (it raised ConnectionClosed)
            thread.join(BOUND)
            assert not errors
            assert session.synced
            assert ours.get("b") == {"v": 2} and theirs.get("a") == {"v": 1}

        # a close with an error code still raises it, as a reset and a local close do
        with _second_stream() as (peer, stream):
            thread, errors = _in_thread(lambda: _sync_then(peer, theirs, lambda: peer.abort("x")))
            with pytest.raises(ConnectionClosed) as info:
                sync_blocking(ours, stream)
            assert info.value.code != 0
            thread.join(BOUND)
            assert not errors
    finally:
        ours.close()
        theirs.close()


def test_a_blocking_catch_up_on_a_second_stream_cut_short_raises_graph_sync_error() -> None:
    graph = Graph()
    try:
        with _second_stream() as (peer, stream):

            def peer_side() -> None:
                accepted = peer.accept_stream()
                accepted.sendall(_hello_with_fields())
                assert accepted.recv(1 << 16)  # our HELLO: the session is under way
                peer.close()  # clean, the 5 fields never sent, the stream never ended

            thread, errors = _in_thread(peer_side)
            # (it raised ConnectionClosed: the documented error is GraphSyncError)
            with pytest.raises(GraphSyncError, match="before the sync completed"):
                sync_blocking(graph, stream, until_synced=True)
            thread.join(BOUND)
            assert not errors
    finally:
        graph.close()


def test_a_live_sync_cut_short_mid_message_ends_as_at_the_end_of_the_stream() -> None:
    """A message the close cut ends the session as a FIN after it does (a close that
    races the peer's own send cuts one): nothing of it is merged, and no error."""
    graph = Graph()
    try:
        with _second_stream() as (peer, stream):

            def peer_side() -> None:
                accepted = peer.accept_stream()
                accepted.sendall(_frame([HELLO, VERSION, os.urandom(16), 0, 0])[:7])
                assert accepted.recv(1 << 16)
                peer.close()

            thread, errors = _in_thread(peer_side)
            session = sync_blocking(graph, stream)  # (it raised ConnectionClosed)
            thread.join(BOUND)
            assert not errors
            assert session.peer_root is None  # the cut HELLO was not taken
            assert len(graph) == 0
    finally:
        graph.close()


# -- asyncio ------------------------------------------------------------------------------


async def _serve(
    handler: Callable[[Reader, Writer], Awaitable[None]],
    client: Callable[[Reader, Writer], Awaitable[None]],
) -> None:
    server = await dtp.aio.start_server(handler, "127.0.0.1", 0, identity=SERVER)
    try:
        reader, writer = await dtp.aio.open_connection(
            *server.address, server_key=SERVER.noise_public, timeout=BOUND
        )
        try:
            async with asyncio.timeout(BOUND):
                await client(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(DTPError):
                await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()


def test_a_live_sync_stream_on_a_second_stream_returns_at_the_peers_clean_close() -> None:
    theirs = Graph()
    ours = Graph()
    theirs.put("b", {"v": 2})
    ours.put("a", {"v": 1})

    async def handler(reader: Reader, writer: Writer) -> None:
        r, w = await writer.accept_stream()
        session = SyncSession(theirs)
        session.start()
        try:
            while not session.synced:
                out = session.data_to_send()
                if out:
                    w.write(out)
                    await w.drain()
                    continue
                data = await r.read(1 << 16)
                assert data
                session.receive_data(data)
            w.write(session.data_to_send())
            await w.drain()
        finally:
            session.close()
        writer.close()  # the connection's clean close; the second stream never ended
        await writer.wait_closed()

    async def client(reader: Reader, writer: Writer) -> None:
        r, w = await writer.open_stream()
        session = await sync_stream(ours, r, w)  # (it raised ConnectionClosed)
        assert session.synced
        assert ours.get("b") == {"v": 2}

    try:
        asyncio.run(_serve(handler, client))
        assert theirs.get("a") == {"v": 1}
    finally:
        ours.close()
        theirs.close()


def test_an_asyncio_catch_up_on_a_second_stream_cut_short_raises_graph_sync_error() -> None:
    graph = Graph()

    async def handler(reader: Reader, writer: Writer) -> None:
        r, w = await writer.accept_stream()
        w.write(_hello_with_fields())
        assert await r.read(1 << 16)  # our HELLO
        writer.close()  # clean: the fields never sent, the stream never ended
        await writer.wait_closed()

    async def client(reader: Reader, writer: Writer) -> None:
        r, w = await writer.open_stream()
        # (it raised ConnectionClosed: the documented error is GraphSyncError)
        with pytest.raises(GraphSyncError, match="before the sync completed"):
            await sync_stream(graph, r, w, until_synced=True)

    try:
        asyncio.run(_serve(handler, client))
    finally:
        graph.close()


# -- a sink attached once the connection ended ----------------------------------------------


class _Sink:
    def __init__(self) -> None:
        self.data = bytearray()
        self.ends: list[BaseException | None] = []

    def attach(self, reader: Reader) -> _Sink:
        reader.set_sink(self.data.extend, self.ends.append)
        return self


def test_a_sink_attached_after_the_peers_clean_close_ends_as_reads_do() -> None:
    async def handler(reader: Reader, writer: Writer) -> None:
        for part, whole in ((b"partial", False), (b"whole", True)):
            r, w = await writer.accept_stream()
            assert await r.readexactly(3) == b"req"
            w.write(part)
            if whole:
                w.write_eof()
            await w.drain()
        writer.write(b"primary")
        writer.close()  # clean: the first of the two streams never ended
        await writer.wait_closed()

    async def client(reader: Reader, writer: Writer) -> None:
        streams = []
        for _ in range(2):
            r, w = await writer.open_stream()
            w.write(b"req")
            await w.drain()
            streams.append(r)
        cut, whole = streams
        assert await reader.read() == b"primary"  # the connection has ended
        assert await reader.read() == b""
        first = _Sink().attach(reader)
        assert first.ends == [None]  # (it was ConnectionClosed)
        short = _Sink().attach(cut)
        assert bytes(short.data) == b"partial"
        assert len(short.ends) == 1 and isinstance(short.ends[0], ConnectionClosed)
        assert short.ends[0].code == 0  # as its reads raise, and an early sink's end
        done = _Sink().attach(whole)
        assert bytes(done.data) == b"whole" and done.ends == [None]

    asyncio.run(_serve(handler, client))


def test_a_sink_attached_after_our_own_clean_close_ends_cleanly() -> None:
    async def handler(reader: Reader, writer: Writer) -> None:
        r, w = await writer.accept_stream()
        assert await r.readexactly(3) == b"req"
        w.write(b"partial")  # never ended
        await w.drain()
        await reader.read()  # until the client closes

    async def client(reader: Reader, writer: Writer) -> None:
        r, w = await writer.open_stream()
        w.write(b"req")
        await w.drain()
        assert await r.readexactly(7) == b"partial"
        writer.close()  # our own clean close of the connection
        with contextlib.suppress(DTPError):
            await writer.wait_closed()
        assert await r.read() == b""  # its reads end cleanly
        late = _Sink().attach(r)
        assert late.ends == [None]  # (it was ConnectionClosed)

    asyncio.run(_serve(handler, client))
