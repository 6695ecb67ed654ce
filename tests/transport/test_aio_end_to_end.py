"""The asyncio API against real servers in another process, over 127.0.0.1."""

from __future__ import annotations

import asyncio
import os

import pytest

import dtp.aio
from dtp.errors import (
    ConnectionClosed,
    ConnectionLost,
    ConnectionRefused,
    DTPTimeoutError,
    HandshakeError,
    LocalProtocolError,
)
from dtp.identity.keys import HostIdentity
from tests.support.leaks import resource_warnings
from tests.support.procs import server_process

CLIENT = HostIdentity.generate()


@pytest.fixture(scope="module")
def echo_server(echo_processes):  # type: ignore[no-untyped-def]
    return echo_processes("asyncio")


def test_bad_arguments_raise_as_asyncio_streams_do(echo_server) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        with pytest.raises(ValueError, match="timeout must be > 0"):  # as the blocking API
            await dtp.aio.open_connection(
                "127.0.0.1", echo_server.port, server_key=echo_server.key, timeout=0
            )
        reader, writer = await dtp.aio.open_connection(
            "127.0.0.1", echo_server.port, server_key=echo_server.key, timeout=10
        )
        with pytest.raises(TypeError, match="bytes-like"):
            writer.write(None)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="bytes-like"):
            writer.write("text")  # type: ignore[arg-type]
        writer.write(b"")  # nothing, as asyncio's
        # zero bytes at once, with nothing buffered (asyncio's StreamReader does so)
        assert await asyncio.wait_for(reader.readexactly(0), 1) == b""
        assert await asyncio.wait_for(reader.read(0), 1) == b""
        with pytest.raises(ValueError):
            await reader.readexactly(-1)
        writer.write(b"intact")
        await writer.drain()
        assert await reader.readexactly(6) == b"intact"
        writer.close()
        await writer.wait_closed()

    asyncio.run(main())


def test_echo_and_stream_reader_api(echo_server) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        reader, writer = await dtp.aio.open_connection(
            "127.0.0.1", echo_server.port, server_key=echo_server.key, timeout=10
        )
        writer.write(b"first line\nsecond|rest")
        await writer.drain()
        assert await reader.readline() == b"first line\n"
        assert await reader.readuntil(b"|") == b"second|"
        assert await reader.readexactly(4) == b"rest"
        assert writer.get_extra_info("peer_static_key") == echo_server.key
        assert writer.get_extra_info("peername")[1] == echo_server.port
        r2, w2 = await writer.open_stream()
        w2.write(b"on stream two")
        w2.write_eof()
        assert await r2.read() == b"on stream two"
        writer.write_eof()
        assert await reader.read() == b""
        assert reader.at_eof()
        writer.close()
        await writer.wait_closed()

    asyncio.run(main())


def test_incomplete_read(echo_server) -> None:  # type: ignore[no-untyped-def]
    async def main() -> None:
        reader, writer = await dtp.aio.open_connection(
            "127.0.0.1", echo_server.port, server_key=echo_server.key
        )
        writer.write(b"abc")
        writer.write_eof()
        with pytest.raises(asyncio.IncompleteReadError) as info:
            await reader.readexactly(10)
        assert info.value.partial == b"abc"
        writer.close()
        await writer.wait_closed()

    asyncio.run(main())


def test_wrong_key_and_timeout(echo_server) -> None:  # type: ignore[no-untyped-def]
    # (a client on the deny list: tests/transport/test_socket_end_to_end.py, both APIs)
    async def main(srv) -> None:  # type: ignore[no-untyped-def]
        with pytest.raises(HandshakeError):
            await dtp.aio.open_connection(
                "127.0.0.1", srv.port, server_key=os.urandom(32), timeout=10
            )

    asyncio.run(main(echo_server))

    async def slow(srv) -> None:  # type: ignore[no-untyped-def]
        reader, writer = await dtp.aio.open_connection(
            "127.0.0.1", srv.port, server_key=srv.key, timeout=10
        )
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(reader.read(10), 0.3)
        writer.abort()

    with server_process("slow", api="asyncio") as srv:
        asyncio.run(slow(srv))


def test_in_process_server_accept_hook_async() -> None:
    server_id = HostIdentity.generate()

    async def main() -> None:
        async def hook(address: str) -> str | None:
            await asyncio.sleep(0)
            return None if address == CLIENT.sui_address else "strangers not welcome"

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            assert writer.peer_address == CLIENT.sui_address
            writer.write((await reader.readline()).upper())
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=server_id, accept=hook)
        async with server:
            host, port = server.address
            reader, writer = await dtp.aio.open_connection(
                host, port, server_key=server.noise_public_key, identity=CLIENT, timeout=10
            )
            writer.write(b"hello\n")
            assert await reader.readline() == b"HELLO\n"
            assert await reader.read() == b""
            writer.close()
            with pytest.raises(ConnectionRefused):
                await dtp.aio.open_connection(host, port, server_key=server.noise_public_key)
        with pytest.raises((ConnectionLost, DTPTimeoutError)):
            await dtp.aio.open_connection(host, port, server_key=server.noise_public_key, timeout=3)

    asyncio.run(main())


