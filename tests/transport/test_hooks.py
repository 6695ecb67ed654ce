"""The seam of dtp/transport/_hooks.py: what an admission hook's verdict means, and a
ConnectionHook that is not a payment riding on a plain connection of each driver --
called where the drivers called the client's payment (output collected, the close's
last frames, the end), with its own close rules; what the servers show of a Listener
and their connections' configuration."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import AsyncIterator

import pytest

import dtp.aio
import dtp.errors
import dtp.protocol.connection
import dtp.socket
from dtp.identity.keys import HostIdentity
from dtp.transport._hooks import ConnectionHook, PeerInfo
from dtp.transport._session import hook_calls, peer_info, refusal_reason
from dtp.transport.blocking._engine import TIMERS

SERVER = HostIdentity.generate()
CLIENT = HostIdentity.generate()
SENT = b"x" * 100_000


def test_hook_calls_are_accept_first_then_admit() -> None:
    """Both servers call the hooks in this order, each given what it takes."""
    peer = PeerInfo(address="0x" + "ab" * 32, connection_id=None, port=7)

    def accept(address: str) -> bool:
        return True

    def admit(info: PeerInfo) -> bool:
        return True

    both = hook_calls(peer, accept, admit)
    assert [(c.hook, c.arg, c.admit) for c in both] == [
        (accept, peer.address, False),
        (admit, peer, True),
    ]
    assert [c.hook for c in hook_calls(peer, None, admit)] == [admit]
    assert [c.hook for c in hook_calls(peer, accept, None)] == [accept]
    assert hook_calls(peer, None, None) == []


def test_a_verdict_accepts_or_names_the_refusal() -> None:
    assert refusal_reason(None) is None
    assert refusal_reason(True) is None
    assert refusal_reason(False) == "refused by the server"
    assert refusal_reason("over quota") == "over quota"


def test_peer_info_names_the_connection_id_as_the_ledger_does() -> None:
    peer = peer_info("0xabc", bytes(range(32)), 7, b"k" * 32)
    assert peer == PeerInfo("0xabc", "0x" + bytes(range(32)).hex(), 7, b"k" * 32)
    assert peer_info("0xabc", None, None, None).connection_id is None


class Recorder:
    """A ConnectionHook that only counts: the drivers must need nothing of a payment."""

    max_timer_wait = 0.25
    close_wait = 0.05
    keeps_clean_close = True

    def __init__(self) -> None:
        self.quiet_bytes = 0
        self.quiet_until = 0.0
        self.payable_bytes = 1 << 64
        self.outputs = 0
        self.before = 0
        self.after = 0

    def on_output(self, now: float) -> None:
        self.outputs += 1

    def refuse_write(self, nbytes: int, requests: int) -> str | None:
        return None

    def before_close(self) -> None:
        self.before += 1

    def after_close(self) -> None:
        self.after += 1


def _as_hook(recorder: Recorder) -> ConnectionHook:
    return recorder  # (mypy: a Recorder is a ConnectionHook)


def test_the_blocking_driver_calls_a_connection_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    got: list[bytes] = []
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER) as server:

        def serve() -> None:
            conn, _ = server.accept(timeout=10)
            with conn:
                while data := conn.recv(65536):
                    got.append(data)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        sock = dtp.socket.create_connection(
            server.address, timeout=10, server_key=SERVER.noise_public, identity=CLIENT
        )
        recorder = Recorder()
        receipts: list[bytes] = []
        sock.layer.set_hook(_as_hook(recorder), receipts.append)
        assert sock.layer.hook is recorder
        added: list[object] = []
        monkeypatch.setattr(TIMERS, "add", added.append)
        sock.layer.start_timer()  # (started by connect already: a second start changes nothing)
        assert added == []  # (a second heap entry would double the connection's passes)
        sock.sendall(SENT)
        sock.layer.check_live()  # (open: nothing raised)
        ran: list[int] = []
        sock.layer.run_and_flush(lambda: ran.append(1))
        assert ran == [1]
        with pytest.raises(dtp.errors.LocalProtocolError, match="not a paid connection"):
            sock.top_up(5)  # (a hook is no deposit)
        stream = sock.open_stream()
        assert type(stream) is dtp.socket.DTPSocket
        assert stream.connection_id is None and stream.escrow_id is None
        stream.close()
        sock.close()
        thread.join(10)
    assert b"".join(got) == SENT
    assert recorder.outputs > 0
    assert recorder.before == 1
    assert recorder.after >= 1  # (after_close is idempotent: close() and the engine call it)
    with pytest.raises(dtp.errors.SocketClosed):
        sock.layer.check_live()


def test_the_asyncio_driver_calls_a_connection_hook() -> None:
    async def main() -> tuple[bytes, Recorder]:
        got: list[bytes] = []
        done = asyncio.Event()

        async def serve(reader: dtp.aio.StreamReader, writer: dtp.aio.StreamWriter) -> None:
            while data := await reader.read(65536):
                got.append(data)
            writer.close()
            done.set()

        server = await dtp.aio.start_server(serve, "127.0.0.1", 0, identity=SERVER)
        try:
            host, port = server.sockets[0].getsockname()[:2]
            _, writer = await dtp.aio.open_connection(
                host, port, server_key=SERVER.noise_public, identity=CLIENT
            )
            recorder = Recorder()
            receipts: list[bytes] = []
            writer.layer.set_hook(_as_hook(recorder), receipts.append)
            assert writer.layer.hook is recorder
            writer.write(SENT)
            await writer.drain()
            writer.layer.check_live()  # (open: nothing raised)
            ran: list[int] = []
            writer.layer.run_and_flush(lambda: ran.append(1))
            assert ran == [1]
            with pytest.raises(dtp.errors.LocalProtocolError, match="not a paid connection"):
                await writer.top_up(5)  # (a hook is no deposit)
            writer.close()
            await writer.wait_closed()
            with pytest.raises(dtp.errors.ConnectionClosed):
                writer.layer.check_live()
            await asyncio.wait_for(done.wait(), 10)
        finally:
            server.close()
            await server.wait_closed()
        return b"".join(got), recorder

    data, recorder = asyncio.run(main())
    assert data == SENT
    assert recorder.outputs > 0
    assert recorder.before == 1
    assert recorder.after == 1


@contextlib.asynccontextmanager
async def _aio_connection() -> AsyncIterator[dtp.aio.StreamWriter]:
    """A plain asyncio connection to a server that reads until the client's end."""

    async def serve(reader: dtp.aio.StreamReader, writer: dtp.aio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await dtp.aio.start_server(serve, "127.0.0.1", 0, identity=SERVER)
    try:
        host, port = server.sockets[0].getsockname()[:2]
        _, writer = await dtp.aio.open_connection(
            host, port, server_key=SERVER.noise_public, identity=CLIENT
        )
        yield writer
    finally:
        server.close()
        await server.wait_closed()


def test_without_a_hook_top_up_is_refused_as_on_any_plain_connection() -> None:
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER) as server:
        sock = dtp.socket.create_connection(
            server.address, timeout=10, server_key=SERVER.noise_public, identity=CLIENT
        )
        with sock:
            assert sock.layer.hook is None
            with pytest.raises(dtp.errors.LocalProtocolError, match="not a paid connection"):
                sock.top_up(5)


