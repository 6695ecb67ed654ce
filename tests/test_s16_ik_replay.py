"""A replayed Noise IK first message must not hold a ledger connection.

Anyone who recorded a client's IK message 1 can send it again: it authenticates the
client a second time (inherent to IK). A server admitting through the ledger serves one
DTP connection per ledger connection, so before the fix the replay reserved the client's
ledger connection until the server's connection timed out, and the real client,
reconnecting meanwhile, was refused ("already served"). Both servers now remember the
ephemeral keys of the IK first messages they saw and turn a repeat away before the
hooks run. The timeouts here are huge (600 s): a replay that held the connection would
hold it for the whole test."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import dtp.aio
import dtp.socket
from dtp.chain.local import LocalLedger
from dtp.chain.objects import Sla
from dtp.connection import ConnectionConfig
from dtp.replay_guard import ReplayGuard
from dtp.socket import DTPSocket
from tests.polling import wait_for
from tests.test_handshake_slots import CLIENT, SERVER, async_wait_for

PORT = 443
HUGE = 600.0  # the server's handshake and idle timeouts: what a held slot would last
BOUND = 30.0  # how long the test waits for anything


@dataclass
class Opened:
    """A LocalLedger file with the server's host and service, and a ledger connection
    the client opened to it."""

    ledger: LocalLedger
    host_id: str
    client_config: ConnectionConfig
    server_config: ConnectionConfig


@pytest.fixture
def opened(tmp_path: Path) -> Iterator[Opened]:
    ledger = LocalLedger(tmp_path / "ledger.db")
    host = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host, PORT, "echo", Sla(10, 5, 1000))
    ledger.faucet(CLIENT.sui_address, 100_000)
    cap = ledger.create_spending_cap(CLIENT, 10**6)
    connection = ledger.open_connection(CLIENT, host, PORT, cap, 1000)
    client = ConnectionConfig(
        identity=CLIENT,
        is_client=True,
        connection_id=bytes.fromhex(connection.connection_id[2:]),
        port=PORT,
    )
    server = ConnectionConfig(
        identity=SERVER, is_client=False, handshake_timeout=HUGE, idle_timeout=HUGE
    )
    try:
        yield Opened(ledger, host, client, server)
    finally:
        ledger.close()


class Recorder:
    """A TCP proxy to ``upstream`` for one connection at a time, which records what the
    client sent before the server's first reply: its handshake message 1."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self.upstream = upstream
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.first_messages: list[bytes] = []
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        thread = threading.Thread(target=self._accept, daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            server = socket.create_connection(self.upstream, timeout=BOUND)
            server.settimeout(None)
            self._sockets += (client, server)
            self.first_messages.append(b"")
            self._relay(client, server, len(self.first_messages) - 1)

    def _relay(self, client: socket.socket, server: socket.socket, index: int) -> None:
        """Relay one connection both ways, recording its message 1 at ``index``."""
        replied = threading.Event()
        captured = bytearray()

        def up() -> None:
            # the client waits for message 2 before it sends anything more, so what comes
            # before the reply is message 1 (in one chunk or several)
            with contextlib.suppress(OSError):
                while data := client.recv(65536):
                    if not replied.is_set():
                        captured.extend(data)
                        self.first_messages[index] = bytes(captured)
                    server.sendall(data)
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_WR)

        def down() -> None:
            with contextlib.suppress(OSError):
                while data := server.recv(65536):
                    replied.set()
                    client.sendall(data)
            with contextlib.suppress(OSError):
                client.shutdown(socket.SHUT_WR)

        for target in (up, down):
            thread = threading.Thread(target=target, daemon=True)
            thread.start()
            self._threads.append(thread)

    def close(self) -> None:
        """Stop listening and end every proxied connection."""
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)  # (wakes the thread in accept)
        self.listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)  # (wakes the threads in recv)
        for thread in self._threads:
            thread.join(BOUND)
        for sock in self._sockets:
            sock.close()


def replay(address: tuple[str, int], message: bytes) -> socket.socket:
    """A new TCP connection that sends ``message`` and then stays open, silent."""
    sock = socket.create_connection(address, timeout=BOUND)
    sock.sendall(message)
    return sock


def closed_within(sock: socket.socket, within: float = BOUND) -> bool:
    """Whether the peer ends ``sock`` (EOF or reset) within ``within`` seconds, whatever
    it sends first."""
    sock.settimeout(within)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return True


# -- the guard ---------------------------------------------------------------------------


