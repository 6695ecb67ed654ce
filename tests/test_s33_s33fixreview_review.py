"""Second-reader review of the s33 fixes (keys' directory check, graph sync at a clean
close, sinks attached late):

* an identity file reached through a symlinked directory was checked at the link's
  target only: the directory holding the symlink (which anyone may write to, and so
  replace the link) was never looked at, nor, for a relative path, the working
  directory's own name;
* ``sync_stream``'s writer task raised the ConnectionClosed (code 0) of the peer's
  clean close where the blocking runner's writer takes it for the end: a one-shot
  catch-up whose pushes were cut off raised it instead of the documented
  GraphSyncError;
* a sink attached to a stream closed here never ended while the connection lasted
  (its reads give b"" at once).

Real files and modes; real connections on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

import pytest

import dtp.aio
from dtp.connection import ConnectionConfig
from dtp.errors import DTPError, KeyFileError
from dtp.graph import Graph, GraphSyncError, SyncSession, sync_stream
from dtp.keys import HostIdentity

SERVER = HostIdentity.generate()
BOUND = 10.0

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")


# -- keys: the directories holding symlinks on the way -------------------------------------


@pytest.fixture
def identity() -> HostIdentity:
    return HostIdentity.generate()


@posix_only
def test_a_key_through_a_symlinked_directory_in_a_shared_one_is_refused(
    tmp_path: Path, identity: HostIdentity, monkeypatch: pytest.MonkeyPatch
) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    identity.save(private / "identity.json")
    shared = tmp_path / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)  # anyone may replace the link below with their own
    (shared / "keys").symlink_to(private)
    path = shared / "keys" / "identity.json"
    # (it loaded: only private, tmp_path and above were checked)
    with pytest.raises(KeyFileError, match=rf"{shared}, which holds {path}, is writable"):
        HostIdentity.load(path)
    # a relative path through it, too
    monkeypatch.chdir(shared)
    with pytest.raises(KeyFileError, match="writable by others"):
        HostIdentity.load("keys/identity.json")
    # a link whose target is relative, met further down: its directory counts too
    deeper = tmp_path / "deeper"
    deeper.mkdir(mode=0o700)
    (deeper / "via").symlink_to(Path("..") / "shared" / "keys")
    with pytest.raises(KeyFileError, match=f"{shared}, which holds"):
        HostIdentity.load(deeper / "via" / "identity.json")
    # the sticky bit: others may not replace the link they do not own
    os.chmod(shared, 0o1777)
    assert HostIdentity.load(path) == identity
    assert HostIdentity.load("keys/identity.json") == identity
    assert HostIdentity.load(deeper / "via" / "identity.json") == identity
    os.chmod(shared, 0o755)
    assert HostIdentity.load(path) == identity
    assert HostIdentity.load(path, allow_insecure=True) == identity
    # a symlink loop on the way: the open's error, a KeyFileError (not a walk for good)
    (tmp_path / "a").symlink_to(tmp_path / "b")
    (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(KeyFileError):
        HostIdentity.load(tmp_path / "a" / "identity.json")


# -- graph: a catch-up whose pushes the peer's clean close cut off ---------------------------


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


# -- a sink attached to a stream closed here ------------------------------------------------


def test_a_sink_attached_to_a_stream_closed_here_ends_at_once() -> None:
    async def handler(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        for _ in range(2):
            r, w = await writer.accept_stream()
            assert await r.readexactly(3) == b"req"
            with contextlib.suppress(DTPError):  # (the client may have stopped reading)
                w.write(b"partial")  # never ended
                await w.drain()
        await reader.read()  # until the client closes

    async def client(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        for read_first in (False, True):
            r, w = await writer.open_stream()
            w.write(b"req")
            await w.drain()
            if read_first:
                assert await r.readexactly(7) == b"partial"
            w.close()  # both ways: its reads give b"" from now on
            assert await r.read() == b""
            ends: list[BaseException | None] = []
            r.set_sink(lambda data: None, ends.append)
            # (it never ended while the connection lasted)
            assert ends == [None]

    async def main() -> None:
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

    asyncio.run(main())