def test_streams_of_a_plain_connection_are_plain_and_name_no_ledger_objects() -> None:
    async def main() -> None:
        async with _aio_connection() as writer:
            _, stream = await writer.open_stream()
            for each in (writer, stream):
                assert type(each) is dtp.aio.DTPStreamWriter
                assert each.connection_id is None and each.escrow_id is None
                with pytest.raises(dtp.errors.LocalProtocolError, match="not a paid connection"):
                    await each.top_up(5)
            writer.close()
            await writer.wait_closed()

    asyncio.run(main())


class FakeListener:
    """A Listener that hands nothing over: the servers must only hold and close it."""

    def __init__(self) -> None:
        self.closed_with: list[float] = []

    @property
    def running(self) -> bool:
        return not self.closed_with

    def close(self, timeout: float = 5.0) -> None:
        self.closed_with.append(timeout)


def test_the_blocking_server_shows_its_listener_and_connection_config() -> None:
    listener = FakeListener()
    with dtp.socket.DTPServer(("127.0.0.1", 0), SERVER) as server:
        assert server.attached is None
        config = server.connection_config
        assert config.identity is SERVER and not config.is_client
        server.attach(listener)
        assert server.attached is listener
        with pytest.raises(dtp.errors.LocalProtocolError, match="another listener"):
            server.attach(FakeListener())
    assert listener.closed_with  # (closed with the server)


