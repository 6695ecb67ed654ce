"""A stream the peer never ended is cut short, not complete, when the peer closes the
connection cleanly (as QUIC ends the streams a connection's close leaves unfinished):
its reads give what was buffered, then ConnectionClosed (they gave b"", a reply cut
short looked whole); the first stream, which the peer's close() ends, still reads b"".
Also asyncio's get_extra_info(name, default) for DTP keys that are unset (it gave None,
not ``default``), and drain() after a close here (it returned; asyncio's raises). Real
connections on 127.0.0.1; the paid one on a LocalLedger."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import ConnectionClosed, DTPError
from dtp.hostid.paid import ServicePolicy
from dtp.hostid.paid._aio import PaidReader, PaidWriter
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from tests.support.paid_twins import ident

SERVER = HostIdentity.generate()
BOUND = 10.0


# -- the peer's clean close cuts its unfinished streams short ----------------------------


def test_blocking_streams_the_peer_left_unfinished_raise_after_its_clean_close() -> None:
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER) as srv:
        client = dtp.socket.create_connection(
            srv.address, timeout=BOUND, server_key=SERVER.noise_public
        )
        try:
            client.sendall(b"?")
            peer, _ = srv.accept(timeout=BOUND)
            peer.settimeout(BOUND)
            assert peer.recv(1) == b"?"
            # three requests: B and C are answered in part, D whole (with its end)
            mine = [client.open_stream() for _ in range(3)]
            theirs = []
            for sock in mine:
                sock.sendall(b"req")
                accepted = peer.accept_stream()
                assert accepted.recv(3) == b"req"
                theirs.append(accepted)
            b, c, d = mine
            theirs[0].sendall(b"partial-b")
            theirs[1].sendall(b"partial-c")
            theirs[2].sendall(b"whole-d")
            theirs[2].shutdown(dtp.socket.SHUT_WR)
            peer.sendall(b"primary")
            peer.close()  # clean: CLOSE with NO_ERROR, B and C never ended

            assert b.recv(100) == b"partial-b"  # what came is read first
            with pytest.raises(ConnectionClosed) as info:
                b.recv(100)
            assert info.value.code == 0  # the close's code (NO_ERROR)
            with pytest.raises(ConnectionClosed):
                b.recv(100)  # (and again)
            with pytest.raises(ConnectionClosed):
                b.recv_into(bytearray(10))
            with c.makefile("rb") as f:
                assert f.read(9) == b"partial-c"
                with pytest.raises(ConnectionClosed):
                    f.read()
            # a stream whose end came ends cleanly, as does the first stream
            assert d.recv(100) == b"whole-d"
            assert d.recv(100) == b""
            assert client.recv(100) == b"primary"
            assert client.recv(100) == b""
            for sock in mine:
                sock.close()
        finally:
            client.close()


Reader = dtp.aio.DTPStreamReader
Writer = dtp.aio.DTPStreamWriter


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
            await client(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(DTPError):
                await writer.wait_closed()
    finally:
        server.close()
        await server.wait_closed()


def test_asyncio_streams_the_peer_left_unfinished_raise_after_its_clean_close() -> None:
    """Every read path: read, readexactly, readline, async iteration, push delivery."""
    ends: list[BaseException | None] = []

    async def handler(reader: Reader, writer: Writer) -> None:
        for part in (b"partial", b"no newline", b"abc", b"line\nhalf", b"pushed"):
            r, w = await writer.accept_stream()
            assert await r.readexactly(3) == b"req"
            w.write(part)  # and never ended
        writer.write(b"primary")
        writer.close()  # clean
        await writer.wait_closed()

    async def client(reader: Reader, writer: Writer) -> None:
        streams = []
        for _ in range(5):
            r, w = await writer.open_stream()
            w.write(b"req")
            await w.drain()
            streams.append(r)
        b, c, d, e, f = streams
        arrived = asyncio.Event()
        ended = asyncio.Event()

        def on_data(data: bytes) -> None:
            arrived.set()

        def on_end(error: BaseException | None) -> None:
            ends.append(error)
            ended.set()

        f.set_sink(on_data, on_end)
        async with asyncio.timeout(BOUND):
            assert await b.read(100) == b"partial"
            with pytest.raises(ConnectionClosed) as info:
                await b.read(100)
            assert info.value.code == 0
            assert not b.at_eof()
            assert isinstance(b.exception(), ConnectionClosed)
            with pytest.raises(ConnectionClosed):
                await c.readline()  # (the partial line is no line)
            assert await c.read(100) == b"no newline"  # (kept, as for a failure)
            with pytest.raises(ConnectionClosed):
                await d.readexactly(10)
            lines = []
            with pytest.raises(ConnectionClosed):
                async for line in e:
                    lines.append(line)
            assert lines == [b"line\n"]
            await ended.wait()
            assert arrived.is_set()
            # the first stream's end is the connection's clean close
            assert await reader.read() == b"primary"
            assert reader.at_eof()
            assert reader.exception() is None

    asyncio.run(_serve(handler, client))
    assert len(ends) == 1 and isinstance(ends[0], ConnectionClosed), ends


# -- get_extra_info's default --------------------------------------------------------------


def test_get_extra_info_gives_the_default_for_unset_dtp_keys() -> None:
    seen: list[Any] = []

    async def handler(reader: Reader, writer: Writer) -> None:
        # a client connected by address names no ledger connection
        seen.append(writer.get_extra_info("peer_connection_id", "none"))
        seen.append(writer.get_extra_info("peer_connection_id"))
        seen.append(writer.get_extra_info("stream_id", "none"))  # set (0): not the default
        writer.close()

    async def client(reader: Reader, writer: Writer) -> None:
        assert await asyncio.wait_for(reader.read(), BOUND) == b""

    asyncio.run(_serve(handler, client))
    assert seen == ["none", None, 0]


# -- drain() after a close here -------------------------------------------------------------


def test_drain_after_a_close_here_raises() -> None:
    got: list[object] = []

    async def handler(reader: Reader, writer: Writer) -> None:
        r, _w = await writer.accept_stream()
        await r.read()
        await reader.read()

    async def client(reader: Reader, writer: Writer) -> None:
        _r, w = await writer.open_stream()
        w.write(b"half")
        w.write_eof()
        await w.drain()  # a half-close is no close: drain() goes on as before
        w.close()
        with pytest.raises(ConnectionClosed) as info:
            await w.drain()
        assert isinstance(info.value, ConnectionError)
        await asyncio.wait_for(w.wait_closed(), BOUND)
        _r2, w2 = await writer.open_stream()
        w2.write(b"x")
        await w2.drain()
        writer.close()  # the connection
        with pytest.raises(ConnectionClosed):
            await writer.drain()
        await asyncio.wait_for(writer.wait_closed(), BOUND)
        with pytest.raises(ConnectionClosed):
            await w2.drain()  # a stream of the connection closed here
        got.append("done")

    asyncio.run(_serve(handler, client))
    assert got == ["done"]


SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=5000)
PORT = 7132
PAID_SERVER, PAID_CLIENT = ident(0xA5), ident(0xA6)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[tuple[LocalLedger, str, Path]]:
    ledger = LocalLedger(tmp_path / "ledger.db")
    host_id = ledger.create_host(PAID_SERVER, PAID_SERVER.noise_public)
    ledger.add_service(PAID_SERVER, host_id, PORT, "streamend", SLA)
    ledger.faucet(PAID_CLIENT.sui_address, 10_000_000)
    try:
        yield ledger, host_id, tmp_path / "receipts.db"
    finally:
        ledger.close()


def test_paid_drain_after_close_raises(ledger: tuple[LocalLedger, str, Path]) -> None:
    """The paid writer's close() of the first stream closes the wrapped writer only
    once the final receipt came: drain() meanwhile returned."""
    local, host_id, receipts = ledger
    got: list[object] = []
    done = threading.Event()

    async def handler(reader: PaidReader, writer: PaidWriter) -> None:
        try:
            assert await reader.readexactly(2) == b"go"
            writer.write(b"k")
            writer.close()
            try:
                await writer.drain()
                got.append("returned")
            except ConnectionClosed as exc:
                got.append(exc)
            await writer.wait_closed()
        finally:
            done.set()

    async def main() -> None:
        server = await dtp.aio.serve(
            host_id,
            PORT,
            handler,
            ledger=local,
            identity=PAID_SERVER,
            receipts=receipts,
            policy=ServicePolicy(allowance=1000),
        )
        async with server:
            reader, writer = await dtp.aio.open_connection(
                f"dtp://{host_id}:{PORT}",
                timeout=BOUND,
                ledger=local,
                identity=PAID_CLIENT,
                deposit=SLA.min_deposit,
            )
            try:
                writer.write(b"go")
                await writer.drain()
                assert await asyncio.wait_for(reader.read(), BOUND) == b"k"
                await asyncio.wait_for(asyncio.to_thread(done.wait, BOUND), BOUND + 1)
            finally:
                writer.close()
                with contextlib.suppress(DTPError):
                    await asyncio.wait_for(writer.wait_closed(), BOUND)

    asyncio.run(main())
    assert len(got) == 1 and isinstance(got[0], ConnectionClosed), got
