"""The services daemon's UDP services and forwards: a stop right after
traffic bills the flow's last datagrams (they went unclaimed), the forward's status
shows its payments and its unpaid drops, the service's status counts while a flow is
open, each UDP service has its own round robin, a reload that turns a service UDP stops
its TCP health checks, a backend's host name is looked up off the event loop, and ports
out of range are typed errors that leave no socket open. Real daemon processes, UDP
sockets and a LocalLedger file, as in tests/daemon/test_tunnels_end_to_end.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import InvalidArgument, TunnelError
from dtp.hostid.udp import UdpForwarder, relay_udp
from dtp.hostid.udp._asyncio import AsyncUdpForwarder, relay_udp_async
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.payments.receipts import fee
from tests.daemon.tunnel_setup import Setup, conserved, ledger_connections, status
from tests.support.daemon_procs import Proc, wait_until
from tests.support.polling import wait_for
from tests.support.settlements import settled_escrow
from tests.support.udp_backends import EchoBackend

PRICED = "price_per_request = 1\nprice_per_kib = 1\nmin_deposit = 100000"
SLA = Sla(price_per_kib=1, price_per_request=1, min_deposit=100000)


@pytest.fixture
def echoes() -> Iterator[list[EchoBackend]]:
    made: list[EchoBackend] = []
    try:
        yield made
    finally:
        for echo in made:
            echo.close()


def udp_service(name: str, port: int, backends: list[int], extra: str = "") -> str:
    listed = ", ".join(f'"127.0.0.1:{b}"' for b in backends)
    return f"""
[[service]]
name = "{name}"
port = {port}
protocol = "udp"
backends = [{listed}]
{extra}
"""


def udp_pair(
    setup: Setup, backend: int, service_extra: str = PRICED, forward_extra: str = ""
) -> tuple[Proc, Proc, tuple[str, int]]:
    """A daemon exposing the UDP ``backend`` as service "svc" (port 5300) and a
    forwarder daemon whose forward "svc" reaches it."""
    d = setup.daemon(setup.write_daemon(udp_service("svc", 5300, [backend], service_extra)))
    f = setup.daemon(
        setup.write_forwarder(d.info["host_id"], 5300, f'protocol = "udp"\n{forward_extra}')
    )
    host, port = f.info["forwards"]["svc"].rsplit(":", 1)
    return d, f, (host, int(port))


def client_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    return sock


def exchange(address: tuple[str, int], count: int, size: int = 100) -> int:
    """Send ``count`` datagrams of ``size`` bytes, each after the previous one's echo;
    how many were answered."""
    answered = 0
    with client_socket() as sock:
        for i in range(count):
            sock.sendto(bytes([i % 256]) * size, address)
            with contextlib.suppress(TimeoutError):
                sock.recv(65535)
                answered += 1
    return answered


def row(state_dir: Path, kind: str, name: str) -> dict[str, Any]:
    found = status(state_dir).get(kind, {})
    assert isinstance(found, dict)
    return dict(found.get(name, {}))


def test_a_stop_right_after_traffic_claims_every_datagram(
    setup: Setup, echoes: list[EchoBackend]
) -> None:
    """50 echoed datagrams, then SIGTERM at once: the drain asks the flow for its final
    usage and waits for the client's receipt, so the claim covers every datagram, also
    those since the last usage report (one every 32)."""
    echo = EchoBackend()
    echoes.append(echo)
    d, f, address = udp_pair(setup, echo.port)
    assert exchange(address, 50) == 50
    assert echo.received == 50
    assert d.stop() == 0
    owed = fee(SLA, 50 * 200, 50)
    assert owed == 60
    served = row(setup.tmp / "daemon-state", "services", "svc")
    assert served["fees_claimed"] == served["fees_earned"] == owed, served
    ledger = setup.ledger()
    (connection,) = ledger_connections(ledger, setup)
    escrow = settled_escrow(ledger, connection)
    assert escrow.settled and escrow.claimed == owed
    assert escrow.refunded == escrow.deposited - owed
    # what the client's side signed for is what the server claimed
    paid = wait_until(lambda: row(setup.tmp / "forwarder-state", "forwards", "svc")["fees_paid"])
    assert paid == owed
    assert f.stop() == 0
    assert ledger.audit()["escrows"] == 0
    assert conserved(ledger)


def test_udp_status_counts_while_the_flow_is_open(setup: Setup, echoes: list[EchoBackend]) -> None:
    """The forward's status showed no receipts and no MIST paid, ever; the service's
    showed no bytes until the flow ended, and never a receipt held."""
    echo = EchoBackend()
    echoes.append(echo)
    d, f, address = udp_pair(setup, echo.port)
    assert exchange(address, 20) == 20
    owed = fee(SLA, 20 * 200, 20)

    def forwarded() -> dict[str, Any] | None:
        found = row(setup.tmp / "forwarder-state", "forwards", "svc")
        return found if found.get("fees_paid") == owed else None

    forward = wait_until(forwarded, 20, "the forward's payments in its status")
    assert forward["receipts_sent"] >= 1 and forward["active_tunnels"] == 1
    assert forward["bytes_in"] == forward["bytes_out"] == 2000

    def served() -> dict[str, Any] | None:
        found = row(setup.tmp / "daemon-state", "services", "svc")
        return found if found.get("fees_earned") == owed and found["bytes_in"] else None

    service = wait_until(served, 20, "the service's live counters")
    assert service["active_tunnels"] == 1  # the flow is still open
    assert service["bytes_in"] == service["bytes_out"] == 2000
    assert service["receipts_held"] == 1
    assert f.stop() == 0 and d.stop() == 0


def test_a_forward_whose_deposit_pays_for_nothing_says_so(
    setup: Setup, echoes: list[EchoBackend]
) -> None:
    """A paid service with min_deposit 0 and a forward without a deposit: every
    datagram was dropped as unpaid, with nothing in the status or the log."""
    echo = EchoBackend()
    echoes.append(echo)
    d, f, address = udp_pair(setup, echo.port, service_extra="price_per_request = 1")
    with client_socket() as sock:
        sock.settimeout(0.3)
        for _ in range(5):
            sock.sendto(b"q" * 10, address)
            with contextlib.suppress(TimeoutError):
                sock.recv(100)
                pytest.fail("an unpaid datagram was answered")

    def denied() -> dict[str, Any] | None:
        found = row(setup.tmp / "forwarder-state", "forwards", "svc")
        return found if found.get("denials", 0) >= 5 else None

    wait_until(denied, 20, "the unpaid drops in the forward's status")
    assert echo.received == 0
    log = f.log()
    assert log.count("cannot pay for them") == 1, log  # once for the flow
    assert "the deposit of 0 MIST" in log
    assert f.stop() == 0 and d.stop() == 0


def test_each_udp_service_has_its_own_round_robin(setup: Setup, echoes: list[EchoBackend]) -> None:
    """Flows alternating between two UDP services always went to the same backend of
    each: the services shared one counter."""
    x1, x2, y = EchoBackend(), EchoBackend(), EchoBackend()
    echoes.extend([x1, x2, y])
    services = udp_service("x", 5301, [x1.port, x2.port]) + udp_service("y", 5302, [y.port])
    d = setup.daemon(setup.write_daemon(services))
    host_id = d.info["host_id"]
    forwarder = setup.tmp / "forwarder.toml"
    forwarder.write_text(
        setup.write_forwarder(host_id, 5301, 'protocol = "udp"')
        .read_text()
        .replace('name = "svc"', 'name = "fx"')
        + f"""
