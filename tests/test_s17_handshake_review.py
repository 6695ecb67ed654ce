"""Review of the servers' handshake path: the replay guard (a replayed Noise IK message 1
refused on both servers, also while the original still waits for its verdict, from
many threads at once; a refused client's retry not refused; XX left alone) and the
per-address handshake slots under a flood of half-open connections. Real servers on
127.0.0.1, real handshakes; a replay writes captured bytes on a plain TCP socket."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.connection import ConnectionConfig
from dtp.errors import DTPError
from dtp.replay_guard import DEFAULT_CAPACITY
from tests.polling import wait_for
from tests.test_handshake_slots import CLIENT, SERVER, closed_by_peer, idle
from tests.test_s16_ik_replay import Recorder, closed_within, replay

HUGE = 600.0  # the server's timeouts where a held connection would show
BOUND = 30.0  # how long the test waits for anything


def server_config(handshake_timeout: float = HUGE) -> ConnectionConfig:
    return ConnectionConfig(
        identity=SERVER, is_client=False, handshake_timeout=handshake_timeout, idle_timeout=HUGE
    )


def echo(sock: dtp.socket.DTPSocket) -> None:
    sock.sendall(sock.recv(100))


@pytest.fixture
def serve() -> Iterator[Callable[..., dtp.socket.DTPServer]]:
    """Start an echoing blocking DTPServer on 127.0.0.1 with the given keywords."""
    servers: list[dtp.socket.DTPServer] = []
    threads: list[threading.Thread] = []

    def start(**kw: Any) -> dtp.socket.DTPServer:
        kw.setdefault("config", server_config())
        server = dtp.socket.DTPServer(("127.0.0.1", 0), SERVER, **kw)
        servers.append(server)
        thread = threading.Thread(target=server.serve_forever, args=(echo,), daemon=True)
        thread.start()
        threads.append(thread)
        return server

    yield start
    for server in servers:
        server.close()
    for thread in threads:
        thread.join(BOUND)


@pytest.fixture
def recorders() -> Iterator[Callable[[tuple[str, int]], Recorder]]:
    """Recording proxies, closed at the end."""
    made: list[Recorder] = []

    def make(upstream: tuple[str, int]) -> Recorder:
        made.append(Recorder(upstream))
        return made[-1]

    yield make
    for recorder in made:
        recorder.close()


def echo_once(address: tuple[str, int], data: bytes, *, ik: bool = True) -> bytes:
    """Connect (IK, or XX without the server's key), echo ``data``, return the reply."""
    with dtp.socket.create_connection(
        address,
        timeout=BOUND,
        server_key=SERVER.noise_public if ik else None,
        identity=CLIENT,
    ) as sock:
        sock.sendall(data)
        return sock.recv(100)


async def aio_echo(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
    writer.write(await reader.read(100))
    await writer.drain()
    writer.close()


async def aio_closed_within(address: tuple[str, int], message: bytes) -> bool:
    """Replay ``message`` on a plain TCP connection: whether the server ends it in time."""
    reader, writer = await asyncio.open_connection(*address)
    try:
        writer.write(message)
        await writer.drain()

        async def until_eof() -> None:
            while await reader.read(65536):
                pass

        try:
            await asyncio.wait_for(until_eof(), BOUND)
        except ConnectionResetError:
            pass
        except TimeoutError:
            return False
        return True
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


# -- the replay guard, blocking server ------------------------------------------------------------


def test_a_replay_while_the_original_awaits_its_verdict_is_refused_before_the_hook(
    serve: Callable[..., dtp.socket.DTPServer],
    recorders: Callable[[tuple[str, int]], Recorder],
) -> None:
    deciding = threading.Event()
    go = threading.Event()
    calls: list[str] = []

    def hook(address: str) -> bool:
        calls.append(address)
        deciding.set()
        go.wait(BOUND)  # the original waits here for its verdict
        return True

    server = serve(accept=hook)
    recorder = recorders(server.address)
    replies: list[bytes] = []
    client = threading.Thread(target=lambda: replies.append(echo_once(recorder.address, b"hi")))
    client.start()
    try:
        assert deciding.wait(BOUND)
        # the server read all of message 1 before its hook ran: the capture is whole
        message = recorder.first_messages[0]
        replayed = replay(server.address, message)
        with replayed:
            assert closed_within(replayed)
        assert server.replays_refused == 1
        assert calls == [CLIENT.sui_address]  # the replay never reached the hook
    finally:
        go.set()
        client.join(BOUND)
    assert replies == [b"hi"]


def test_concurrent_handshakes_and_concurrent_replays_are_counted_exactly(
    serve: Callable[..., dtp.socket.DTPServer],
    recorders: Callable[[tuple[str, int]], Recorder],
) -> None:
    server = serve(max_handshakes_per_address=None)
    clients = 16
    replies: list[bytes] = []
    barrier = threading.Barrier(clients)

    def client(i: int) -> None:
        barrier.wait(BOUND)
        replies.append(echo_once(server.address, b"c%d" % i))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(BOUND * 2)
    assert sorted(replies) == sorted(b"c%d" % i for i in range(clients))
    assert server.replays_refused == 0
    assert len(server._replays) == clients  # one key each, none mistaken for another

    recorder = recorders(server.address)
    assert echo_once(recorder.address, b"original") == b"original"
    message = recorder.first_messages[0]
    replays = 12
    closed: list[bool] = []
    start = threading.Barrier(replays)

    def replayer() -> None:
        start.wait(BOUND)
        with replay(server.address, message) as sock:
            closed.append(closed_within(sock))

    threads = [threading.Thread(target=replayer) for _ in range(replays)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(BOUND * 2)
    assert closed == [True] * replays
    assert server.replays_refused == replays
    assert server._replays.capacity == DEFAULT_CAPACITY


def test_a_refused_client_is_served_on_its_retry_and_its_refused_message_stays_refused(
    serve: Callable[..., dtp.socket.DTPServer],
    recorders: Callable[[tuple[str, int]], Recorder],
) -> None:
    verdicts = ["not yet"]  # the firewall refuses once, then lets the client in

    def hook(address: str) -> str | None:
        return verdicts.pop() if verdicts else None

    server = serve(accept=hook)
    recorder = recorders(server.address)
    with pytest.raises(DTPError):
        echo_once(recorder.address, b"first")
    # the retry opens with a new ephemeral key: the refusal did not poison the guard
    assert echo_once(server.address, b"retry") == b"retry"
    assert server.replays_refused == 0
    # a replay of the refused first message is still a replay
    with replay(server.address, recorder.first_messages[0]) as sock:
        assert closed_within(sock)
    assert server.replays_refused == 1
    assert echo_once(server.address, b"again") == b"again"


def test_an_xx_handshake_leaves_the_guard_alone_and_its_replay_never_authenticates(
    serve: Callable[..., dtp.socket.DTPServer],
    recorders: Callable[[tuple[str, int]], Recorder],
) -> None:
    calls: list[str] = []

    def hook(address: str) -> None:
        calls.append(address)

    # a replayed XX message 1 only gets message 2 back: it waits for a message 3 that
    # never comes, until the handshake timeout
    server = serve(accept=hook, config=server_config(handshake_timeout=2.0))
    recorder = recorders(server.address)
    assert echo_once(recorder.address, b"xx", ik=False) == b"xx"
    assert len(server._replays) == 0  # XX: nothing to remember
    assert calls == [CLIENT.sui_address]
    with replay(server.address, recorder.first_messages[0]) as sock:
        assert closed_within(sock)
    assert calls == [CLIENT.sui_address]  # never authenticated: no hook ran
    assert server.replays_refused == 0
    assert wait_for(lambda: server.handshakes_failed == 1, BOUND)


# -- the replay guard, asyncio server -------------------------------------------------------------


def test_aio_a_replay_while_the_original_awaits_its_verdict_is_refused_and_a_retry_served(
    recorders: Callable[[tuple[str, int]], Recorder],
) -> None:
    async def main() -> None:
        deciding = asyncio.Event()
        go = asyncio.Event()
        calls: list[str] = []
        verdicts: list[str | None] = [None, "not yet"]

        async def hook(address: str) -> str | None:
            calls.append(address)
            verdict = verdicts.pop()
            if verdict is None:
                deciding.set()
                await asyncio.wait_for(go.wait(), BOUND)
            return verdict

        server = await dtp.aio.start_server(
            aio_echo, "127.0.0.1", 0, identity=SERVER, accept=hook, config=server_config()
        )
        recorder = recorders(server.address)
        try:
            # refused first: the retry, with a new ephemeral key, is not taken for a replay
            with pytest.raises(DTPError):
                await asyncio.to_thread(echo_once, recorder.address, b"first")
            original = asyncio.create_task(asyncio.to_thread(echo_once, recorder.address, b"hi"))
            await asyncio.wait_for(deciding.wait(), BOUND)
            assert len(recorder.first_messages) == 2
            # the original still awaits its verdict: its replay is refused meanwhile, and
            # so is a replay of the refused attempt
            for message in recorder.first_messages:
                assert await aio_closed_within(server.address, message)
            assert server.replays_refused == 2
            assert calls == [CLIENT.sui_address] * 2
            go.set()
            assert await asyncio.wait_for(original, BOUND) == b"hi"
        finally:
            go.set()
            server.close()
            await server.wait_closed()

    asyncio.run(main())


# -- half-open handshakes -------------------------------------------------------------------------

FLOOD = "127.0.0.2"  # another address on the loopback network


def partial_first_message(address: tuple[str, int], message: bytes) -> socket.socket:
    """A connection that sends the first part of a message 1, then nothing."""
    sock = idle(address, FLOOD)
    sock.sendall(message[: len(message) // 2])
    return sock


def test_a_flood_of_half_open_handshakes_is_timed_out_and_others_are_served(
    serve: Callable[..., dtp.socket.DTPServer],
    recorders: Callable[[tuple[str, int]], Recorder],
) -> None:
    server = serve(config=server_config(handshake_timeout=3.0))
    recorder = recorders(server.address)
    assert echo_once(recorder.address, b"x") == b"x"
    message = recorder.first_messages[0]
    flood = [idle(server.address, FLOOD) for _ in range(30)]
    flood += [partial_first_message(server.address, message) for _ in range(30)]
    try:
        # the flood holds its own address's slots, not the others'
        assert echo_once(server.address, b"served") == b"served"
        # and every one of its connections is closed, at the latest once it waited
        # past the handshake timeout
        for sock in flood:
            assert closed_by_peer(sock, BOUND)
        assert echo_once(server.address, b"after") == b"after"
    finally:
        for sock in flood:
            sock.close()


def test_aio_a_flood_of_half_open_handshakes_is_timed_out_and_others_are_served(
    recorders: Callable[[tuple[str, int]], Recorder],
) -> None:
    async def main() -> None:
        server = await dtp.aio.start_server(
            aio_echo, "127.0.0.1", 0, identity=SERVER, config=server_config(3.0)
        )
        recorder = recorders(server.address)
        flood: list[socket.socket] = []
        try:
            assert await asyncio.to_thread(echo_once, recorder.address, b"x") == b"x"
            message = recorder.first_messages[0]
            for _ in range(30):
                flood.append(await asyncio.to_thread(idle, server.address, FLOOD))
                flood.append(
                    await asyncio.to_thread(partial_first_message, server.address, message)
                )
            reply = await asyncio.to_thread(echo_once, server.address, b"served")
            assert reply == b"served"
            for sock in flood:
                assert await asyncio.to_thread(closed_by_peer, sock, BOUND)
        finally:
            for sock in flood:
                sock.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())
