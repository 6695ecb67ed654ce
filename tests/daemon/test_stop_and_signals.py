"""The services daemon at runtime: a stop while a tunnel is stuck on a backend that
never reads still settles the connection, SIGHUP during the stop is ignored; one daemon
per state directory; a forward of the wrong protocol is refused or logged."""

from __future__ import annotations

import contextlib
import fcntl
import signal
import socket
import struct
import termios
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dtp.daemon._state import read_status
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import ConnectionState
from dtp.ledger.local import LocalLedger
from tests.daemon.daemon_configs import write_provider
from tests.support.daemon_procs import (
    SUI,
    Proc,
    backend,
    daemon,
    forward_address,
    run_daemon,
    wait_until,
    write_forwarder,
)
from tests.support.settlements import is_settled


class StuckBackend:
    """A TCP server that accepts connections and never reads from them."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            self.held.append(conn)

    def reached(self) -> bool:
        """Whether the tunnel's bytes reached a held connection: some wait unread in its
        receive queue (the provider's tunnel is carrying data, not just opened)."""
        return any(
            struct.unpack("i", fcntl.ioctl(conn, termios.FIONREAD, b"\0\0\0\0"))[0] > 0
            for conn in list(self.held)
        )

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(5)
        for conn in self.held:
            conn.close()


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    try:
        yield started
    finally:
        for proc in reversed(started):
            proc.kill()


def start_daemons(
    tmp: Path,
    procs: list[Proc],
    backend_port: int,
    service_extra: str,
    forward_extra: str,
    daemon_extra: str = "",
) -> tuple[Proc, Proc, tuple[str, int]]:
    """A provider daemon exposing the backend and a forwarder to it."""
    d = daemon(write_provider(tmp, backend_port, daemon_extra, service_extra))
    procs.append(d)
    f = daemon(write_forwarder(tmp, d.info["host_id"], 7000, forward_extra))
    procs.append(f)
    return d, f, forward_address(f)


def test_stop_settles_a_connection_whose_tunnel_is_stuck(tmp_path: Path, procs: list[Proc]) -> None:
    """SIGTERM with a tunnel blocked on a backend that never reads: after the drain
    timeout the tunnel is cut and the connection claimed, closed and settled before the
    daemon exits: the deposit does not stay in escrow."""
    with stuck_tunnel(tmp_path, procs) as d:
        assert d.stop(signal.SIGTERM) == 0
        log = d.log()
        assert '"connection closed"' in log, log
    assert_settled(tmp_path)


def test_sighup_while_stopping_is_ignored(tmp_path: Path, procs: list[Proc]) -> None:
    """A SIGHUP during the drain is answered, not acted on: the daemon goes on
    draining, then settles its connections (SIGHUP's default action would kill it
    with them unsettled). A drain of 12 s: the SIGHUP lands inside it, however late a
    loaded machine lets the test see the drain begin."""
    with stuck_tunnel(tmp_path, procs, drain_timeout=12) as d:
        d.send(signal.SIGTERM)
        wait_until(lambda: '"draining"' in d.log(), what="the drain")
        d.send(signal.SIGHUP)
        # (answered, and the daemon still draining, before the second SIGTERM: sent at
        # once, the stop could overtake the handler's line on a loaded machine)
        try:
            wait_until(
                lambda: "reload ignored: the daemon is stopping" in d.log(),
                timeout=30,
                what="the SIGHUP's answer",
            )
        except AssertionError as missed:
            # (what the daemon did instead: its exit status, if it ended, and its log)
            raise AssertionError(f"{missed}; exit {d.proc.poll()}; log:\n{d.log()}") from None
        assert d.proc.poll() is None
        # (the drain's 12 s, then the tunnel cut and its connection settled on the ledger)
        assert d.stop(signal.SIGTERM, timeout=90) == 0
    assert_settled(tmp_path)


@contextlib.contextmanager
def stuck_tunnel(tmp_path: Path, procs: list[Proc], drain_timeout: float = 0.5) -> Iterator[Proc]:
    """A provider daemon (returned) and a forwarder, and a tunnel through them blocked
    on a backend that never reads; the forwarder is stopped at the end."""
    backend = StuckBackend()
    try:
        paid = "price_per_kib = 1\nprice_per_request = 1"
        deposit = f"deposit = {SUI}"
        d, f, address = start_daemons(
            tmp_path, procs, backend.port, paid, deposit, f"drain_timeout = {drain_timeout}"
        )
        sock = socket.create_connection(address, timeout=10)
        with sock:
            sock.setblocking(False)
            chunk = b"x" * 65536
            sent = 0

            def push() -> bool:
                nonlocal sent
                # until every buffer on the way is full: the tunnel is stuck
                with contextlib.suppress(BlockingIOError):
                    while True:
                        sent += sock.send(chunk)
                # (and the provider's tunnel carried bytes to the backend: before that, on
                # a loaded machine, a stop found nothing in flight and ended at once, the
                # connection open and the backend connected but no byte through yet)
                return sent > (1 << 20) and '"connection open"' in d.log() and backend.reached()

            wait_until(push, what="a stuck tunnel")
            yield d
        assert f.stop() == 0
    finally:
        backend.close()


def assert_settled(tmp_path: Path) -> None:
    """The one connection on the ledger is closed and settled (its client deletes it once
    settled: then its ConnectionSettled event says it): nothing in escrow."""
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    try:
        events, _ = ledger.events()
        (opened,) = [e for e in events if e.name == "ConnectionOpened"]
        assert is_settled(ledger, opened["connection"])
        for ref in ledger.objects("TransportControl"):
            assert ledger.get_connection(ref.object_id).state == ConnectionState.CLOSED
        assert ledger.audit()["escrows"] == 0
    finally:
        ledger.close()


def test_one_daemon_per_state_dir(tmp_path: Path, procs: list[Proc]) -> None:
    """A second daemon on the same state directory used to start as well: it published
    its own endpoint on the first one's Host (taking its clients), shared its receipt
    store and overwrote its status file (`dtp status` said "stopped" once the second
    one stopped, with the first still serving)."""
    HostIdentity.generate().save(tmp_path / "client.key")
    config = tmp_path / "dtp.toml"
    config.write_text(
        f"""[daemon]
ledger = "ledger.sqlite"
identity = "client.key"
state_dir = "state"

[[forward]]
name = "f"
listen = "127.0.0.1:0"
target = "dtp://0x{"ab" * 32}:80"
"""
    )
    first = daemon(config)
    procs.append(first)
    result = run_daemon(config)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"dtp daemon: {config}:4: daemon.state_dir: {tmp_path / 'state'} is in use by "
        f"another dtp daemon (pid {first.proc.pid})"
    ]
    status = read_status(tmp_path / "state")
    assert status is not None and status["pid"] == first.proc.pid
    assert first.proc.poll() is None
    assert first.stop() == 0
    # stopped, or killed: the lock goes with the process
    second = daemon(config)
    procs.append(second)
    second.kill()
    third = daemon(config)
    procs.append(third)
    assert third.stop() == 0


