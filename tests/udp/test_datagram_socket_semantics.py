"""UDP through DTP (dtp.hostid.udp, dtp.hostid.udp._asyncio) as a datagram socket user meets it:
an ICMP error on the backend's socket, addresses the socket module cannot take, the
threads and ports left after close(), and datagrams lost on a flow whose connection had
ended. Real UDP sockets and DTP connections on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import socket
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

import dtp.aio
import dtp.hostid.udp._asyncio
import dtp.hostid.udp._blocking
import dtp.hostid.udp._sockets
import dtp.socket
from dtp.errors import TunnelError
from dtp.hostid.udp import UdpBilling, UdpForwarder, UdpStats, relay_udp
from dtp.hostid.udp._asyncio import AsyncUdpForwarder, relay_udp_async
from dtp.ledger._objects import Sla
from tests.support.leaks import resource_warnings
from tests.support.polling import wait_for
from tests.support.scopes import scope_of
from tests.udp.conftest import UdpDriver
from tests.udp.world import CLIENT, CONNECTION_ID, SERVER, DnsLikeBackend

BOUND = 10.0


class _Unreachable(socket.socket):
    """A backend socket whose next read reports an ICMP host-unreachable, as the
    kernel does on a connected UDP socket once a datagram to a host gone away fails
    (EHOSTUNREACH, reported once, then cleared). No such host can be had on
    127.0.0.1, so the report is made here; the socket is otherwise real."""

    __slots__ = ()
    errors: ClassVar[list[int]] = []

    def recv(self, *args: Any) -> bytes:
        if _Unreachable.errors:
            raise OSError(_Unreachable.errors.pop(), "No route to host")
        return super().recv(*args)


@pytest.fixture
def unreachable_once(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    real = dtp.hostid.udp._sockets.backend_socket

    def backend_socket(*args: Any, **kw: Any) -> socket.socket:
        udp = real(*args, **kw)
        udp.__class__ = _Unreachable
        return udp

    real_run = dtp.hostid.udp._sockets.recv_datagram_run

    def recv_datagram_run(sock: socket.socket, limit: int, sources: bool = False) -> Any:
        # the relays read a run at once, in the C core (recvmmsg) past recv(): the
        # report is made for that read too
        if isinstance(sock, _Unreachable) and _Unreachable.errors:
            return [], [], _Unreachable.errors.pop()
        return real_run(sock, limit, sources)

    monkeypatch.setattr(dtp.hostid.udp._sockets, "recv_datagram_run", recv_datagram_run)
    monkeypatch.setattr(dtp.hostid.udp._blocking, "backend_socket", backend_socket)
    monkeypatch.setattr("dtp.hostid.udp._asyncio.backend_socket", backend_socket)
    _Unreachable.errors[:] = [errno.EHOSTUNREACH]
    yield
    _Unreachable.errors.clear()


def _server(handler: Any) -> dtp.socket.DTPServer:
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=SERVER)
    threading.Thread(target=server.serve_forever, args=(handler,), daemon=True).start()
    return server


def _connect(server: dtp.socket.DTPServer) -> dtp.socket.DTPSocket:
    return dtp.socket.create_connection(server.address, server_key=SERVER.noise_public, timeout=5)


def _answered(sock: dtp.socket.DTPSocket, query: bytes) -> bool:
    """Whether a query sent on ``sock`` comes back answered (a few tries: UDP)."""
    for _ in range(5):
        sock.send_datagram(query)
        try:
            while True:
                if sock.recv_datagram(1.0).startswith(query):
                    return True
        except TimeoutError:
            continue
    return False


def test_a_relay_still_replies_after_an_icmp_error(
    backend: DnsLikeBackend, unreachable_once: None, driver: UdpDriver
) -> None:
    """Only ECONNREFUSED was taken as the ICMP error a read may report: any other
    (EHOSTUNREACH from a backend host gone away) ended the blocking relay's reply
    thread for good, while the requests were still forwarded (and billed) -- no reply
    ever came back, and the client's traffic kept the relay from idling out. The
    asyncio relay read on after the error, but raised it out of its reader callback:
    an 'Exception in callback' with a traceback for an ordinary UDP event, and the
    replies read before it lost uncounted."""
    stats = UdpStats()

    def relay_kw() -> dict[str, Any]:
        return {"stats": stats, "idle_timeout": BOUND}

    with (
        driver.serve_relay(SERVER, backend.address, relay_kw, []) as address,
        dtp.socket.create_connection(address, server_key=SERVER.noise_public, timeout=5) as sock,
    ):
        assert _answered(sock, b"\x00\x01first")
        assert _answered(sock, b"\x00\x02second")
    assert not _Unreachable.errors  # (the error was reported)
    assert driver.loop_errors == []


BAD_LISTEN = [("127.0.0.1\x00", 0), ("127.0.0.1", 0, 0)]


@pytest.mark.parametrize("listen", BAD_LISTEN, ids=["null in host", "ipv4 with flowinfo"])
def test_a_listen_address_bind_refuses_leaves_no_socket(listen: tuple[str, int]) -> None:
    """bind() raises TypeError for these: the socket made for it was closed only on an
    OSError, and was left to the garbage collector (a ResourceWarning)."""

    def blocking() -> None:
        with pytest.raises(TypeError):
            UdpForwarder(listen, lambda: None)  # type: ignore[arg-type,return-value]

    def aio() -> None:
        async def start() -> None:
            with pytest.raises(TypeError):
                await AsyncUdpForwarder.start(listen, None)  # type: ignore[arg-type]

        asyncio.run(start())

    assert resource_warnings(blocking) == []
    assert resource_warnings(aio) == []


@pytest.mark.parametrize("host", [None, b"127.0.0.1"])
def test_a_listen_host_that_is_no_str_is_named(host: object) -> None:
    """A None or bytes host failed on the family test, with words about something else
    (``argument of type 'NoneType' is not iterable``)."""
    with pytest.raises(TypeError, match=r"listen must be a \(host, port\) tuple"):
        UdpForwarder((host, 0), lambda: None)  # type: ignore[arg-type,return-value]


@pytest.mark.parametrize(
    "backend", [("127.0.0.1\x00", 53), (None, 53)], ids=["null in host", "no host"]
)
def test_a_backend_relay_udp_cannot_use_is_a_tunnel_error(backend: tuple[str, int]) -> None:
    """relay_udp documents TunnelError, and its connection closed, for a backend it
    cannot use: these raised TypeError, the UDP socket made for the first left open."""
    raised: list[BaseException] = []

    def handler(sock: dtp.socket.DTPSocket) -> None:
        try:
            relay_udp(sock, backend)
        except BaseException as exc:
            raised.append(exc)

    def run() -> None:
        with _server(handler) as server, _connect(server):
            assert wait_for(lambda: raised, BOUND)

    assert resource_warnings(run) == []
    assert isinstance(raised[0], TunnelError), raised


def test_the_asyncio_relay_names_a_backend_with_no_host() -> None:
    async def main() -> BaseException | None:
        got: list[BaseException] = []

        async def handle(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            try:
                await relay_udp_async(reader, writer, (None, 53))  # type: ignore[arg-type]
            except BaseException as exc:
                got.append(exc)

        server = await dtp.aio.start_server(handle, "127.0.0.1", 0, identity=SERVER)
        try:
            _, writer = await dtp.aio.open_connection(
                *server.address, server_key=SERVER.noise_public, timeout=5
            )
            for _ in range(500):
                if got:
                    break
                await asyncio.sleep(0.01)
            writer.close()
        finally:
            server.close()
        return got[0] if got else None

    assert isinstance(asyncio.run(main()), TunnelError)


def _flow_threads() -> list[threading.Thread]:
    names = ("dtp-udp-session", "dtp-udp-control")
    return [t for t in threading.enumerate() if t.name in names and t.is_alive()]


def test_close_leaves_no_session_thread(backend: DnsLikeBackend) -> None:
    """close() returned with the sessions' reply threads still alive (they end once the
    connection is closed, but nobody waited for them), as a leak check right after a
    socket's close would see them."""
    before = set(_flow_threads())  # (another test's, still ending)
    with _server(functools.partial(relay_udp, backend=backend.address)) as server:
        for _ in range(3):
            fwd = UdpForwarder(("127.0.0.1", 0), functools.partial(_connect, server))
            clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(12)]
            try:
                for i, client in enumerate(clients):
                    client.settimeout(2)
                    client.sendto(b"\x00" + bytes([i]) + b"q", fwd.address)
                    client.recvfrom(100)
                assert wait_for(lambda fwd=fwd: fwd.sessions == 12, BOUND)
            finally:
                fwd.close()
                for client in clients:
                    client.close()
            assert set(_flow_threads()) - before == set()


