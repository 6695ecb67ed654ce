"""UDP relays and forwarders when things go wrong: a backend that refuses datagrams, a
backend address that cannot be used, connects that are slow, fail or raise, and bursts
beyond what a connecting flow may hold. Real UDP sockets and DTP connections on
127.0.0.1; every datagram is either delivered or counted as dropped, and only delivered
ones are billed."""

from __future__ import annotations

import asyncio
import functools
import gc
import socket
import threading
import time
import warnings
from collections.abc import Callable

import dtp.aio
import dtp.socket
from dtp.chain.objects import Sla
from dtp.errors import TunnelError
from dtp.keys import HostIdentity
from dtp.udp import UdpBilling, UdpStats, relay_udp
from dtp.udp_aio import relay_udp_async

SERVER = HostIdentity.from_private_bytes(b"\x71" * 32, b"\x71" * 32)
CLIENT = HostIdentity.from_private_bytes(b"\x72" * 32, b"\x72" * 32)
CONNECTION_ID = "0x" + "cd" * 32


def _closed_port() -> tuple[str, int]:
    """A UDP port on 127.0.0.1 nobody listens on: datagrams to it come back as ICMP
    port-unreachable, which the sender's next send reports as ECONNREFUSED."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    address = s.getsockname()
    s.close()
    return address


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def _billing() -> UdpBilling:
    return UdpBilling(CONNECTION_ID, Sla(1, 1, 0), CLIENT.ed25519_public, 10**9)


SENT = 30


def test_relay_bills_only_datagrams_the_backend_socket_took() -> None:
    """Backend port closed: a send fails with an earlier datagram's ICMP error and the
    kernel discards the datagram; it is counted as dropped, not billed."""
    billing, stats = _billing(), UdpStats()
    handler = functools.partial(
        relay_udp, backend=_closed_port(), billing=billing, stats=stats, idle_timeout=5
    )
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER) as server:
        threading.Thread(target=server.serve_forever, args=(handler,), daemon=True).start()
        with dtp.socket.create_connection(
            server.address, server_key=SERVER.noise_public, timeout=5
        ) as sock:
            # one burst, sent by the relay in one go: each send meets the ICMP error of
            # the one before (paced, the relay's reply reader would take it first)
            sock.send_datagrams([b"q%03d" % i for i in range(SENT)])
            _wait_for(lambda: stats.datagrams_in + stats.dropped_send_failed >= SENT)
    assert stats.datagrams_in + stats.dropped_send_failed == SENT
    assert stats.dropped_send_failed > 0
    assert billing.datagrams == stats.datagrams_in
    assert billing.bytes == stats.bytes_in == 4 * stats.datagrams_in


def test_async_relay_bills_only_datagrams_the_backend_socket_took() -> None:
    billing, stats = _billing(), UdpStats()
    backend = _closed_port()

    async def main() -> None:
        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            await relay_udp_async(
                reader, writer, backend, billing=billing, stats=stats, idle_timeout=5
            )
            writer.close()

        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=SERVER)
        try:
            _, writer = await dtp.aio.open_connection(
                *server.address, server_key=SERVER.noise_public, timeout=5
            )
            writer.send_datagrams([b"q%03d" % i for i in range(SENT)])
            for _ in range(500):
                if stats.datagrams_in + stats.dropped_send_failed >= SENT:
                    break
                await asyncio.sleep(0.01)
            writer.close()
            await writer.wait_closed()
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())
    assert stats.datagrams_in + stats.dropped_send_failed == SENT
    assert stats.dropped_send_failed > 0
    assert billing.datagrams == stats.datagrams_in
    assert billing.bytes == stats.bytes_in == 4 * stats.datagrams_in


UNUSABLE = ("255.255.255.255", 9)  # broadcast without SO_BROADCAST: connect() refuses


def test_relay_with_an_unusable_backend_raises_and_closes_its_sockets() -> None:
    with dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER) as server:
        accepted: list[dtp.socket.DTPSocket] = []
        raised: list[BaseException] = []

        def accept() -> None:
            sock, _ = server.accept(5)
            accepted.append(sock)
            try:
                relay_udp(sock, UNUSABLE)
            except BaseException as exc:
                raised.append(exc)

        thread = threading.Thread(target=accept)
        thread.start()
        with (
            warnings.catch_warnings(record=True) as caught,
            dtp.socket.create_connection(
                server.address, server_key=SERVER.noise_public, timeout=5
            ) as client,
        ):
            warnings.simplefilter("always")
            thread.join(5)
            (exc,) = raised
            assert isinstance(exc, TunnelError)
            assert "255.255.255.255" in str(exc)
            assert isinstance(exc.__cause__, OSError)
            # the relay closed the DTP connection: the client sees its end
            client.settimeout(5)
            assert client.recv(1) == b""
            del exc, raised[:]
            gc.collect()
        assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


def test_async_relay_with_an_unusable_backend_raises_and_closes_its_socket() -> None:
    async def main() -> list[BaseException]:
        raised: list[BaseException] = []

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            try:
                await relay_udp_async(reader, writer, UNUSABLE)
            except BaseException as exc:
                raised.append(exc)
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
        return raised

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        (exc,) = asyncio.run(main())
        assert isinstance(exc, TunnelError) and isinstance(exc.__cause__, OSError)
        del exc
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
