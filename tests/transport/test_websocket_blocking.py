"""The blocking API over the WebSocket carrier (docs/protocol.md §13):
``dtp.socket.create_connection("ws://…")`` against a dtp.aio server's WebSocket endpoint
(run on an event loop in a thread), with the asyncio client's errors and timeouts.

- IK and XX, echo of many records on the first stream and on a second one, the server's
  view of the client, the stream's timeout the caller's;
- ``wss://``: a certificate the client's context trusts, and the system's roots refusing
  a self-signed one (ConnectionLost, the SSL error as its cause);
- the upgrade refused (an Origin off the allow list: ConnectionRefused, HTTP 403), a
  closed port (CarrierRefused), the server's verdict (ConnectionRefused, every time in
  a row: the refusal read before the carrier's end), an upgrade
  never answered (HandshakeError at the handshake timeout, DTPTimeoutError at the
  caller's), a text message from the server (the carrier breached: ConnectionLost
  naming the close code);
- the bridge's thread and descriptors gone once the connections closed; the arguments
  refused."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.typing import Subprotocol

import dtp.aio
import dtp.socket
from dtp.errors import (
    CarrierRefused,
    ConnectionLost,
    ConnectionRefused,
    DTPTimeoutError,
    HandshakeError,
)
from dtp.identity.keys import HostIdentity
from dtp.protocol.connection import ConnectionConfig
from dtp.testing._loops import LoopThread as Loop
from dtp.transport.carriers._websocket import SUBPROTOCOL
from tests.support.aio_echo import echo_every_stream as echo
from tests.transport.test_websocket_carrier import _self_signed

SERVER = HostIdentity.generate()
CLIENT = HostIdentity.generate()
DENIED = HostIdentity.generate()


@pytest.fixture
def loop() -> Iterator[Loop]:
    runner = Loop()
    try:
        yield runner
    finally:
        runner.close(cancel=True)


class Served:
    def __init__(self, loop: Loop, **options: Any) -> None:
        self.loop = loop
        self.seen: list[str] = []
        self.options = options
        self.server: dtp.aio.DTPServer | None = None

    def __enter__(self) -> str:
        async def start() -> dtp.aio.DTPServer:
            async def callback(reader: Any, writer: Any) -> None:
                self.seen.append(writer.get_extra_info("peer_address"))
                await echo(reader, writer)

            def accept(address: str) -> bool | str:
                return "not on the list" if address == DENIED.sui_address else True

            server = await dtp.aio.start_server(
                callback, "127.0.0.1", 0, identity=SERVER, accept=accept
            )
            await server.listen_websocket("127.0.0.1", 0, **self.options)
            return server

        self.server = self.loop.run(start())
        host, port = self.server.websocket_addresses[0]
        scheme = "wss" if self.options.get("ssl") else "ws"
        return f"{scheme}://{host}:{port}/dtp"

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            assert self.server is not None
            self.server.close()
            await self.server.wait_closed()

        self.loop.run(stop())


def _echo(sock: dtp.socket.DTPSocket, data: bytes) -> bytes:
    sock.sendall(data)
    sock.shutdown(dtp.socket.SHUT_WR)
    parts = []
    while chunk := sock.recv(1 << 16):
        parts.append(chunk)
    return b"".join(parts)


def _bridge_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "dtp-websocket-bridge"]


def _wait_until(check: Callable[[], bool], timeout: float = 15) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.02)
    return check()


def test_ik_and_xx_echo_over_websocket_from_the_blocking_api(loop: Loop) -> None:
    served = Served(loop)
    with served as url:
        fds = len(os.listdir("/proc/self/fd"))
        for ik in (True, False):
            with dtp.socket.create_connection(
                url,
                20,
                server_key=SERVER.noise_public if ik else None,
                expected_server_key=None if ik else SERVER.noise_public,
                identity=CLIENT,
            ) as sock:
                assert sock.gettimeout() == 20
                assert sock.peer_static_key == SERVER.noise_public
                assert sock.getpeername() == ("127.0.0.1", int(url.split(":")[2].split("/")[0]))
                second = sock.open_stream()
                big = os.urandom(2 * 1024 * 1024 + 11)  # (many records; credit both ways)
                assert _echo(second, big) == big
                second.close()
                assert _echo(sock, b"hello") == b"hello"
        assert served.seen == [CLIENT.sui_address] * 2
        # the bridge's thread ends with the last connection, its descriptors with it
        assert _wait_until(lambda: not _bridge_threads())
        assert _wait_until(lambda: len(os.listdir("/proc/self/fd")) <= fds)


def test_wss_with_a_certificate_the_client_trusts(loop: Loop, tmp_path: Path) -> None:
    server_ctx, client_ctx = _self_signed(tmp_path)
    with Served(loop, ssl=server_ctx) as url:
        assert url.startswith("wss://")
        with dtp.socket.create_connection(
            url, 20, server_key=SERVER.noise_public, identity=CLIENT, ssl=client_ctx
        ) as sock:
            assert _echo(sock, b"tls" * 20000) == b"tls" * 20000
        with pytest.raises(ConnectionLost, match="CERTIFICATE_VERIFY_FAILED") as failed:
            dtp.socket.create_connection(url, 20, server_key=SERVER.noise_public)
        assert isinstance(failed.value.__cause__, ssl.SSLCertVerificationError)
    assert _wait_until(lambda: not _bridge_threads())


def test_refusals_as_the_asyncio_client_raises_them(loop: Loop) -> None:
    with Served(loop, origins=["https://app.example"]) as url:
        with pytest.raises(ConnectionRefused, match="403"):
            dtp.socket.create_connection(url, 20, origin="https://evil.example")
        # the page's own origin is admitted
        with dtp.socket.create_connection(
            url, 20, server_key=SERVER.noise_public, origin="https://app.example"
        ) as sock:
            assert _echo(sock, b"page") == b"page"
        with pytest.raises(ConnectionRefused, match="not on the list") as refused:
            dtp.socket.create_connection(url, 20, server_key=SERVER.noise_public, identity=DENIED)
        assert refused.value.code == 11
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(CarrierRefused, match=f"ws://127.0.0.1:{port}/"):
        dtp.socket.create_connection(f"ws://127.0.0.1:{port}/", 20)
    assert _wait_until(lambda: not _bridge_threads())


def test_every_refusal_is_read_before_the_end_of_the_carrier(loop: Loop) -> None:
    """The server's message 2, its CLOSE 11 and the WebSocket's close come together, and
    the client writes behind message 2: a bridge that closed the engine's pair whole
    failed that write (EPIPE) before the CLOSE was read, a refused client reading "the
    server closed the connection" instead (4 to 9 in 100 on a slowed-down machine). The
    pair is half-closed, as TCP is, so every refusal reads as one."""
    with Served(loop) as url:
        for _ in range(40):
            with pytest.raises(ConnectionRefused, match="not on the list"):
                dtp.socket.create_connection(
                    url, 20, server_key=SERVER.noise_public, identity=DENIED
                )
    assert _wait_until(lambda: not _bridge_threads())


def test_an_upgrade_never_answered_ends_at_the_handshake_timeout(loop: Loop) -> None:
    accepted: list[asyncio.StreamWriter] = []

    async def silent(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        accepted.append(w)
        await r.read()

    async def start() -> asyncio.Server:
        return await asyncio.start_server(silent, "127.0.0.1", 0)

    server = loop.run(start())
    port = server.sockets[0].getsockname()[1]
    url = f"ws://127.0.0.1:{port}/"
    config = ConnectionConfig(
        identity=CLIENT, is_client=True, server_static=SERVER.noise_public, handshake_timeout=0.5
    )
    try:
        started = time.monotonic()
        with pytest.raises(HandshakeError, match="upgrade timed out"):
            dtp.socket.create_connection(url, None, config=config)
        with pytest.raises(DTPTimeoutError, match=f"connecting to {url} timed out after 0.5 s"):
            dtp.socket.create_connection(url, 0.5, server_key=SERVER.noise_public)
        assert time.monotonic() - started < 15
    finally:

        async def stop() -> None:
            for w in accepted:
                w.close()
            server.close()
            await server.wait_closed()

        loop.run(stop())
    assert _wait_until(lambda: not _bridge_threads())


def test_a_text_message_breaks_the_carrier(loop: Loop) -> None:
    """A proxy in front of the server that sends the client a text message once the
    client read its echo: the carrier fails (1003) and the client's next read raises
    ConnectionLost saying so, as the asyncio client's would."""
    with Served(loop) as url:
        trigger = asyncio.Event()

        async def proxy(client: ServerConnection) -> None:
            async with ws_connect(url, subprotocols=[Subprotocol(SUBPROTOCOL)]) as server:

                async def down() -> None:
                    async for message in server:
                        await client.send(message)

                async def up() -> None:
                    async for message in client:
                        await server.send(message)

                pumps = [asyncio.ensure_future(down()), asyncio.ensure_future(up())]
                await trigger.wait()
                await client.send("not a record")
                await client.wait_closed()  # (the client fails the WebSocket: 1003)
                await server.close()
                await asyncio.gather(*pumps, return_exceptions=True)

        async def start() -> Any:
            return await ws_serve(proxy, "127.0.0.1", 0, subprotocols=[Subprotocol(SUBPROTOCOL)])

        front = loop.run(start())
        port = front.sockets[0].getsockname()[1]
        try:
            with dtp.socket.create_connection(
                f"ws://127.0.0.1:{port}/", 20, server_key=SERVER.noise_public
            ) as sock:
                sock.sendall(b"ping")
                assert sock.recv(4) == b"ping"
                loop.loop.call_soon_threadsafe(trigger.set)
                with pytest.raises(ConnectionLost, match="close code 1003"):
                    sock.recv(4)
        finally:

            async def stop() -> None:
                front.close()
                await front.wait_closed()

            loop.run(stop())
    assert _wait_until(lambda: not _bridge_threads())


def test_arguments_refused() -> None:
    with pytest.raises(ValueError, match="not a WebSocket URL"):
        dtp.socket.create_connection("ws://", 1)
    with pytest.raises(ValueError, match="wss"):
        dtp.socket.create_connection("ws://127.0.0.1:1/", 1, ssl=ssl.create_default_context())
    with pytest.raises(ValueError, match="WebSocket URL"):
        dtp.socket.create_connection(("127.0.0.1", 1), 1, origin="https://a.example")
    with pytest.raises(ValueError, match="ledger"):
        dtp.socket.create_connection("ws://127.0.0.1:1/", 1, deposit=5)
    with pytest.raises(ValueError):
        dtp.socket.create_connection("ws://127.0.0.1:1/", -1)
    assert not _bridge_threads()
