"""An orderly close reaches the peer over a 20 %-lossy datagram link, on both APIs,
whichever side closes: the peer's read ends cleanly (b""), not with ConnectionLost, in
every one of 30 seeds. The one record with the CLOSE may be lost while the carrier's
end still arrives, so the closing side keeps its carrier open for the closing period
and sends the CLOSE again at each of its eight probe timeouts (docs/protocol.md 3.1).
The servers keep their default first-message window, which over a lossy carrier covers
the client's resends (8.6). Swept over seeds on the simulated network, each run
replayed exactly from its seed (docs/testing.md 3)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator

import dtp.aio
import dtp.socket
from dtp.errors import DTPError
from dtp.testing.identities import identity
from dtp.testing.network import Link, SimNetwork, lossy
from dtp.transport.asyncio._server import ClientCallback
from dtp.transport.blocking import sched

SERVER_KEY, CLIENT_KEY = identity(1), identity(2)
LINK = Link(delay=0.02, loss=0.2, datagrams=True)
SEEDS = range(30)
ROUNDS = 3


def _network(seed: int) -> SimNetwork:
    net = SimNetwork(seed=seed)
    net.add_hosts("client", "server")
    net.link("client", "server", LINK)
    return net


@contextlib.contextmanager
def _blocking_pair(
    net: SimNetwork, serve: Callable[[dtp.socket.DTPSocket], None]
) -> Iterator[dtp.socket.DTPSocket]:
    """In a blocking program on host "client": a server on host "server" that hands its
    one connection to ``serve`` in a thread, and a client connected to it; the thread is
    joined once the client closed."""

    def accept(srv: dtp.socket.DTPServer) -> None:
        sock, _ = srv.accept()
        with sock:
            serve(sock)

    with net.host("server"):
        srv = dtp.socket.create_server(
            ("server", 7000),
            identity=SERVER_KEY,
            config=lossy(SERVER_KEY, server=True),
        )
        server = sched.Thread(target=accept, args=(srv,), name="serve")
        server.start()
    with (
        srv,
        dtp.socket.create_connection(
            ("server", 7000), server_key=SERVER_KEY.noise_public, config=lossy(CLIENT_KEY)
        ) as sock,
    ):
        yield sock
    server.join()


@contextlib.asynccontextmanager
async def _asyncio_pair(
    net: SimNetwork, serve: ClientCallback
) -> AsyncIterator[tuple[dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter]]:
    """:func:`_blocking_pair` on dtp.aio: a server on host "server" that hands each
    connection to ``serve``, and a client on host "client" connected to it; the server
    closes on exit (the caller closes the client first)."""
    server = await dtp.aio.start_server(
        serve,
        "server",
        7000,
        identity=SERVER_KEY,
        config=lossy(SERVER_KEY, server=True),
    )
    async with server:
        with net.host("client"):
            reader, writer = await dtp.aio.open_connection(
                "server", 7000, server_key=SERVER_KEY.noise_public, config=lossy(CLIENT_KEY)
            )
        yield reader, writer


def _blocking_run(seed: int) -> tuple[str, int]:
    """A blocking echo exchange, then the client's close: how the server's reads ended
    ("eof" or the error), and how many records the link lost."""
    net = _network(seed)
    ended: list[str] = []

    def serve(sock: dtp.socket.DTPSocket) -> None:
        try:
            while data := sock.recv(100):
                sock.sendall(data.upper())
            ended.append("eof")
        except DTPError as exc:
            ended.append(repr(exc))

    def main() -> None:
        with _blocking_pair(net, serve) as sock:
            for i in range(ROUNDS):
                sock.sendall(b"hello %d" % i)
                assert sock.recv(100) == b"HELLO %d" % i

    net.run_blocking(main, host="client")
    return ended[0], net.stats.chunks_lost


def _asyncio_run(seed: int) -> tuple[str, int]:
    """:func:`_blocking_run` on dtp.aio."""
    net = _network(seed)

    async def main() -> str:
        ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def serve(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            try:
                while data := await reader.read(100):
                    writer.write(data.upper())
                    await writer.drain()
                ended.set_result("eof")
            except DTPError as exc:
                ended.set_result(repr(exc))
            finally:
                writer.close()

        async with _asyncio_pair(net, serve) as (reader, writer):
            for i in range(ROUNDS):
                writer.write(b"hello %d" % i)
                await writer.drain()
                assert await reader.read(100) == b"HELLO %d" % i
            writer.close()
            await writer.wait_closed()
            return await ended

    return net.run(main()), net.stats.chunks_lost


def test_a_clients_orderly_close_survives_a_lossy_datagram_link(api: str) -> None:
    run = _blocking_run if api == "blocking" else _asyncio_run
    outcomes = {seed: run(seed) for seed in SEEDS}
    assert sum(lost for _, lost in outcomes.values()) > len(SEEDS)  # (the link loses)
    unclean = {seed: end for seed, (end, _) in outcomes.items() if end != "eof"}
    assert unclean == {}
    assert run(SEEDS[0]) == outcomes[SEEDS[0]]  # (each run replays from its seed)


def _blocking_server_closes(seed: int) -> tuple[str, int]:
    """The server answers one request and closes: how the client's reads ended."""
    net = _network(seed)

    def serve(sock: dtp.socket.DTPSocket) -> None:
        sock.sendall(sock.recv(100).upper())

    def main() -> str:
        with _blocking_pair(net, serve) as sock:
            sock.sendall(b"hello")
            got = b""
            try:
                while data := sock.recv(100):
                    got += data
                end = "eof"
            except DTPError as exc:
                end = repr(exc)
            assert got == b"HELLO"
        return end

    return net.run_blocking(main, host="client"), net.stats.chunks_lost


def _asyncio_server_closes(seed: int) -> tuple[str, int]:
    """:func:`_blocking_server_closes` on dtp.aio."""
    net = _network(seed)

    async def serve(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        writer.write((await reader.read(100)).upper())
        await writer.drain()
        writer.close()
        await writer.wait_closed()

    async def main() -> str:
        async with _asyncio_pair(net, serve) as (reader, writer):
            writer.write(b"hello")
            try:
                assert await reader.read() == b"HELLO"  # (to the end)
                end = "eof"
            except DTPError as exc:
                end = repr(exc)
            writer.close()
            await writer.wait_closed()
            return end

    return net.run(main()), net.stats.chunks_lost


def test_a_servers_orderly_close_survives_a_lossy_datagram_link(api: str) -> None:
    run = _blocking_server_closes if api == "blocking" else _asyncio_server_closes
    outcomes = {seed: run(seed) for seed in SEEDS}
    assert sum(lost for _, lost in outcomes.values()) > len(SEEDS) // 2  # (the link loses)
    unclean = {seed: end for seed, (end, _) in outcomes.items() if end != "eof"}
    assert unclean == {}