def test_the_guard_refuses_a_key_seen_and_forgets_the_oldest_beyond_its_capacity(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard = ReplayGuard(capacity=3)
    keys = [bytes([i]) * 32 for i in range(5)]
    assert guard.first_sight(keys[0])
    with caplog.at_level(logging.INFO, logger="dtp.replay_guard"):
        assert not guard.first_sight(keys[0], "10.0.0.1")
        assert not guard.first_sight(keys[0], "10.0.0.1")  # a flood: one log line
    assert guard.refused == 2
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "10.0.0.1" in caplog.records[0].getMessage()
    for key in keys[1:4]:
        assert guard.first_sight(key)
    # keys[0], the oldest, was forgotten to keep three: it comes through again (as it
    # did before the guard); the three newest are still refused
    assert len(guard) == 3
    assert guard.first_sight(keys[0])
    assert not guard.first_sight(keys[3])
    assert len(guard) == 3


def test_a_guard_that_remembers_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        ReplayGuard(capacity=0)


# -- the blocking server -----------------------------------------------------------------


@pytest.fixture
def blocking(opened: Opened) -> Iterator[dtp.socket.DTPServer]:
    def echo(sock: DTPSocket) -> None:
        while data := sock.recv(65536):
            sock.sendall(data)

    server = dtp.socket.create_server(
        ("127.0.0.1", 0),
        identity=SERVER,
        ledger=opened.ledger,
        host_id=opened.host_id,
        port=PORT,
        config=opened.server_config,
    )
    thread = threading.Thread(target=server.serve_forever, args=(echo,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.close()
        thread.join(BOUND)


def connect(address: tuple[str, int], opened: Opened) -> DTPSocket:
    return dtp.socket.create_connection(
        address,
        timeout=BOUND,
        server_key=SERVER.noise_public,
        identity=CLIENT,
        config=opened.client_config,
    )


def echoes(sock: DTPSocket, data: bytes) -> bool:
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        got += chunk
    return got == data


def test_a_replayed_first_message_does_not_hold_the_ledger_connection(
    opened: Opened, blocking: dtp.socket.DTPServer
) -> None:
    server = blocking
    proxy = Recorder(server.address)
    try:
        with connect(proxy.address, opened) as sock:
            assert echoes(sock, b"first")
        first = proxy.first_messages[0]
        assert first
    finally:
        proxy.close()
    assert wait_for(lambda: len(server._serving) == 0, BOUND)  # the client left
    replayed = replay(server.address, first)
    try:
        # the server has decided on the replay: turned it away, or (the bug) reserved
        # the client's ledger connection for it
        assert wait_for(
            lambda: getattr(server, "replays_refused", 0) == 1 or len(server._serving) == 1,
            BOUND,
        )
        # the real client reconnects on the same ledger connection, with a new key
        with connect(server.address, opened) as again:
            assert echoes(again, b"again")
        assert server.replays_refused == 1
        assert closed_within(replayed)
    finally:
        replayed.close()


def test_a_client_that_reconnects_sends_a_new_first_message_each_time(
    opened: Opened, blocking: dtp.socket.DTPServer
) -> None:
    server = blocking
    proxy = Recorder(server.address)
    try:
        for n in range(3):
            with connect(proxy.address, opened) as sock:
                assert echoes(sock, b"round %d" % n)
            assert wait_for(lambda: len(server._serving) == 0, BOUND)
        messages = proxy.first_messages
    finally:
        proxy.close()
    assert len(messages) == 3 and all(messages)
    assert len(set(messages)) == 3  # a fresh ephemeral key each time: none is a replay
    assert server.replays_refused == 0


# -- the asyncio server ------------------------------------------------------------------


def test_the_asyncio_server_refuses_a_replayed_first_message_too(opened: Opened) -> None:
    async def echo(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def connect_aio(
        address: tuple[str, int],
    ) -> tuple[dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter]:
        return await dtp.aio.open_connection(
            *address,
            server_key=SERVER.noise_public,
            identity=CLIENT,
            config=opened.client_config,
            timeout=BOUND,
        )

    async def round_trip(address: tuple[str, int], data: bytes) -> None:
        reader, writer = await connect_aio(address)
        writer.write(data)
        assert await reader.readexactly(len(data)) == data
        writer.close()
        await writer.wait_closed()

    async def main() -> None:
        server = await dtp.aio.start_server(
            echo,
            "127.0.0.1",
            0,
            identity=SERVER,
            ledger=opened.ledger,
            host_id=opened.host_id,
            dtp_port=PORT,
            config=opened.server_config,
        )
        proxy = Recorder(server.address)
        try:
            await round_trip(proxy.address, b"first")
            first = proxy.first_messages[0]
            assert first
            assert await async_wait_for(lambda: len(server._serving) == 0, BOUND)
            reader, writer = await asyncio.open_connection(*server.address)
            try:
                writer.write(first)
                await writer.drain()
                assert await async_wait_for(
                    lambda: getattr(server, "replays_refused", 0) == 1 or len(server._serving) == 1,
                    BOUND,
                )
                await round_trip(server.address, b"again")
                assert server.replays_refused == 1
                # the server ended the replayed connection
                await asyncio.wait_for(reader.read(), BOUND)
            finally:
                writer.close()
        finally:
            proxy.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())