def test_a_cancelled_waiter_does_not_break_the_others() -> None:
    """Many tasks wait on one connection; one of them timing out (asyncio.wait_for)
    must not cancel the others' waits (they share the connection's change signal)."""

    async def main() -> None:
        identity = HostIdentity.generate()
        go = asyncio.Event()

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            await go.wait()
            writer.write(b"late")
            await writer.drain()
            await reader.read()

        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity)
        async with server:
            reader, writer = await dtp.aio.open_connection(
                *server.address, server_key=identity.noise_public
            )
            patient = asyncio.ensure_future(reader.readexactly(4))
            await asyncio.sleep(0.05)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(writer.recv_datagram(), 0.05)
            go.set()
            assert await asyncio.wait_for(patient, 5) == b"late"
            writer.close()
            await writer.wait_closed()

    asyncio.run(main())


def test_stream_sink_pushes_bytes_holds_credit_and_ends() -> None:
    """set_sink: bytes already buffered come first, then each chunk as it arrives; a
    paused sink holds flow-control credit (the sender stops at its window) until
    resumed; the end of the stream (or its reset) ends the sink once."""
    from dtp.protocol.connection import ConnectionConfig

    async def main() -> None:
        identity = HostIdentity.generate()
        window = 64 * 1024
        got: list[bytes] = []
        ended: list[BaseException | None] = []
        attached = asyncio.Event()

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            await reader.readexactly(5)  # b"first"
            await asyncio.sleep(0.1)  # let more arrive into the buffer
            sink = reader.set_sink(got.append, ended.append)
            sink.paused = True
            attached.set()
            await asyncio.sleep(0.3)
            held = sink.held
            assert held <= window + 16  # the sender waits at its window
            reader.resume_sink()
            await asyncio.sleep(0.5)
            writer.write(str(sum(map(len, got))).encode())
            await writer.drain()
            await asyncio.sleep(0.2)

        server_cfg = ConnectionConfig(identity=identity, is_client=False, stream_window=window)
        server = await dtp.aio.start_server(
            handle, "127.0.0.1", 0, identity=identity, config=server_cfg
        )
        async with server:
            reader, writer = await dtp.aio.open_connection(
                *server.address, server_key=identity.noise_public
            )
            writer.write(b"first")
            writer.write(b"b" * 1000)
            payload = b"x" * (300 * 1024)
            writer.write(payload)
            writer.write_eof()
            await asyncio.wait_for(writer.drain(), 10)
            count = int(await asyncio.wait_for(reader.read(100), 10))
            assert count == 1000 + len(payload)
            assert b"".join(got) == b"b" * 1000 + payload
            assert ended == [None]
            writer.close()
            await writer.wait_closed()

    asyncio.run(main())


def test_datagram_arguments_are_checked_before_anything_is_sent() -> None:
    async def main() -> None:
        identity = HostIdentity.generate()
        got: list[bytes] = []

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            while (datagram := await writer.recv_datagram()) != b"end":
                got.append(datagram)
            writer.write(b"done")
            await reader.read()

        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity)
        async with server:
            reader, writer = await dtp.aio.open_connection(
                *server.address, server_key=identity.noise_public
            )
            with pytest.raises(TypeError, match="bytes-like object is required, not 'int'"):
                writer.send_datagram(5)  # type: ignore[arg-type]
            with pytest.raises(LocalProtocolError, match="exceeds"):
                writer.send_datagrams([b"lost", b"y" * 100_000])
            writer.send_datagrams([b"kept", b"end"])
            assert await asyncio.wait_for(reader.readexactly(4), 5) == b"done"
            assert got == [b"kept"]
            writer.close()
            await writer.wait_closed()

    asyncio.run(main())