def start_pair(
    tmp: Path, procs: list[Proc], backend_mode: str, service_extra: str, forward_extra: str
) -> tuple[Proc, Proc, tuple[str, int]]:
    """A backend, a provider daemon exposing it (free) and a forwarder to it."""
    b = backend(backend_mode)
    procs.append(b)
    return start_daemons(tmp, procs, b.info["port"], service_extra, forward_extra)


def with_state_file(tmp: Path, name: str, content: str) -> Path:
    """A provider's config whose state directory already holds ``name``, with ``content``."""
    HostIdentity.generate().save(tmp / "provider.key")
    (tmp / "state").mkdir()
    (tmp / "state" / name).write_text(content)
    config = tmp / "dtp.toml"
    config.write_text(
        '[daemon]\nledger = "ledger.sqlite"\nidentity = "provider.key"\nstate_dir = "state"\n'
        '\n[[service]]\nname = "a"\nport = 80\nbackends = ["127.0.0.1:9"]\n'
    )
    return config


def assert_closed_unanswered(address: tuple[str, int], data: bytes) -> None:
    """A local client sends ``data`` to the forward and is closed (or reset) unanswered."""
    sock = socket.create_connection(address, timeout=5)
    with sock:
        sock.sendall(data)
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(100) == b""


def test_a_tcp_forward_to_a_udp_service_is_refused(tmp_path: Path, procs: list[Proc]) -> None:
    """The UDP service's connection accepted no stream: the tunnel's status never came
    and the local client waited for good."""
    d, f, address = start_pair(tmp_path, procs, "udp", 'protocol = "udp"', "")
    assert_closed_unanswered(address, b"hello")
    reason = 'service svc is a UDP service: use a forward with protocol = \\"udp\\"'
    wait_until(lambda: reason in f.log(), what="the forwarder's log")
    assert reason in d.log()
    assert f.stop() == 0 and d.stop() == 0


def test_a_udp_forward_to_a_tcp_service_is_logged(tmp_path: Path, procs: list[Proc]) -> None:
    """Its datagrams were dropped without a word anywhere."""
    d, f, address = start_pair(tmp_path, procs, "echo", "", 'protocol = "udp"')
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with udp:

        def sent() -> bool:
            udp.sendto(b"hello", address)
            return '"datagrams dropped"' in d.log()

        wait_until(sent, what="the daemon's log")
    assert 'service svc is a TCP service: use a forward with protocol = \\"tcp\\"' in d.log()
    assert f.stop() == 0 and d.stop() == 0


