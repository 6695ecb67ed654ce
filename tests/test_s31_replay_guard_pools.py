"""The replay guard keeps accepted connections' keys apart from the others.

Authenticating costs a client nothing but a fresh static key, and the guard remembered
the keys of every authenticated IK first message in one pool: throw-away identities the
ledger then refused pushed a real client's recorded key out, and its replay held the
client's ledger connection again (dtp.replay_guard). Now only accepted connections push
out accepted keys. Before the fix each test here saw the replay reserve the ledger
connection (or, for the guard alone, the key come through again)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

import dtp.aio
import dtp.socket
from dtp.connection import ConnectionConfig
from dtp.errors import ConnectionRefused
from dtp.keys import HostIdentity
from dtp.replay_guard import ReplayGuard
from tests.polling import wait_for
from tests.test_handshake_slots import SERVER, async_wait_for
from tests.test_s16_ik_replay import (
    BOUND,
    PORT,
    Opened,
    Recorder,
    closed_within,
    connect,
    echoes,
    opened,
    replay,
)

__all__ = ["opened"]  # (the fixture, imported for the tests below)

CAPACITY = 2
THROWAWAY = 3  # more than the guard's capacity


def test_keys_of_accepted_connections_are_pushed_out_only_by_accepted_ones() -> None:
    guard = ReplayGuard(capacity=CAPACITY)
    kept = b"k" * 32
    assert guard.first_sight(kept)
    guard.accept(kept)
    for i in range(10):  # throw-away identities: authenticated, never accepted
        assert guard.first_sight(bytes([i]) * 32)
    assert not guard.first_sight(kept)  # still remembered: a replay
    assert len(guard) == 1 + CAPACITY  # the accepted key, and the newest others
    # accepted connections do push it out, oldest first
    for i in range(CAPACITY):
        key = bytes([100 + i]) * 32
        assert guard.first_sight(key)
        guard.accept(key)
    assert guard.first_sight(kept)


def test_accepting_a_key_the_flood_pushed_out_still_keeps_it() -> None:
    guard = ReplayGuard(capacity=1)
    key = b"a" * 32
    assert guard.first_sight(key)
    assert guard.first_sight(b"b" * 32)  # pushes ``key`` out of the unaccepted pool
    guard.accept(key)  # (the verdict came after)
    assert not guard.first_sight(key)


def _throwaway_config(opened: Opened) -> tuple[HostIdentity, ConnectionConfig]:
    """A new identity naming the real client's ledger connection: authenticated by the
    handshake, then refused by the ledger admission (the connection names another)."""
    identity = HostIdentity.generate()
    config = ConnectionConfig(
        identity=identity,
        is_client=True,
        connection_id=opened.client_config.connection_id,
        port=PORT,
    )
    return identity, config


@pytest.fixture
def small_guard_server(opened: Opened) -> Iterator[dtp.socket.DTPServer]:
    def echo(sock: dtp.socket.DTPSocket) -> None:
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
    server._replays = ReplayGuard(capacity=CAPACITY)
    thread = threading.Thread(target=server.serve_forever, args=(echo,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.close()
        thread.join(BOUND)


def test_throwaway_identities_do_not_unlock_a_replay_on_the_blocking_server(
    opened: Opened, small_guard_server: dtp.socket.DTPServer
) -> None:
    server = small_guard_server
    proxy = Recorder(server.address)
    try:
        with connect(proxy.address, opened) as sock:
            assert echoes(sock, b"first")
        first = proxy.first_messages[0]
        assert first
    finally:
        proxy.close()
    assert wait_for(lambda: len(server._serving) == 0, BOUND)
    for _ in range(THROWAWAY):
        identity, config = _throwaway_config(opened)
        with pytest.raises(ConnectionRefused):
            dtp.socket.create_connection(
                server.address,
                timeout=BOUND,
                server_key=SERVER.noise_public,
                identity=identity,
                config=config,
            ).close()
    # (counted once the refusal is out: the client may read it first)
    assert wait_for(lambda: server.refused >= THROWAWAY, BOUND)
    replayed = replay(server.address, first)
    try:
        assert wait_for(lambda: server.replays_refused == 1 or len(server._serving) == 1, BOUND)
        assert server.replays_refused == 1
        assert len(server._serving) == 0  # the client's ledger connection is free
        with connect(server.address, opened) as again:
            assert echoes(again, b"again")
        assert closed_within(replayed)
    finally:
        replayed.close()


def test_throwaway_identities_do_not_unlock_a_replay_on_the_asyncio_server(
    opened: Opened,
) -> None:
    async def echo(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.close()

    async def round_trip(
        address: tuple[str, int], identity: HostIdentity, config: ConnectionConfig
    ) -> None:
        reader, writer = await dtp.aio.open_connection(
            *address,
            server_key=SERVER.noise_public,
            identity=identity,
            config=config,
            timeout=BOUND,
        )
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
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
        server._replays = ReplayGuard(capacity=CAPACITY)
        proxy = Recorder(server.address)
        client = opened.client_config.identity
        assert client is not None
        try:
            await round_trip(proxy.address, client, opened.client_config)
            first = proxy.first_messages[0]
            assert first
            assert await async_wait_for(lambda: len(server._serving) == 0, BOUND)
            for _ in range(THROWAWAY):
                with pytest.raises(ConnectionRefused):
                    await round_trip(server.address, *_throwaway_config(opened))
            reader, writer = await asyncio.open_connection(*server.address)
            try:
                writer.write(first)
                await writer.drain()
                assert await async_wait_for(
                    lambda: server.replays_refused == 1 or len(server._serving) == 1, BOUND
                )
                assert server.replays_refused == 1
                assert len(server._serving) == 0
                await round_trip(server.address, client, opened.client_config)
                await asyncio.wait_for(reader.read(), BOUND)  # the replay was ended
            finally:
                writer.close()
        finally:
            proxy.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())