def test_datagram_sink_gets_queued_then_live_datagrams() -> None:
    async def main() -> None:
        identity = HostIdentity.generate()
        got: list[bytes] = []
        done = asyncio.Event()

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            assert await reader.readexactly(2) == b"go"  # two datagrams are queued by now

            def sink(data: bytes) -> None:
                got.append(data)
                if len(got) == 4:
                    done.set()

            writer.set_datagram_sink(sink)
            writer.write(b"ok")
            await done.wait()
            writer.set_datagram_sink(None)
            writer.send_datagrams([b"back-1", b"back-2"])
            await reader.read()

        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity)
        async with server:
            reader, writer = await dtp.aio.open_connection(
                *server.address, server_key=identity.noise_public
            )
            writer.send_datagrams([b"q1", b"q2"])
            writer.write(b"go")
            assert await reader.readexactly(2) == b"ok"
            writer.send_datagram(b"l1")
            writer.send_datagram(b"l2")
            assert await asyncio.wait_for(writer.recv_datagram(), 5) == b"back-1"
            assert await asyncio.wait_for(writer.recv_datagram(), 5) == b"back-2"
            assert got == [b"q1", b"q2", b"l1", b"l2"]
            writer.close()
            await writer.wait_closed()

    asyncio.run(main())


def test_datagram_run_sink_gets_runs_in_order_and_a_plain_sink_replaces_it() -> None:
    """set_datagram_run_sink: the datagrams queued come as one list, then each run that
    arrived together as one; set_datagram_sink replaces it (and the other way round)."""

    async def main() -> None:
        identity = HostIdentity.generate()
        runs: list[list[bytes]] = []
        single: list[bytes] = []
        arrived = asyncio.Event()

        def run_sink(run: list[bytes]) -> None:
            runs.append(run)
            if sum(map(len, runs)) >= 42:
                arrived.set()

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            assert await reader.readexactly(2) == b"go"  # two datagrams are queued by now
            writer.set_datagram_run_sink(run_sink)
            assert runs == [[b"q1", b"q2"]]
            writer.write(b"ok")
            await arrived.wait()
            writer.set_datagram_sink(single.append)
            writer.write(b"ok")
            await reader.read()

        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=identity)
        async with server:
            reader, writer = await dtp.aio.open_connection(
                *server.address, server_key=identity.noise_public
            )
            writer.send_datagrams([b"q1", b"q2"])
            writer.write(b"go")
            assert await reader.readexactly(2) == b"ok"
            burst = [b"%d" % i for i in range(40)]
            writer.send_datagrams(burst)  # sealed and written together: one run or a few
            assert await reader.readexactly(2) == b"ok"
            assert [d for run in runs for d in run] == [b"q1", b"q2", *burst]
            assert len(runs) < 1 + len(burst)
            writer.send_datagram(b"after")
            for _ in range(100):
                if single:
                    break
                await asyncio.sleep(0.05)
            assert single == [b"after"]
            assert sum(map(len, runs)) == 42  # (the run sink had nothing more)
            writer.close()
            await writer.wait_closed()

    asyncio.run(main())


@pytest.mark.parametrize("stage", ["handshake", "callback"])
def test_a_loop_that_ends_aborts_the_servers_connections(stage: str) -> None:
    """When the server's event loop ends (asyncio.run cancels what still runs), each
    connection it was serving -- in its handshake or in the client callback -- is
    aborted rather than its transport left open, and the client sees the end."""
    import socket
    import threading

    import dtp.socket

    identity = HostIdentity.generate()
    entered = threading.Event()
    outcome: list[object] = []

    async def hang(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        entered.set()
        await asyncio.Event().wait()

    def client(port: int) -> None:
        if stage == "handshake":
            # TCP only, no DTP bytes: the server waits in the handshake
            raw = socket.create_connection(("127.0.0.1", port))
            entered.set()
            raw.settimeout(10)
            outcome.append(raw.recv(100))  # b"" (or a CLOSE record) once aborted
            raw.close()
            return
        with dtp.socket.create_connection(
            ("127.0.0.1", port), server_key=identity.noise_public, timeout=10
        ) as sock:
            try:
                outcome.append(sock.recv(10))
            except Exception as exc:  # the abort's typed error
                outcome.append(exc)

    thread: list[threading.Thread] = []

    async def main() -> None:
        server = await dtp.aio.start_server(hang, "127.0.0.1", 0, identity=identity)
        thread.append(threading.Thread(target=client, args=(server.address[1],), daemon=True))
        thread[0].start()
        while not entered.is_set():
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        server.close()
        # main returns with the connection's task still running: asyncio.run cancels it

    left = resource_warnings(lambda: asyncio.run(main()))
    assert [m for m in left if "unclosed transport" in m] == []
    thread[0].join(10)
    assert not thread[0].is_alive(), "the client never saw the connection end"
    assert len(outcome) == 1
    if stage == "handshake":
        assert isinstance(outcome[0], bytes)  # the carrier closed (nothing else to say)
    else:
        assert isinstance(outcome[0], ConnectionClosed), outcome
        assert "shutting down" in str(outcome[0])