def test_the_asyncio_server_listens_when_told_and_shows_its_state() -> None:
    async def main() -> None:
        async def serve(reader: dtp.aio.StreamReader, writer: dtp.aio.StreamWriter) -> None:
            writer.close()

        config = dtp.protocol.connection.ConnectionConfig(identity=SERVER, is_client=False)
        server = dtp.aio.DTPServer(serve, SERVER, None, config)
        assert server.connection_config is config
        assert server.attached is None and not server.closed
        assert not server.is_serving()  # (no listener yet)
        await server.listen("127.0.0.1", 0, start_serving=False)
        assert not server.is_serving()
        await server.start_serving()
        assert server.is_serving()
        with pytest.raises(dtp.errors.LocalProtocolError, match="listens on TCP already"):
            await server.listen("127.0.0.1", 0)  # (a second listener would outlive close)
        listener = FakeListener()
        server.attach(listener)
        assert server.attached is listener
        server.close()
        assert server.closed and not server.is_serving()
        await server.wait_closed()
        assert listener.closed_with
        closed = dtp.aio.DTPServer(serve, SERVER, None, config)
        closed.close()
        with pytest.raises(dtp.errors.LocalProtocolError, match="is closed"):
            await closed.listen("127.0.0.1", 0)
        assert not closed.is_serving()

    asyncio.run(main())


# -- what a layer above reads of a connection, and how it wakes it ---------------------------


def test_a_blocking_socket_tells_its_end_and_carrier_and_wakes_its_waiter() -> None:
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER) as server:

        def serve() -> None:
            conn, _ = server.accept(timeout=10)
            with conn, contextlib.suppress(dtp.errors.ConnectionClosed):
                while conn.recv(65536):
                    pass  # (until the client's abort below)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        sock = dtp.socket.create_connection(
            server.address, timeout=10, server_key=SERVER.noise_public, identity=CLIENT
        )
        assert sock.reliable_carrier is True  # (TCP)
        assert sock.connection_ended is False
        driver = sock.layer.driver
        sock.sendall(b"abc")
        with driver.lock:
            assert driver.conn.usage[0] >= 3  # (the connection this socket sends on)
        # A thread waiting on the connection for a condition another thread sets looks
        # again on wake(): without it, nothing arrives and it looks only at its deadline.
        flag: list[bool] = []
        timer = threading.Timer(0.2, lambda: (flag.append(True), sock.layer.wake()))
        timer.start()
        start = time.monotonic()
        with driver.lock:
            driver.pump(lambda: bool(flag), 10.0)
        assert time.monotonic() - start < 8.0  # (woken: not at the deadline)
        timer.join()
        sock.abort("done")
        assert sock.connection_ended is True
        thread.join(10)


def test_an_asyncio_protocol_wakes_its_waiting_tasks() -> None:
    async def main() -> None:
        async with _aio_connection() as writer:
            proto = writer.layer.driver
            # A task waiting on the connection for a condition set outside it looks again
            # on wake(): without it, nothing arrives and it waits for good (the timeout).
            flag: list[bool] = []
            loop = asyncio.get_running_loop()
            loop.call_later(0.2, lambda: (flag.append(True), proto.wake()))
            start = time.monotonic()
            await asyncio.wait_for(proto.wait_for(lambda: bool(flag)), 8.0)
            assert flag and time.monotonic() - start < 8.0
            writer.close()
            await writer.wait_closed()

    asyncio.run(main())


def test_an_asyncio_writer_tells_its_end_and_carrier_and_hands_out_its_closed_future() -> None:
    async def main() -> None:
        async with _aio_connection() as writer:
            assert writer.reliable_carrier is True  # (TCP)
            assert writer.connection_ended is False
            assert writer.layer.driver.session.terminated is None
            closed = writer.connection_closed()
            # each call hands out a new future: cancelling one (a cancelled wait)
            # leaves the connection's own, and so the others and wait_closed(), alone
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(writer.connection_closed(), 0.05)
            assert not closed.done()
            writer.close()
            await writer.wait_closed()
            assert writer.connection_ended is True
            assert await asyncio.wait_for(closed, 10) is None
            assert await asyncio.wait_for(writer.connection_closed(), 10) is None

    asyncio.run(main())