def test_a_relay_that_idles_out_leaves_no_control_thread(backend: DnsLikeBackend) -> None:
    """The billed relay closes the connection before it waits for its control thread
    (which ends with the close): it returns with no control thread left reading, the
    client still connected. One client at a time, so that the control threads alive
    when a relay returns are its own."""
    left: list[set[threading.Thread]] = []

    def control_threads() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "dtp-udp-control"}

    def handler(sock: dtp.socket.DTPSocket) -> None:
        before = control_threads()
        billing = UdpBilling(scope_of(CONNECTION_ID), Sla(0, 1, 0), CLIENT.ed25519_public, 10**6)
        relay_udp(sock, backend.address, billing=billing, idle_timeout=0.2)
        left.append(control_threads() - before)

    with _server(handler) as server, contextlib.ExitStack() as clients:
        for served in range(1, 5):
            clients.enter_context(_connect(server))
            assert wait_for(lambda served=served: len(left) == served, BOUND)
    assert left == [set()] * 4


def test_a_second_close_waits_for_the_first() -> None:
    """A close() called while another was at work (waiting for a connect) returned at
    once, the port still bound; AsyncUdpForwarder.close() waits for the other."""
    gate = threading.Event()
    connecting = threading.Event()

    def connect() -> dtp.socket.DTPSocket:
        connecting.set()
        gate.wait(BOUND)
        raise OSError("no service")

    fwd = UdpForwarder(("127.0.0.1", 0), connect)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.sendto(b"x", fwd.address)
    assert connecting.wait(BOUND)
    first = threading.Thread(target=fwd.close)
    first.start()
    assert wait_for(fwd._closed.is_set, BOUND)
    port_free: list[bool] = []
    second_done = threading.Event()

    def second() -> None:
        fwd.close()
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.bind(fwd.address)
            port_free.append(True)
        except OSError:
            port_free.append(False)
        finally:
            probe.close()
            second_done.set()

    threading.Thread(target=second).start()
    # (returning now, before the connect is let go, is the defect: give it the chance)
    second_done.wait(0.5)
    gate.set()
    assert second_done.wait(BOUND)
    first.join(BOUND)
    client.close()
    assert port_free == [True]


