"""UDP through DTP (dtp.hostid.udp, dtp.hostid.udp._asyncio): the relay's end reaches the
forwarder, and a forwarder's close() with many flows does not take final_timeout per flow. Real UDP
sockets and DTP connections on 127.0.0.1.

The blocking UDP forwarder sends nothing more on a flow once its end has begun: a
batch going out after the final-report request was never paid for (the relay's final
count was taken before it), one batch per flow end."""

from __future__ import annotations

import asyncio
import functools
import socket
import threading
import time
import types
from collections.abc import Iterator
from typing import Any, cast

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import TunnelError
from dtp.hostid.udp import UdpForwarder
from dtp.hostid.udp._asyncio import AsyncUdpForwarder, relay_udp_async
from dtp.hostid.udp._blocking import _Flow
from dtp.socket import DTPSocket
from tests.support.polling import wait_for
from tests.udp.conftest import UdpDriver
from tests.udp.world import SERVER, DnsLikeBackend, meter


def _client() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    return sock


async def _until(check: object, timeout: float = 5.0) -> bool:
    """Poll ``check()`` on the event loop until it is true or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def test_an_async_relay_that_idles_out_closes_its_connection(backend: DnsLikeBackend) -> None:
    """relay_udp_async returned at its idle timeout and left the connection open (the
    server keeps a callback's connection): the forwarder's flow, kept from idling out by
    its own sends, sent every later datagram into a connection nobody relayed. Now the
    relay closes it, as relay_udp does: the flow ends and the next datagram opens a new
    one, answered."""

    async def main() -> None:
        ended = asyncio.Event()

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            try:
                await relay_udp_async(reader, writer, backend.address, idle_timeout=0.5)
            finally:
                ended.set()  # (and nothing closes the connection here)

        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=SERVER)

        async def connect() -> tuple[dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter]:
            return await dtp.aio.open_connection(
                *server.address, server_key=SERVER.noise_public, timeout=5
            )

        fwd = await AsyncUdpForwarder.start(("127.0.0.1", 0), connect, idle_timeout=60)
        client = _client()
        try:
            client.sendto(b"\x00\x01first", fwd.address)
            reply = await asyncio.to_thread(client.recv, 100)
            assert reply.startswith(b"\x00\x01first")
            await asyncio.wait_for(ended.wait(), 5)  # the relay idled out
            # the forwarder hears of it: the flow ends
            assert await _until(lambda: fwd.stats.sessions_closed == 1), fwd.stats
            client.sendto(b"\x00\x02second", fwd.address)
            reply = await asyncio.to_thread(client.recv, 100)
            assert reply.startswith(b"\x00\x02second")
            assert fwd.stats.sessions_opened == 2
        finally:
            client.close()
            await fwd.close()
            server.close()
            await server.wait_closed()

    asyncio.run(main())


def test_an_async_relay_with_an_unusable_backend_closes_its_connection() -> None:
    """As relay_udp closes its socket when the backend cannot be used."""

    async def main() -> None:
        raised: list[BaseException] = []
        closing: list[bool] = []

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            try:
                await relay_udp_async(reader, writer, ("255.255.255.255", 9))
            except TunnelError as exc:
                raised.append(exc)
            closing.append(writer.is_closing())
            writer.close()

        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=SERVER)
        try:
            reader, writer = await dtp.aio.open_connection(
                *server.address, server_key=SERVER.noise_public, timeout=5
            )
            assert await asyncio.wait_for(reader.read(1), 5) == b""
            writer.close()
            await writer.wait_closed()
        finally:
            server.close()
            await server.wait_closed()
        assert len(raised) == 1
        assert closing == [True]

    asyncio.run(main())


FLOWS = 4
FINAL_TIMEOUT = 1.5  # one after the other: FLOWS x 1.5 = 6 s


@pytest.fixture
def quiet_server() -> Iterator[dtp.socket.DTPServer]:
    """A server whose connections answer nothing (a relay gone quiet): no final report."""
    release = threading.Event()

    def quiet(sock: dtp.socket.DTPSocket) -> None:
        release.wait(30)
        sock.close()

    server = dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER)
    thread = threading.Thread(target=server.serve_forever, args=(quiet,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        release.set()
        server.close()
        thread.join(5)


def test_close_ends_the_flows_together(
    quiet_server: dtp.socket.DTPServer, driver: UdpDriver
) -> None:
    """close() ended its sessions one after the other, each waiting up to
    final_timeout for its relay's final report: with many flows to a relay gone quiet
    it took final_timeout per flow (256 flows by default: over 8 minutes; the daemon's
    drain, on the asyncio forwarder, gave up midway and left the later flows'
    connections open)."""
    connect = functools.partial(
        dtp.socket.create_connection,
        quiet_server.address,
        server_key=SERVER.noise_public,
        timeout=5,
    )
    clients = [_client() for _ in range(FLOWS)]
    try:
        with driver.forwarder(
            connect, quiet_server.address, meter_for=lambda _: meter(), final_timeout=FINAL_TIMEOUT
        ) as fwd:
            for client in clients:
                client.sendto(b"hello", fwd.address)
            assert wait_for(lambda: fwd.stats.sessions_opened == FLOWS, 5)
            assert wait_for(lambda: fwd.sessions == FLOWS, 5)
            start = time.monotonic()
            driver.close(fwd)
            took = time.monotonic() - start
    finally:
        for client in clients:
            client.close()
    assert fwd.stats.sessions_closed == FLOWS
    assert took < FLOWS * FINAL_TIMEOUT - 2.0, f"close() took {took:.2f} s"


def _forwarder() -> UdpForwarder:
    def connect() -> DTPSocket:
        raise AssertionError("not used")

    return UdpForwarder(("127.0.0.1", 0), connect)


def test_a_flow_that_is_ending_sends_nothing_more() -> None:
    sent: list[list[bytes]] = []

    def send_datagrams(out: list[bytes]) -> int:
        sent.append(list(out))
        return len(out)

    sock: Any = types.SimpleNamespace(
        max_datagram_size=1200, send_datagrams=send_datagrams, datagrams_dropped=0
    )
    fwd = _forwarder()
    try:
        flow = _Flow(("127.0.0.1", 9), cast(DTPSocket, sock), None, fwd.stats)
        with flow.lock:
            assert fwd._send_locked(flow, [b"a", b"b"])
        assert sent == [[b"a", b"b"]]
        with flow.lock:
            flow.closed = True  # (as _end_all marks it, before the final request)
            assert not fwd._send_locked(flow, [b"c"])
        assert sent == [[b"a", b"b"]]
        assert fwd.stats.snapshot()["dropped_no_session"] == 1
    finally:
        fwd.close()
