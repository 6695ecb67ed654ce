"""The seam of dtp/transport/hooks.py: what an admission hook's verdict means, and a
ConnectionHook that is not a payment riding on a plain connection of each driver --
called where the drivers called the client's payment (output collected, the close's
last frames, the end), with its own close rules."""

from __future__ import annotations

import asyncio
import threading

import pytest

import dtp.aio
import dtp.errors
import dtp.socket
from dtp.keys import HostIdentity
from dtp.transport.hooks import (
    ConnectionHook,
    PeerInfo,
    peer_info,
    refusal_reason,
)

SERVER = HostIdentity.generate()
CLIENT = HostIdentity.generate()
SENT = b"x" * 100_000


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
        self.outputs = 0
        self.before = 0
        self.after = 0

    def on_output(self, now: float) -> None:
        self.outputs += 1

    def before_close(self) -> None:
        self.before += 1

    def after_close(self) -> None:
        self.after += 1


def _as_hook(recorder: Recorder) -> ConnectionHook:
    return recorder  # (mypy: a Recorder is a ConnectionHook)


def test_the_blocking_driver_calls_a_connection_hook() -> None:
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
        with sock._engine.lock:
            sock._engine.hook = _as_hook(recorder)
        sock.sendall(SENT)
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
            writer._proto.hook = _as_hook(recorder)
            writer.write(SENT)
            await writer.drain()
            with pytest.raises(dtp.errors.LocalProtocolError, match="not a paid connection"):
                await writer.top_up(5)  # (a hook is no deposit)
            writer.close()
            await writer.wait_closed()
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


def test_without_a_hook_top_up_is_refused_as_on_any_plain_connection() -> None:
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER) as server:
        sock = dtp.socket.create_connection(
            server.address, timeout=10, server_key=SERVER.noise_public, identity=CLIENT
        )
        with sock:
            assert sock._engine.hook is None
            with pytest.raises(dtp.errors.LocalProtocolError, match="not a paid connection"):
                sock.top_up(5)


def test_streams_of_a_plain_connection_are_plain_and_name_no_ledger_objects() -> None:
    async def main() -> None:
        async def serve(reader: dtp.aio.StreamReader, writer: dtp.aio.StreamWriter) -> None:
            await reader.read()
            writer.close()

        server = await dtp.aio.start_server(serve, "127.0.0.1", 0, identity=SERVER)
        try:
            host, port = server.sockets[0].getsockname()[:2]
            _, writer = await dtp.aio.open_connection(
                host, port, server_key=SERVER.noise_public, identity=CLIENT
            )
            _, stream = await writer.open_stream()
            for each in (writer, stream):
                assert type(each) is dtp.aio.DTPStreamWriter
                assert each.connection_id is None and each.escrow_id is None
                with pytest.raises(dtp.errors.LocalProtocolError, match="not a paid connection"):
                    await each.top_up(5)
            writer.close()
            await writer.wait_closed()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())