def test_daemon_settings_wait_for_a_restart(tmp_path: Path, procs: list[Proc]) -> None:
    """[daemon] changes need a restart (docs/daemon.md), and the first reload said so;
    but it kept the new settings, so the second reload published the new
    public_endpoint on the Host (clients sent to an address nobody listens on)."""
    d, f, _ = start_pair(tmp_path, procs, "echo", "", "")
    config = tmp_path / "daemon.toml"
    config.write_text(
        config.read_text().replace("[daemon]\n", '[daemon]\npublic_endpoint = "10.9.9.9:1"\n')
    )
    for reloads in (1, 2):
        d.send(signal.SIGHUP)
        wait_until(lambda n=reloads: d.log().count('"reloaded"') == n, what="the reload")
    assert d.log().count("[daemon] changes take effect at the next restart") == 2
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    try:
        endpoints = ledger.get_host(d.info["host_id"]).endpoints
    finally:
        ledger.close()
    assert [bytes(e).decode() for e in endpoints] == [d.info["endpoint"]]
    assert f.stop() == 0 and d.stop() == 0


@pytest.mark.parametrize("content", ["garbage", '{"x": 1}', "[]", '{"host_id": null}'])
def test_a_damaged_host_record_is_one_line(tmp_path: Path, content: str) -> None:
    """host.json was read with json.loads(...)["host_id"]: a traceback (JSONDecodeError,
    KeyError, TypeError) out of `dtp daemon`."""
    config = with_state_file(tmp_path, "host.json", content)
    result = run_daemon(config)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1] == (
        f'dtp daemon: {tmp_path / "state" / "host.json"} is damaged (expected {{"host_id": '
        '"0x…"}): restore it, or set [daemon] host_id; removing it creates a new Host'
    )


def test_a_deposit_that_pays_for_nothing_says_so(tmp_path: Path, procs: list[Proc]) -> None:
    """A paid service with min_deposit 0 and a forward without a deposit: the connection
    cannot pay for one tunnel. The forwarder opened three ledger connections per local
    client, each retired at once, and logged "no usable connection"."""
    d, f, address = start_pair(tmp_path, procs, "echo", "price_per_request = 1", "")
    assert_closed_unanswered(address, b"hi")
    reason = "a deposit of 0 MIST cannot pay for one tunnel to dtp://"
    wait_until(lambda: reason in f.log(), what="the forwarder's log")
    assert "raise deposit in [[forward]] svc" in f.log()
    assert f.stop() == 0 and d.stop() == 0
    ledger = LocalLedger(tmp_path / "ledger.sqlite")
    try:
        # one connection opened (counted by its event: once settled, its client deletes it)
        events, _ = ledger.events()
        assert [e.name for e in events].count("ConnectionOpened") == 1
    finally:
        ledger.close()


def test_a_damaged_receipt_store_is_named(tmp_path: Path) -> None:
    """SQLite's "file is not a database" came out alone: which of the daemon's files?"""
    config = with_state_file(tmp_path, "receipts.sqlite", "not a database")
    result = run_daemon(config)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        "dtp daemon: database error: cannot open the receipt store "
        f"{tmp_path / 'state' / 'receipts.sqlite'}: file is not a database"
    )


def test_new_tunnels_wait_for_the_clients_byte_debt(tmp_path: Path, procs: list[Proc]) -> None:
    """Bytes are charged after they are read, and a new tunnel did not look at the debt
    before its first read: each one carried a chunk at once. At max_bytes_per_sec = 10,
    five tunnels moved about 500 KB within seconds (one chunk each, both ways)."""
    firewall = "\n[firewall]\nmax_bytes_per_sec = 10\n"
    _, _, address = start_pair(tmp_path, procs, "echo", firewall, "")
    first = socket.create_connection(address, timeout=10)
    others: list[socket.socket] = []
    try:
        # the first chunk goes at once, by design (TokenBucket: paid by the wait after),
        # each way; small enough to be read in one go even on a loaded machine (a second
        # read would wait out the debt of the first), and 2000 bytes of debt at 10 B/s
        # hold the next tunnels for minutes
        first.sendall(b"x" * 1000)
        got = 0
        while got < 1000:
            got += len(first.recv(65536))
        for _ in range(3):
            sock = socket.create_connection(address, timeout=10)
            sock.sendall(b"y" * 50000)
            sock.setblocking(False)
            others.append(sock)

        def echoed() -> int:
            total = 0
            for sock in others:
                with contextlib.suppress(BlockingIOError):
                    total += len(sock.recv(65536))
            return total

        with pytest.raises(AssertionError, match="timed out"):
            wait_until(echoed, timeout=3.0, what="an echo over the rate")
    finally:
        first.close()
        for sock in others:
            sock.close()
