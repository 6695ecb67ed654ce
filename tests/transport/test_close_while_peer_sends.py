"""A client that sends a last message and closes while its server is still sending: the
server reads that message. Closed with the server's bytes unread in its socket, the
client's carrier was reset, and the server, writing into the reset, lost what it had
not read yet -- the last message and the CLOSE (a paid client's last receipts: the
provider claimed less than it was paid for). Each client API against each server, real
connections on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import DTPError
from tests.support.leaks import resource_warnings
from tests.transport.flooders import FLOODERS, SERVER, served

#: what the client sends just before its close (a receipt's size)
LAST = b"r" * 200
ROUNDS = 6


def close_blocking(address: tuple[str, int]) -> float:
    """Connect, read a little, send LAST and close: how long the close took."""
    sock = dtp.socket.create_connection(address, timeout=10, server_key=SERVER.noise_public)
    assert sock.recv(1000)
    sock.sendall(LAST)
    began = time.monotonic()
    sock.close()
    return time.monotonic() - began


def close_asyncio(address: tuple[str, int]) -> float:
    async def run() -> float:
        reader, writer = await dtp.aio.open_connection(
            *address, server_key=SERVER.noise_public, timeout=10
        )
        assert await reader.read(1000)
        writer.write(LAST)
        began = time.monotonic()
        writer.close()
        with contextlib.suppress(DTPError):
            await writer.wait_closed()
        return time.monotonic() - began

    return asyncio.run(run())


CLIENTS: dict[str, Callable[[tuple[str, int]], float]] = {
    "blocking": close_blocking,
    "asyncio": close_asyncio,
}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("server_api", sorted(FLOODERS))
def test_the_server_reads_what_a_client_sent_just_before_its_close(
    api: str, server_api: str
) -> None:
    """ROUNDS clients of ``api`` each send LAST and close while the ``server_api``
    server is sending: each time the server reads LAST and the clean end, and each
    close returns within the blocking close's linger; nothing is left open."""
    with FLOODERS[server_api]() as (address, results):
        outcomes: list[str] = []
        closes: list[float] = []

        def rounds() -> None:
            for _ in range(ROUNDS):
                closes.append(CLIENTS[api](address))
                got = results.get(timeout=60)
                outcomes.append("ok" if got == LAST else served(got))

        assert resource_warnings(rounds) == []
    assert outcomes == ["ok"] * ROUNDS
    assert max(closes) < dtp.socket.LINGER, closes
