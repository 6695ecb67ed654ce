"""dtp.hostid.udp._asyncio held to what it promises (docs/udp.md) and against its blocking
twin dtp.hostid.udp:

- a draining relay (``finish``) took the backend's later replies off its reader and
  left them in the socket's buffer, lost uncounted: the docs count them as
  ``dropped_finishing``;
- AsyncUdpForwarder.close() cancelled a connect in progress and returned before it had
  unwound (a connection being made was still being closed behind a caller that took the
  forwarder as closed);
- bad numbers were taken without a word: an ``idle_timeout`` of 0 or less spun the
  sweeper (asyncio.sleep(0) in a loop: a core at 100%), a float ``max_pending`` raised
  in the socket's reader callback for every new source (its datagrams lost uncounted),
  a None ``idle_timeout`` killed the sweeper silently; the relay given one raised a
  TypeError past its backend socket and connection, both left open (those checks
  are tested on both drivers in tests/udp/test_arguments.py).

Real UDP sockets and DTP connections on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

import dtp.aio
import dtp.hostid.udp._asyncio
from dtp.hostid.udp import UdpBilling, UdpStats
from dtp.hostid.udp._asyncio import AsyncUdpForwarder, relay_udp_async
from dtp.ledger._objects import Sla
from tests.support.scopes import scope_of
from tests.udp.world import CLIENT, CONNECTION_ID, SERVER

BOUND = 5.0


async def _until(check: Any, timeout: float = BOUND) -> bool:
    """Whether ``check()`` came true within ``timeout`` seconds (looked at between the
    loop's turns: the relay and the connection run on this loop)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        if loop.time() > deadline:
            return bool(check())
        await asyncio.sleep(0.01)
    return True


async def _recvfrom(sock: socket.socket, timeout: float) -> tuple[bytes, Any]:
    """One datagram of the non-blocking ``sock`` (``loop.sock_recvfrom`` is asyncio's
    alone: uvloop has none, and these tests run on both loops)."""
    loop = asyncio.get_running_loop()
    got: asyncio.Future[tuple[bytes, Any]] = loop.create_future()

    def readable() -> None:
        try:
            got.set_result(sock.recvfrom(65536))
        except BlockingIOError:
            return
        except OSError as exc:
            got.set_exception(exc)
        loop.remove_reader(sock.fileno())

    loop.add_reader(sock.fileno(), readable)
    try:
        return await asyncio.wait_for(got, timeout)
    finally:
        loop.remove_reader(sock.fileno())


def test_replies_after_the_finish_are_counted_as_dropped_finishing() -> None:
    """docs/udp.md: once ``finish`` is set, later datagrams *and replies* are dropped
    and counted (``dropped_finishing``). The replies were left unread in the backend
    socket's buffer and vanished with it, counted nowhere."""
    stats = UdpStats()
    billing = UdpBilling(scope_of(CONNECTION_ID), Sla(1, 1, 0), CLIENT.ed25519_public, 10**9)

    async def main() -> int:
        backend = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        backend.bind(("127.0.0.1", 0))
        backend.setblocking(False)
        finish = asyncio.Event()
        ended = asyncio.Event()

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            try:
                await relay_udp_async(
                    reader, writer, backend.getsockname(), billing=billing, stats=stats,
                    idle_timeout=30, finish=finish,
                )  # fmt: skip
            finally:
                ended.set()

        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=SERVER)
        try:
            _, writer = await dtp.aio.open_connection(
                *server.address, server_key=SERVER.noise_public, timeout=BOUND
            )
            writer.send_datagram(b"request")
            _, relay = await _recvfrom(backend, BOUND)
            finish.set()
            # a datagram counted as finishing: the relay has switched over (one sent
            # before it woke to the finish is still relayed and billed)
            for _ in range(50):
                writer.send_datagram(b"late request")
                if await _until(lambda: stats.dropped_finishing > 0, 0.1):
                    break
            before = stats.dropped_finishing
            assert before > 0, stats.snapshot()
            for _ in range(3):
                backend.sendto(b"late reply", relay)  # (UDP: sent at once, or dropped)
            await _until(lambda: stats.dropped_finishing == before + 3, 2.0)
            counted = stats.dropped_finishing - before
            writer.close()
            await asyncio.wait_for(ended.wait(), BOUND)
            return counted
        finally:
            server.close()
            await server.wait_closed()
            backend.close()

    assert asyncio.run(main()) == 3
    assert stats.datagrams_out == 0  # (no reply went to the client)


def test_close_waits_for_a_connect_it_cancels_to_unwind() -> None:
    """The blocking forwarder's close() waits for connects in progress; the asyncio one
    cancels them -- and returned before they had unwound (a connect closing what it
    had half made was still at it)."""

    async def main() -> bool:
        started = asyncio.Event()
        unwound = asyncio.Event()

        async def connect() -> tuple[dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter]:
            started.set()
            try:
                await asyncio.Event().wait()  # (a connect that takes its time)
            finally:
                # undoing what was made takes a moment (closing a connection half made)
                await asyncio.sleep(0.05)
                unwound.set()
            raise AssertionError("never reached")

        fwd = await AsyncUdpForwarder.start(("127.0.0.1", 0), connect)
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            client.sendto(b"x", fwd.address)
            await asyncio.wait_for(started.wait(), BOUND)
            await asyncio.wait_for(fwd.close(), BOUND)
            return unwound.is_set()
        finally:
            client.close()

    assert asyncio.run(main())


def test_a_relay_cancelled_while_it_ends_is_cancelled(monkeypatch: pytest.MonkeyPatch) -> None:
    """An idle relay's end reads its control stream for a last receipt (up to 2 s);
    cancelled then (the daemon stopping), it swallowed the cancellation and returned
    its counters as if it had ended on its own."""
    made: list[socket.socket] = []
    real = dtp.hostid.udp._asyncio._open_backend

    async def open_backend(backend: tuple[str, int]) -> socket.socket:
        made.append(await real(backend))
        return made[-1]

    monkeypatch.setattr(dtp.hostid.udp._asyncio, "_open_backend", open_backend)
    billing = UdpBilling(scope_of(CONNECTION_ID), Sla(1, 1, 0), CLIENT.ed25519_public, 10**9)

    async def main() -> bool:
        backend = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        backend.bind(("127.0.0.1", 0))
        relays: list[asyncio.Task[UdpStats]] = []

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            relay = asyncio.create_task(
                relay_udp_async(
                    reader, writer, backend.getsockname(), billing=billing, idle_timeout=0.2
                )
            )
            relays.append(relay)
            await asyncio.wait([relay])

        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=SERVER)
        try:
            _, writer = await dtp.aio.open_connection(
                *server.address, server_key=SERVER.noise_public, timeout=BOUND
            )
            # idle: the relay ends, and reads its control stream for a last receipt (the
            # connection still open) once its backend socket is closed
            assert await _until(lambda: made and made[0].fileno() == -1)
            relay = relays[0]
            assert not relay.done()
            relay.cancel()
            await asyncio.wait([relay], timeout=BOUND)
            writer.close()
            return relay.cancelled()
        finally:
            server.close()
            await server.wait_closed()
            backend.close()

    assert asyncio.run(main())
