"""Streams of one connection take turns with its credit: while one thread (or task) keeps
stream S writing, a small write on stream T, queued for want of the connection's credit,
reaches the peer long before S's writer is done -- it went out only once S stopped --
on a blocking socket and with dtp.aio alike. And a blocking write on a stream with
bytes queued goes behind them without lending the stream to the lane first (a loan
would only be taken back by the general path at once)."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.protocol.connection import ConnectionConfig
from dtp.transport.blocking._engine import Engine
from tests.support.reads import recv_exactly
from tests.transport.small_window import SERVER_ID, WINDOW, window_pair

CHUNK = 64 << 10
LIMIT = 64 << 20  # what S's writer sends at most: far more than T's turn needs


@pytest.fixture
def pair() -> Iterator[tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket]]:
    with window_pair() as both:
        yield both


def test_a_small_write_goes_out_while_another_stream_keeps_writing(
    pair: tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket],
) -> None:
    client, server = pair
    t_client = client.open_stream()
    t_client.sendall(b"t")
    t_server = server.accept_stream()
    assert t_server.recv(1) == b"t"
    sent = [0]
    arrived = threading.Event()

    def write_s() -> None:
        data = os.urandom(CHUNK)
        while sent[0] < LIMIT and not arrived.is_set():
            client.sendall(data)
            sent[0] += CHUNK

    def read_s() -> None:
        buf = bytearray(CHUNK)
        while server.recv_into(buf):
            pass

    writer = threading.Thread(target=write_s)
    reader = threading.Thread(target=read_s, daemon=True)
    reader.start()
    writer.start()
    try:
        while sent[0] < 4 * WINDOW and writer.is_alive():
            writer.join(0.01)  # S is well under way (its credit taken over and over)
        assert writer.is_alive()
        t_client.sendall(b"hello")
        got = recv_exactly(t_server, 5)
        at = sent[0]
    finally:
        arrived.set()
        writer.join(30)
    assert got == b"hello"
    # T's bytes came while S's writer was still writing, not once it had stopped
    assert at < LIMIT
    t_client.close()
    t_server.close()


def test_a_write_behind_queued_bytes_lends_nothing(
    pair: tuple[dtp.socket.DTPSocket, dtp.socket.DTPSocket], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, server = pair
    client.sendall(b"s")
    assert server.recv(1) == b"s"  # the stream is lent from here
    engine = client._engine
    conn = engine.conn
    sid = client.stream_id
    client.sendall(os.urandom(3 * WINDOW))  # more than the window: the rest is queued
    assert conn.send_buffered(sid) > 0
    assert conn.lent_stream_id is None  # (queueing took the stream back)
    loans: list[int] = []
    original = Engine.lend

    def counted(self: Engine, stream_id: int) -> Any:
        loans.append(stream_id)
        return original(self, stream_id)

    monkeypatch.setattr(Engine, "lend", counted)
    assert client.send(b"more") == 4  # queued behind what waits
    assert loans == []
    assert conn.lent_stream_id is None
    monkeypatch.undo()
    want = 3 * WINDOW + 4
    got = 0
    while got < want:
        n = len(server.recv(CHUNK))
        assert n
        got += n
    assert got == want


def test_a_small_write_goes_out_while_another_task_keeps_writing() -> None:
    async def main() -> int:
        sent = [0]
        at: list[int] = []
        arrived = asyncio.Event()

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            async def read_s() -> None:
                while await reader.read(CHUNK):
                    pass

            task = asyncio.create_task(read_s())
            t_reader, _ = await writer.accept_stream()
            assert await t_reader.readexactly(6) == b"thello"
            at.append(sent[0])
            arrived.set()
            await task

        config = ConnectionConfig(identity=SERVER_ID, is_client=False, connection_window=WINDOW)
        server = await dtp.aio.start_server(
            handle, "127.0.0.1", 0, identity=SERVER_ID, config=config
        )
        async with server:
            _, writer = await dtp.aio.open_connection(
                *server.address, server_key=SERVER_ID.noise_public
            )
            _, t_writer = await writer.open_stream()
            t_writer.write(b"t")
            data = os.urandom(CHUNK)

            async def write_s() -> None:
                while sent[0] < LIMIT and not arrived.is_set():
                    writer.write(data)
                    await writer.drain()
                    sent[0] += CHUNK

            task = asyncio.create_task(write_s())
            async with asyncio.timeout(30):
                while sent[0] < 4 * WINDOW:
                    await asyncio.sleep(0.001)  # S is well under way
                t_writer.write(b"hello")
                await task
                await arrived.wait()
            t_writer.close()
            writer.close()
            await writer.wait_closed()
        return at[0]

    # T's bytes came while S's writer was still writing, not once it had stopped
    assert asyncio.run(main()) < LIMIT