[[forward]]
name = "fy"
listen = "127.0.0.1:0"
protocol = "udp"
target = "dtp://{host_id}:5302"
"""
    )
    f = setup.daemon(forwarder)
    addresses = {}
    for name in ("fx", "fy"):
        host, port = f.info["forwards"][name].rsplit(":", 1)
        addresses[name] = (host, int(port))
    for _ in range(3):
        for name in ("fx", "fy"):
            assert exchange(addresses[name], 1) == 1  # a new source: a new flow
    # x's flows go to its backends in turn, whatever y's did meanwhile
    assert (x1.received, x2.received, y.received) == (2, 1, 3)
    assert f.stop() == 0 and d.stop() == 0


def test_a_reload_to_udp_stops_the_tcp_health_checks(setup: Setup) -> None:
    """A service turned from TCP to UDP by a reload (same backends) kept its TCP
    health checks: a connect to the UDP backend every health_interval, for good."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    probes = [0]

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            probes[0] += 1
            conn.close()

    threading.Thread(target=accept, daemon=True).start()
    try:
        tcp = f"""
[[service]]
name = "svc"
port = 5303
backends = ["127.0.0.1:{port}"]
health_interval = 0.2
"""
        config = setup.write_daemon(tcp)
        d = setup.daemon(config)
        assert wait_for(lambda: probes[0] >= 2, 20)  # checked as TCP
        config.write_text(config.read_text() + 'protocol = "udp"\n')
        d.send(signal.SIGHUP)
        wait_until(lambda: '"reloaded"' in d.log(), 20, "the reload")
        # a probe already under way at the reload may still land: a moment for it
        wait_for(lambda: False, 1.0)
        before = probes[0]
        wait_for(lambda: probes[0] > before, 2.0)  # (ten health intervals)
        assert probes[0] == before
        assert row(setup.tmp / "daemon-state", "services", "svc")["healthy_backends"] == 0
        assert d.stop() == 0
    finally:
        listener.close()


