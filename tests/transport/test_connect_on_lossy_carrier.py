"""Connects over a 20 %-lossy datagram link all succeed, on both APIs and both
handshake patterns: the client sends its handshake message again every 0.5 s until the
server's verdict arrives, the server answers each copy with its reply and its verdict
again, and the server's first-message window covers the first nine copies of message
1 (docs/protocol.md 8.6). On the simulated network, on its virtual clock, each run
replayed from its seed (docs/testing.md 3)."""

from __future__ import annotations

import collections
import contextlib
from typing import Any

import dtp.aio
import dtp.socket
from dtp.errors import DTPError
from dtp.testing.identities import identity
from dtp.testing.network import Link, SimNetwork, lossy
from dtp.transport.blocking import sched

SERVER_KEY, CLIENT_KEY = identity(1), identity(2)
LINK = Link(delay=0.02, loss=0.2, datagrams=True)


def _network(seed: int) -> SimNetwork:
    net = SimNetwork(seed=seed)
    net.add_hosts("client", "server")
    net.link("client", "server", LINK)
    return net


def _client(ik: bool) -> dict[str, Any]:
    """The client's keywords: IK (the server's key known) or XX, over a lossy carrier."""
    return {"server_key": SERVER_KEY.noise_public if ik else None, "config": lossy(CLIENT_KEY)}


def _asyncio_connects(seed: int, count: int, ik: bool) -> tuple[collections.Counter[str], int]:
    """``count`` connects one after another, each closed once in: how they ended, and
    how many records the link lost."""
    net = _network(seed)

    async def serve(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        writer.close()

    async def main() -> collections.Counter[str]:
        ends: collections.Counter[str] = collections.Counter()
        server = await dtp.aio.start_server(
            serve, "server", 7000, identity=SERVER_KEY, config=lossy(SERVER_KEY, server=True)
        )
        async with server:
            with net.host("client"):
                for _ in range(count):
                    try:
                        _, writer = await dtp.aio.open_connection("server", 7000, **_client(ik))
                    except DTPError as exc:
                        ends[repr(exc)] += 1
                        continue
                    ends["connected"] += 1
                    writer.close()
        return ends

    return net.run(main()), net.stats.chunks_lost


def _blocking_connects(seed: int, count: int) -> tuple[collections.Counter[str], int]:
    """:func:`_asyncio_connects` on dtp.socket (IK)."""
    net = _network(seed)
    ends: collections.Counter[str] = collections.Counter()

    def main() -> None:
        with net.host("server"):
            srv = dtp.socket.create_server(
                ("server", 7000), identity=SERVER_KEY, config=lossy(SERVER_KEY, server=True)
            )

        def accept() -> None:
            with contextlib.suppress(DTPError, OSError):  # (the server closed)
                while True:
                    sock, _ = srv.accept()
                    sock.close()

        server = sched.Thread(target=accept, name="accept")
        server.start()
        with srv:
            for _ in range(count):
                try:
                    sock = dtp.socket.create_connection(("server", 7000), **_client(True))
                except DTPError as exc:
                    ends[repr(exc)] += 1
                    continue
                ends["connected"] += 1
                sock.close()
        server.join()

    net.run_blocking(main, host="client")
    return ends, net.stats.chunks_lost


def test_a_thousand_asyncio_connects_over_a_lossy_link_all_succeed() -> None:
    for ik in (True, False):
        ends, lost = _asyncio_connects(71, 1000, ik)
        assert ends == {"connected": 1000}
        assert lost > 1000  # (the link loses: several records in each connect's life)


def test_a_thousand_blocking_connects_over_a_lossy_link_all_succeed() -> None:
    ends, lost = _blocking_connects(72, 1000)
    assert ends == {"connected": 1000}
    assert lost > 1000


def test_a_connect_over_a_lossy_link_replays_from_its_seed() -> None:
    assert _asyncio_connects(73, 20, True) == _asyncio_connects(73, 20, True)