def test_datagrams_sent_on_an_ended_connection_are_counted(
    backend: DnsLikeBackend, driver: UdpDriver
) -> None:
    """A batch whose send found the flow's connection ended vanished: not forwarded, not
    counted as dropped (UdpStats promises every drop is counted), and still counted
    as sent, which the relay's final report could then be signed for."""
    relay_kw: dict[str, Any] = {"idle_timeout": BOUND}
    ended: list[float] = []
    with driver.serve_relay(SERVER, backend.address, lambda: relay_kw, ended) as address:
        counts = driver.send_on_ended_flow(address, SERVER.noise_public, [b"a", b"bc"])
    # dropped_no_session, then what the flow counts as sent
    assert counts == (2, 0, 0)


def test_drain_by_source_groups_each_sources_burst_in_order() -> None:
    """A forwarder's read: one source's burst comes back as one list, several sources'
    datagrams each under their own source, every datagram once, in arrival order."""
    from dtp.hostid.udp._sockets import drain_by_source

    with contextlib.ExitStack() as stack:
        front = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM))
        front.bind(("127.0.0.1", 0))
        front.setblocking(False)
        a, b = (
            stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) for _ in range(2)
        )
        for s in (a, b):
            s.bind(("127.0.0.1", 0))
        for i in range(5):
            a.sendto(b"a%d" % i, front.getsockname())
        got = _drain_all(front, drain_by_source, 5)
        assert got == {a.getsockname(): [b"a%d" % i for i in range(5)]}
        for i in range(6):
            (a if i % 2 else b).sendto(b"%d" % i, front.getsockname())
        got = _drain_all(front, drain_by_source, 6)
        assert got == {b.getsockname(): [b"0", b"2", b"4"], a.getsockname(): [b"1", b"3", b"5"]}


def _drain_all(sock: socket.socket, drain: Any, count: int) -> dict[Any, list[bytes]]:
    """``drain`` until ``count`` datagrams came (loopback delivers at once; the bound
    only guards a loaded machine)."""
    got: dict[Any, list[bytes]] = {}
    deadline = BOUND
    waited = 0.0
    while sum(map(len, got.values())) < count and waited < deadline:
        for source, batch in drain(sock).items():
            got.setdefault(source, []).extend(batch)
        if sum(map(len, got.values())) < count:
            threading.Event().wait(0.01)
            waited += 0.01
    return got
