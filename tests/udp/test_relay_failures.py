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
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import TunnelError
from dtp.hostid.udp import UdpBilling, UdpForwarder, UdpStats, relay_udp
from dtp.hostid.udp._asyncio import AsyncUdpForwarder, relay_udp_async
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from tests.support.scopes import scope_of
from tests.udp.conftest import UdpDriver
from tests.udp.world import DnsLikeBackend

SERVER = HostIdentity.from_private_bytes(b"\x71" * 32, b"\x71" * 32)
CLIENT = HostIdentity.from_private_bytes(b"\x72" * 32, b"\x72" * 32)
CONNECTION_ID = "0x" + "cd" * 32


def _closed_port() -> tuple[str, int]:
    """A UDP port on 127.0.0.1 nobody listens on: datagrams to it come back as ICMP
    port-unreachable, which the sender's next send reports as ECONNREFUSED."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    address: tuple[str, int] = s.getsockname()
    s.close()
    return address


def _wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def _dropped(stats: UdpStats, n: int) -> Callable[[], bool]:
    return lambda: stats.dropped_no_session == n


def _billing() -> UdpBilling:
    return UdpBilling(scope_of(CONNECTION_ID), Sla(1, 1, 0), CLIENT.ed25519_public, 10**9)


SENT = 30


def test_relay_bills_only_datagrams_the_backend_socket_took(driver: UdpDriver) -> None:
    """Backend port closed: a send fails with an earlier datagram's ICMP error and the
    kernel discards the datagram; it is counted as dropped, not billed."""
    billing, stats = _billing(), UdpStats()

    def relay_kw() -> dict[str, Any]:
        return {"billing": billing, "stats": stats, "idle_timeout": 5}

    with (
        driver.serve_relay(SERVER, _closed_port(), relay_kw, []) as address,
        dtp.socket.create_connection(address, server_key=SERVER.noise_public, timeout=5) as sock,
    ):
        # a burst, sent by the relay in one go: each send meets the ICMP error of
        # the one before (paced, the relay's reply reader would take it first). A
        # busy machine may split a burst: another one, until a send failed
        sent = 0
        for _ in range(20):
            sock.send_datagrams([b"q%03d" % i for i in range(SENT)])
            sent += SENT
            _wait_for(lambda n=sent: stats.datagrams_in + stats.dropped_send_failed >= n)
            if stats.dropped_send_failed:
                break
    assert stats.datagrams_in + stats.dropped_send_failed == sent
    assert stats.dropped_send_failed > 0
    assert billing.datagrams == stats.datagrams_in
    assert billing.bytes == stats.bytes_in == 4 * stats.datagrams_in


UNUSABLE = ("255.255.255.255", 9)  # broadcast without SO_BROADCAST: connect() refuses


def test_relay_with_an_unusable_backend_raises_and_closes_its_sockets(driver: UdpDriver) -> None:
    raised: list[BaseException] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with (
            driver.serve_relay(SERVER, UNUSABLE, dict, [], raised=raised) as address,
            dtp.socket.create_connection(
                address, server_key=SERVER.noise_public, timeout=5
            ) as client,
        ):
            # the relay closed the DTP connection: the client sees its end
            client.settimeout(5)
            assert client.recv(1) == b""
            _wait_for(lambda: bool(raised))
            (exc,) = raised
            assert isinstance(exc, TunnelError)
            assert "255.255.255.255" in str(exc)
            assert isinstance(exc.__cause__, OSError)
            del exc, raised[:]
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]


@pytest.fixture
def echo_relay() -> Iterator[tuple[Callable[[], dtp.socket.DTPSocket], list[threading.Event]]]:
    """A connect() to a relay in front of an echo backend, and one event per accepted
    connection, set when its relay_udp returned (the connection ended)."""
    echo = DnsLikeBackend()  # answers each datagram with it and 4 bytes more
    ended: list[threading.Event] = []

    def handler(sock: dtp.socket.DTPSocket) -> None:
        done = threading.Event()
        ended.append(done)
        try:
            relay_udp(sock, echo.address, idle_timeout=30)
        finally:
            done.set()

    server = dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER)
    threading.Thread(target=server.serve_forever, args=(handler,), daemon=True).start()
    connect = functools.partial(
        dtp.socket.create_connection, server.address, server_key=SERVER.noise_public, timeout=5
    )
    try:
        yield connect, ended
    finally:
        server.close()
        echo.close()


def _client(timeout: float = 2.0) -> socket.socket:
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.bind(("127.0.0.1", 0))
    c.settimeout(timeout)
    return c


def _udp_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("dtp-udp-")}


def test_forwarder_close_during_a_connect_leaves_nothing_behind(
    echo_relay: tuple[Callable[[], dtp.socket.DTPSocket], list[threading.Event]],
) -> None:
    """close() while a flow's connect() is still running (longer than close() used to
    wait for it): no session, connection or thread outlives close(); the datagram that
    waited for the connection is counted as dropped."""
    real, ended = echo_relay
    before = _udp_threads()

    def slow() -> dtp.socket.DTPSocket:
        time.sleep(2.5)
        return real()

    fwd = UdpForwarder(("127.0.0.1", 0), slow)
    client = _client()
    try:
        client.sendto(b"hello", fwd.address)
        time.sleep(0.3)  # the connect has begun
        fwd.close()
        assert fwd.sessions == 0
        assert fwd.stats.dropped_no_session == 1
        assert fwd.stats.sessions_opened == 0
        # the connection made after close() began was closed: the relay saw its end
        _wait_for(lambda: len(ended) == 1 and ended[0].is_set())
        assert len(ended) == 1 and ended[0].is_set()
        time.sleep(0.6)  # a session thread would notice its end within 0.5 s
        assert not _udp_threads() - before
    finally:
        client.close()
        fwd.close()


def test_a_slow_connect_holds_up_only_its_own_flow(
    echo_relay: tuple[Callable[[], dtp.socket.DTPSocket], list[threading.Event]],
) -> None:
    """While a new source's connect() takes 2 s, an established flow keeps getting its
    replies at once; the new source's first datagrams wait for its connection (up to
    max_pending, the rest dropped and counted) and then go through."""
    real, _ = echo_relay
    slow_for_b = threading.Event()
    # b's connect lasts until the pings are done (up to a minute): pings that waited for
    # it would wait that long, so their bound need only say "not held up"
    go = threading.Event()

    def connect() -> dtp.socket.DTPSocket:
        if slow_for_b.is_set():
            slow_for_b.clear()
            go.wait(60)
        return real()

    with UdpForwarder(("127.0.0.1", 0), connect, max_pending=3) as fwd:
        a, b = _client(30.0), _client(5.0)
        try:
            a.sendto(b"warm", fwd.address)
            assert a.recvfrom(100)[0][:-4] == b"warm"
            slow_for_b.set()
            for i in range(5):
                b.sendto(b"b%d" % i, fwd.address)
            _wait_for(lambda: fwd.stats.dropped_no_session == 2)
            assert fwd.stats.dropped_no_session == 2  # beyond max_pending
            for i in range(3):
                t0 = time.monotonic()
                a.sendto(b"ping%d" % i, fwd.address)
                assert a.recvfrom(100)[0][:-4] == b"ping%d" % i
                assert time.monotonic() - t0 < 10
            assert fwd.sessions == 1  # b is still connecting
            go.set()
            assert sorted(b.recvfrom(100)[0][:-4] for _ in range(3)) == [b"b0", b"b1", b"b2"]
            assert fwd.sessions == 2
        finally:
            go.set()
            a.close()
            b.close()
    assert fwd.stats.datagrams_out == 1 + 3 + 3


def test_connect_or_meter_failures_of_any_kind_keep_the_forwarder_running(
    backend: DnsLikeBackend, driver: UdpDriver, caplog: pytest.LogCaptureFixture
) -> None:
    """connect() raising a ValueError, then an OSError, then meter_for() raising: each
    time the waiting datagram is dropped and counted and the flow goes (left
    'connecting', its source was blackholed for good), the source waits retry_after
    before the next attempt (its datagrams meanwhile dropped and counted), unexpected
    exceptions are logged with their traceback, and forwarding goes on."""
    failures: list[BaseException] = [ValueError("bad"), ConnectionRefusedError(111, "refused")]
    calls = [0]

    def fail() -> None:
        calls[0] += 1
        if failures:
            raise failures.pop(0)

    meter_fails = [True]

    def meter_for(conn: object) -> None:
        if meter_fails:
            meter_fails.clear()
            raise RuntimeError("no meter")
        return None

    ended: list[float] = []
    with driver.serve_relay(SERVER, backend.address, lambda: {"idle_timeout": 30}, ended) as at:
        connect = functools.partial(
            dtp.socket.create_connection, at, server_key=SERVER.noise_public, timeout=5
        )
        with driver.forwarder(connect, at, fail=fail, meter_for=meter_for, retry_after=0.5) as fwd:
            stats = fwd.stats
            client = _client()
            try:
                for attempt in range(3):
                    client.sendto(b"lost%d" % attempt, fwd.address)
                    _wait_for(_dropped(stats, 2 * attempt + 1))
                    assert stats.dropped_no_session == 2 * attempt + 1
                    assert fwd.sessions == 0
                    client.sendto(b"too soon", fwd.address)  # within retry_after: no connect
                    _wait_for(_dropped(stats, 2 * attempt + 2))
                    assert stats.dropped_no_session == 2 * attempt + 2
                    assert calls[0] == attempt + 1
                    time.sleep(0.6)
                client.sendto(b"works", fwd.address)
                assert client.recvfrom(100)[0][:-4] == b"works"
                assert calls[0] == 4 and fwd.sessions == 1
                # the connection whose meter_for() failed is closed while the forwarder
                # runs: its relay ended, the working flow's not
                _wait_for(lambda: len(ended) == 1)
                assert len(ended) == 1
            finally:
                client.close()
        assert stats.sessions_opened == stats.sessions_closed == 1
        # the forwarder closed: the working flow's relay ended too
        _wait_for(lambda: len(ended) == 2)
        assert len(ended) == 2
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert [type(r.exc_info[1]) for r in tracebacks if r.exc_info] == [ValueError, RuntimeError]


async def _async_echo_relay(
    ended: list[asyncio.Event],
) -> tuple[dtp.aio.DTPServer, DnsLikeBackend]:
    """An asyncio relay in front of a DNS-style backend; one event per accepted
    connection, set when its relay returned."""
    echo = DnsLikeBackend()

    async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
        done = asyncio.Event()
        ended.append(done)
        try:
            await relay_udp_async(reader, writer, echo.address, idle_timeout=30)
        finally:
            writer.close()
            done.set()

    server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=SERVER)
    return server, echo


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


def test_async_forwarder_counts_a_new_flows_burst_beyond_max_pending() -> None:
    async def main() -> None:
        ended: list[asyncio.Event] = []
        server, echo = await _async_echo_relay(ended)

        async def connect() -> tuple[dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter]:
            return await dtp.aio.open_connection(
                *server.address, server_key=SERVER.noise_public, timeout=5
            )

        fwd = await AsyncUdpForwarder.start(("127.0.0.1", 0), connect, max_pending=2)
        client = _client()
        try:
            for i in range(10):  # all queued before the event loop reads any
                client.sendto(b"d%d" % i, fwd.address)
            await _until(lambda: fwd.stats.datagrams_out == 2)
            st = fwd.stats.snapshot()
            assert st["datagrams_out"] == 2 and st["dropped_no_session"] == 8
        finally:
            client.close()
            await fwd.close()
            server.close()
            await server.wait_closed()
            echo.close()

    asyncio.run(main())


def test_async_forwarder_close_during_a_connect_counts_what_waited() -> None:
    async def main() -> None:
        started = asyncio.Event()

        async def slow() -> tuple[dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter]:
            started.set()
            await asyncio.sleep(600)  # a close() that waited for it would take 10 minutes
            raise AssertionError("not reached: close() cancels the connect")

        fwd = await AsyncUdpForwarder.start(("127.0.0.1", 0), slow)
        client = _client()
        try:
            client.sendto(b"a", fwd.address)
            client.sendto(b"b", fwd.address)
            await asyncio.wait_for(started.wait(), 5)
            await _until(lambda: False, 0.1)  # both datagrams read
            t0 = time.monotonic()
            await fwd.close()
            assert time.monotonic() - t0 < 30
            assert fwd.sessions == 0
            assert fwd.stats.dropped_no_session == 2
        finally:
            client.close()
            await fwd.close()

    asyncio.run(main())


def test_forwarders_that_cannot_bind_close_their_socket() -> None:
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(OSError):
                UdpForwarder(taken.getsockname(), _unreachable)
            with pytest.raises(OSError):
                asyncio.run(AsyncUdpForwarder.start(taken.getsockname(), _unreachable_async))
            gc.collect()
        assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    finally:
        taken.close()


def _unreachable() -> dtp.socket.DTPSocket:
    raise AssertionError("never called")


async def _unreachable_async() -> tuple[dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter]:
    raise AssertionError("never called")