def test_a_backend_name_is_looked_up_off_the_event_loop() -> None:
    """relay_udp_async connected its backend's socket to a host name, a blocking DNS
    lookup on the event loop: every other flow and tunnel of the daemon waited for it.
    Now the loop's getaddrinfo (a thread) looks it up; here a slow one, answering
    127.0.0.1 for a name no resolver knows, while the loop goes on running."""
    name = "dtp-udp-backend.invalid"

    async def main() -> None:
        identity = HostIdentity.generate()
        loop = asyncio.get_running_loop()
        echo = EchoBackend()
        real = loop.getaddrinfo
        ticks: list[int] = []
        looked_up = asyncio.Event()

        async def slow_getaddrinfo(host: Any, port: Any, **kw: Any) -> Any:
            if host != name:
                return await real(host, port, **kw)
            before = len(ticks)
            await asyncio.sleep(0.5)
            assert len(ticks) > before  # the loop ran meanwhile
            looked_up.set()
            return await real("127.0.0.1", port, **kw)

        loop.getaddrinfo = slow_getaddrinfo  # type: ignore[method-assign]

        async def tick() -> None:
            while True:
                ticks.append(1)
                await asyncio.sleep(0.01)

        ticker = loop.create_task(tick())

        async def relay(reader: dtp.aio.DTPStreamReader, writer: dtp.aio.DTPStreamWriter) -> None:
            with contextlib.suppress(TunnelError):
                await relay_udp_async(reader, writer, (name, echo.port), idle_timeout=10)

        server = await dtp.aio.start_server(relay, "127.0.0.1", 0, identity=identity)

        async def connect() -> tuple[dtp.aio.DTPStreamReader, dtp.aio.DTPStreamWriter]:
            return await dtp.aio.open_connection(*server.address, server_key=identity.noise_public)

        forwarder = await AsyncUdpForwarder.start(("127.0.0.1", 0), connect)
        client = client_socket()
        try:
            answered = False
            for _ in range(20):  # (the first datagrams may come before the relay)
                client.sendto(b"ping", forwarder.address)
                with contextlib.suppress(TimeoutError):
                    client.settimeout(0.5)
                    answered = await asyncio.to_thread(client.recv, 100) == b"ping"
                if answered:
                    break
            assert looked_up.is_set()
            assert answered
        finally:
            client.close()
            ticker.cancel()
            await asyncio.wait_for(forwarder.close(), 30)
            server.close()
            echo.close()

    asyncio.run(main())


def _socket_fds() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts sockets in /proc")
@pytest.mark.parametrize("port", [70000, -1])
def test_a_listen_port_out_of_range_is_typed_and_leaves_no_socket(port: int) -> None:
    """OverflowError (untyped) came out of bind(), past the socket it left open."""
    before = _socket_fds()
    with pytest.raises(InvalidArgument, match=r"outside 0\.\.65535"):
        UdpForwarder(("127.0.0.1", port), lambda: None)  # type: ignore[arg-type,return-value]

    async def start() -> None:
        with pytest.raises(InvalidArgument, match=r"outside 0\.\.65535"):
            await AsyncUdpForwarder.start(("127.0.0.1", port), None)  # type: ignore[arg-type]

    asyncio.run(start())
    assert _socket_fds() == before


def test_a_backend_port_out_of_range_is_a_tunnel_error() -> None:
    """relay_udp documents TunnelError (and its connection closed) for a backend it
    cannot use; a port out of range raised OverflowError and left both open."""
    identity = HostIdentity.generate()
    server = dtp.socket.create_server(("127.0.0.1", 0), identity=identity)
    raised: list[BaseException] = []
    done = threading.Event()

    def handler(sock: dtp.socket.DTPSocket) -> None:
        try:
            relay_udp(sock, ("127.0.0.1", 70000))
        except BaseException as exc:  # the error is the result
            raised.append(exc)
        done.set()

    threading.Thread(target=server.serve_forever, args=(handler,), daemon=True).start()
    client = dtp.socket.create_connection(
        server.address, server_key=identity.noise_public, timeout=5
    )
    try:
        # (no datagram needed: the relay starts, and fails, as the connection is accepted)
        assert done.wait(20)
        assert len(raised) == 1 and isinstance(raised[0], TunnelError), raised
        client.settimeout(10)
        with contextlib.suppress(ConnectionError):
            assert client.recv(1) == b""  # closed by the relay
    finally:
        client.close()
        server.close()
