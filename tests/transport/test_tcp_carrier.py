"""The TCP carrier's connect in two halves (PendingTcp): started while the caller does
other work, it gives what connect_tcp gives, and connect_tcp's errors when it fails.

The TCP carrier's two-half connect (PendingTcp) against a host that never answers:
its timeout bounds the whole wait.

The TCP carrier's connects (dtp.transport.carriers._tcp), the one-holder lock
and the durable replace (dtp.identity._files):

- a published endpoint whose name the IDNA codec refuses (``a..b``, a label past 63
  characters) raised a bare UnicodeError: connect_any stopped there instead of trying
  the host's next endpoint, and the early connect (PendingTcp) raised it from inside the
  ledger preparation, so a connect by host ID failed with it;
- a name resolving to several addresses whose first never answers: the early connect
  waited its timeout out, then connect_tcp tried that same address again for as long
  before the next one;
- an interrupt while the early connect was waited on left its socket open (close() no
  longer had it);
- every endpoint refused: the "no endpoint answered" CarrierRefused had no errno, where
  one refusal carries ECONNREFUSED;
- an IPv6 endpoint was named ``::1:port`` in errors (read: another address);
- a lock file was created 0o644, and flock needs no write access: another user could
  open it read-only and hold the lock, so the graph / inbox / daemon would not start;
- write_durably gave a replaced file the umask's mode: a file made private (0o600) came
  back readable by all, where the write in place it replaced kept the mode.

The TCP carrier, lock files, durable writes and discovery:

- the early connect (PendingTcp) whose first address timed out tried the name's other
  addresses, but when they failed too it raised the first one's timeout, where
  connect_tcp (socket.create_connection) raises the last one's error: a refused last
  address was a CarrierRefused from connect_tcp and a DTPTimeoutError from the early
  connect of the same endpoint;
- an endpoint given with its IPv6 address in brackets already was named ``[[::1]]:80``;
- making a lock file private (fchmod) on a file system that refuses modes (EPERM:
  vfat, some FUSE or CIFS mounts) failed the lock where it worked before;
- keeping the replaced file's mode in write_durably failed the write there likewise;
- two threads announcing the same host at once both read the same cached announcement
  and issued theirs in the same millisecond: one of them was dropped as a duplicate
  (here, and by peers that took the other first) while announce() returned it."""

from __future__ import annotations

import errno
import os
import re
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import dtp.messaging.discovery as discovery
import dtp.socket
import dtp.transport.carriers._tcp as tcp
from dtp.errors import CarrierRefused, ConnectionLost, DTPTimeoutError
from dtp.identity._files import lock_exclusive, write_durably
from dtp.identity.keys import HostIdentity
from dtp.ledger._objects import Sla
from dtp.ledger.local import LocalLedger
from dtp.messaging.discovery import Announcement, DiscoveryGossip
from dtp.messaging.pubsub import PubSubNode
from dtp.transport.carriers._tcp import (
    PendingTcp,
    carrier_error,
    connect_any,
    connect_tcp,
    listen_tcp,
)
from tests.support.tcp_blackhole import unanswered_address


def test_a_started_connect_finishes_connected_and_tuned() -> None:
    listener = listen_tcp(("127.0.0.1", 0))
    try:
        pending = PendingTcp(listener.getsockname()[:2])
        accepted, _ = listener.accept()
        sock = pending.finish(5.0)
        try:
            assert sock.getpeername() == listener.getsockname()
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            sock.sendall(b"hello")
            assert accepted.recv(5) == b"hello"
        finally:
            sock.close()
            accepted.close()
    finally:
        listener.close()


def test_the_connections_a_listener_accepts_come_tuned() -> None:
    """listen_tcp tunes the listener, and each connection it accepts inherits its
    TCP_NODELAY: the blocking server tunes none of them itself."""
    listener = listen_tcp(("127.0.0.1", 0))
    try:
        assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        with socket.create_connection(listener.getsockname()[:2], timeout=5.0):
            accepted, _ = listener.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    finally:
        listener.close()


def test_a_blocking_servers_connections_are_tuned() -> None:
    """The carrier of a connection a blocking DTPServer accepted has TCP_NODELAY (the
    listener's: DTPServer._accept_next sets nothing)."""
    identity = HostIdentity.generate()
    with (
        dtp.socket.create_server(("127.0.0.1", 0), identity=identity) as server,
        dtp.socket.create_connection(
            server.address, server_key=identity.noise_public, timeout=10.0
        ) as client,
    ):
        served, _ = server.accept(timeout=10.0)
        with served:
            carrier = served._engine.sock
            assert carrier.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            client.sendall(b"x")
            assert served.recv(1) == b"x"


def test_a_failed_connect_raises_what_connect_tcp_raises() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    with pytest.raises(ConnectionLost, match=f"127.0.0.1:{port}"):
        PendingTcp(("127.0.0.1", port)).finish(5.0)


def test_a_connect_given_up_is_closed() -> None:
    listener = listen_tcp(("127.0.0.1", 0))
    try:
        pending = PendingTcp(listener.getsockname()[:2])
        pending.close()
        accepted, _ = listener.accept()
        accepted.settimeout(5)
        assert accepted.recv(1) == b""  # the peer closed
        accepted.close()
    finally:
        listener.close()


@pytest.fixture
def unanswered() -> Iterator[tuple[str, int]]:
    """A TCP address whose SYNs go unanswered (tests/support/tcp_blackhole.py)."""
    with unanswered_address() as address:
        yield address


def test_a_started_connect_that_times_out_waits_its_timeout_once(
    unanswered: tuple[str, int],
) -> None:
    """finish() waited out the timeout, then connected again from scratch and waited
    it out a second time: a connect by host ID to an unreachable endpoint took twice
    the caller's timeout."""
    pending = PendingTcp(unanswered)
    start = time.monotonic()
    with pytest.raises(DTPTimeoutError, match=f"{unanswered[0]}:{unanswered[1]} timed out"):
        pending.finish(2.0)
    elapsed = time.monotonic() - start
    # waiting it out twice took 4 s: the upper bound leaves a loaded machine 1.5 s
    assert 1.95 <= elapsed < 3.5, elapsed


def test_a_name_with_other_addresses_still_gets_them_tried(
    unanswered: tuple[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A name resolving to an address that never answers and then one that does (IPv6
    blackholed, IPv4 fine): the early connect tries only the first, so on its timeout
    the others must still be tried, as socket.create_connection does."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    working = listener.getsockname()

    def resolve(host: object, port: object, *args: object, **kw: object) -> list[object]:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", unanswered),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", working),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    try:
        sock = PendingTcp(("dual.example", 7000)).finish(0.3)
        try:
            assert sock.getpeername() == working
        finally:
            sock.close()
    finally:
        listener.close()


BAD_NAME = "a..b"  # (an empty label: IDNA refuses it, urlsplit does not)


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    try:
        yield sock
    finally:
        sock.close()


# -- dtp.transport.carriers._tcp ------------------------------------------------------------------


def test_an_endpoint_name_idna_refuses_moves_on_to_the_next(listener: socket.socket) -> None:
    working = listener.getsockname()
    sock, reached = connect_any(None, [(BAD_NAME, 80), working], 5.0)
    sock.close()
    assert reached == working
    with pytest.raises(ConnectionLost, match=re.escape(f"{BAD_NAME}:80")):
        connect_tcp((BAD_NAME, 80), 5.0)


def test_an_early_connect_to_a_name_idna_refuses_fails_typed() -> None:
    pending = PendingTcp((BAD_NAME, 80))
    with pytest.raises(ConnectionLost, match=re.escape(f"{BAD_NAME}:80")):
        pending.finish(5.0)


def test_a_host_publishing_such_a_name_first_is_reached_by_host_id(tmp_path: Path) -> None:
    server_id, client_id = HostIdentity.generate(), HostIdentity.generate()
    ledger = LocalLedger(tmp_path / "ledger.db")
    host = ledger.create_host(server_id, server_id.noise_public)
    ledger.add_service(server_id, host, 80, "echo", Sla(0, 0, 1000))
    ledger.faucet(client_id.sui_address, 1_000_000)
    server = dtp.socket.create_server(
        ("127.0.0.1", 0), identity=server_id, ledger=ledger, host_id=host, port=80
    )

    def echo(sock: dtp.socket.DTPSocket) -> None:
        while data := sock.recv(65536):
            sock.sendall(data)

    thread = threading.Thread(target=server.serve_forever, args=(echo,), daemon=True)
    thread.start()
    try:
        h, p = server.address
        ledger.set_endpoints(
            server_id, host, [f"tcp://{BAD_NAME}:80".encode(), f"{h}:{p}".encode()]
        )
        with dtp.socket.create_connection(
            f"dtp://{host}:80", ledger=ledger, identity=client_id, deposit=1000, timeout=10
        ) as sock:
            sock.sendall(b"ping")
            assert sock.recv(4) == b"ping"
    finally:
        server.close()
        thread.join(10)
        ledger.close()


def test_a_name_whose_first_address_times_out_is_not_waited_on_twice(
    unanswered: tuple[str, int], listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    working = listener.getsockname()

    def resolve(host: object, port: object, *args: object, **kw: object) -> list[object]:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", unanswered),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", working),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    pending = PendingTcp(("dual.example", 7000))
    start = time.monotonic()
    sock = pending.finish(1.0)
    elapsed = time.monotonic() - start
    try:
        assert sock.getpeername() == working
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert sock.gettimeout() == 1.0
    finally:
        sock.close()
    # the blackholed address waited once (1 s), not twice (2 s)
    assert 0.95 <= elapsed < 1.7, elapsed


def test_a_name_whose_every_address_times_out_raises_the_timeout(
    unanswered: tuple[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    def resolve(host: object, port: object, *args: object, **kw: object) -> list[object]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", unanswered)] * 2

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    pending = PendingTcp(("dual.example", 7000))
    start = time.monotonic()
    with pytest.raises(DTPTimeoutError, match=re.escape("dual.example:7000 timed out")):
        pending.finish(0.7)
    # each address once: 1.4 s (connecting the first again made it 2.1 s)
    assert time.monotonic() - start < 1.9


def test_an_interrupt_while_an_early_connect_is_waited_on_closes_it(
    listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    pending = PendingTcp(listener.getsockname())
    started = pending._sock
    assert started is not None

    def interrupted(*args: object) -> object:
        raise KeyboardInterrupt

    monkeypatch.setattr(tcp, "wait_ready", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pending.finish(5.0)
    assert started.fileno() == -1  # closed, not left to the garbage collector
    pending.close()


def test_every_endpoint_refused_carries_econnrefused() -> None:
    dead = [("127.0.0.1", _dead_port()), ("127.0.0.1", _dead_port())]
    with pytest.raises(CarrierRefused, match="no endpoint answered") as refused:
        connect_any(None, dead, 5.0)
    assert refused.value.errno == errno.ECONNREFUSED


def test_an_ipv6_endpoint_is_named_in_brackets() -> None:
    port = _dead_port()
    with pytest.raises((ConnectionLost, DTPTimeoutError)) as failed:
        connect_tcp(("::1", port), 5.0)
    assert f"[::1]:{port}" in str(failed.value)


# -- dtp.identity._files -----------------------------------------------------------------------


def test_a_lock_file_is_created_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        fd = lock_exclusive(tmp_path / "db-lock")
    finally:
        os.umask(old)
    assert fd is not None
    os.close(fd)
    assert stat.S_IMODE((tmp_path / "db-lock").stat().st_mode) == 0o600


def test_a_lock_file_made_readable_before_is_made_private(tmp_path: Path) -> None:
    path = tmp_path / "db-lock"
    path.touch()
    path.chmod(0o644)
    fd = lock_exclusive(path)
    assert fd is not None
    os.close(fd)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.skipif(os.geteuid() != 0, reason="needs another user (setuid from root)")
def test_another_user_cannot_hold_the_lock() -> None:
    # (not tmp_path: pytest's base directory is 0o700, which no other user gets through)
    shared = Path(tempfile.mkdtemp(prefix="dtp-carrier-", dir="/tmp"))
    shared.chmod(0o755)  # a directory others may read, as a data directory often is
    try:
        _another_user_tries(shared / "db-lock")
    finally:
        shutil.rmtree(shared)


def _another_user_tries(path: Path) -> None:
    fd = lock_exclusive(path)
    assert fd is not None
    os.close(fd)  # made, and released
    report_r, report_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        code = 0
        try:
            os.setuid(65534)
            import fcntl

            held = os.open(path, os.O_RDONLY)
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(report_w, b"H")  # held it
        except OSError:
            os.write(report_w, b"R")  # refused
        finally:
            os.read(done_r, 1)
            os._exit(code)
    try:
        verdict = os.read(report_r, 1)
        assert verdict == b"R"
        fd = lock_exclusive(path)  # the owner still takes it
        assert fd is not None
        os.close(fd)
    finally:
        os.write(done_w, b"x")
        os.waitpid(pid, 0)
        for end in (report_r, report_w, done_r, done_w):
            os.close(end)


# -- dtp.identity._files --------------------------------------------------------------------------


def test_a_replaced_file_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "record.json"
    path.write_bytes(b"{}")
    path.chmod(0o600)
    old = os.umask(0o022)
    try:
        write_durably(path, b'{"a": 1}')
    finally:
        os.umask(old)
    assert path.read_bytes() == b'{"a": 1}'
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]  # no temp left


NOW = 1_000_000


# -- dtp.transport.carriers._tcp ------------------------------------------------------------------


def test_an_early_connect_fails_as_connect_tcp_when_the_last_address_refuses(
    unanswered: tuple[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    refusing = ("127.0.0.1", _dead_port())

    def resolve(host: object, port: object, *args: object, **kw: object) -> list[object]:
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", unanswered),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", refusing),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    with pytest.raises(CarrierRefused) as later:
        connect_tcp(("dual.example", 7000), 0.5)
    pending = PendingTcp(("dual.example", 7000))
    with pytest.raises(CarrierRefused) as early:
        pending.finish(0.5)
    assert str(early.value) == str(later.value)
    assert early.value.errno == errno.ECONNREFUSED


def test_a_bracketed_ipv6_host_is_not_bracketed_twice() -> None:
    error = carrier_error("[::1]", 80, ConnectionRefusedError(errno.ECONNREFUSED, "refused"))
    assert "cannot reach [::1]:80" in str(error)
    assert "[[" not in str(error)


# -- dtp.identity._files: the lock and the durable replace ---------------------------------


def _refuse_fchmod(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(fd: int, mode: int) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "fchmod", refused)


def test_a_lock_is_taken_where_the_file_system_refuses_modes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "db-lock"
    path.touch()
    path.chmod(0o644)  # (as a lock file was made before)
    _refuse_fchmod(monkeypatch)
    fd = lock_exclusive(path)
    assert fd is not None
    try:
        with pytest.raises(BlockingIOError):  # held: a second holder is refused
            lock_exclusive(path)
    finally:
        os.close(fd)


def test_a_durable_write_goes_on_where_the_file_system_refuses_modes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "record.json"
    path.write_bytes(b"{}")
    path.chmod(0o600)
    _refuse_fchmod(monkeypatch)
    write_durably(path, b'{"a": 1}')
    assert path.read_bytes() == b'{"a": 1}'
    assert stat.S_ISREG(path.stat().st_mode)
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]  # no temp left


# -- dtp.messaging.discovery ---------------------------------------------------------------


def test_two_announcements_at_once_are_both_issued_apart_and_recorded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    node = PubSubNode("n")
    gossip = DiscoveryGossip(node, clock_ms=lambda: NOW)  # (the clock does not move)
    alice = HostIdentity.generate()
    real_encode = discovery.encode_announcement
    arrived = threading.Event()
    first_in = threading.Lock()

    def encode(*args: object, **kw: object) -> bytes:
        # the first to sign waits for the other to reach its signing too (where both
        # announce at once); one that cannot (announce() one at a time) times out
        if first_in.acquire(blocking=False):
            arrived.wait(1.5)
        else:
            arrived.set()
        return real_encode(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(discovery, "encode_announcement", encode)
    made: list[Announcement] = []
    errors: list[BaseException] = []

    def announce(port: int) -> None:
        try:
            made.append(gossip.announce(alice, "h", [(port, "svc")]))
        except BaseException as exc:  # (reported below, not lost in the thread)
            errors.append(exc)

    threads = [threading.Thread(target=announce, args=(p,)) for p in (80, 81)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert not errors
        assert len(made) == 2
        assert made[0].issued_ms != made[1].issued_ms
        assert gossip.duplicates == 0
        newest = max(made, key=lambda a: a.issued_ms)
        assert gossip.host("h") == newest
    finally:
        gossip.close()
        node.close()


@pytest.mark.parametrize(
    ("address", "family"),
    [
        (("127.0.0.1", 80), socket.AF_INET),
        (("::1", 80), socket.AF_INET6),
        (("localhost", 80), 0),  # a name: resolved
        (("127.1", 80), 0),  # a short form inet_pton refuses: getaddrinfo's reading
        (("fe80::1%lo", 80), 0),  # a scope ID: getaddrinfo's
        (("127.0.0.1", "80"), 0),  # a service given as text: getaddrinfo's
        (("127.0.0.1", 70000), 0),  # out of range: getaddrinfo's error
    ],
)
def test_only_an_address_literal_and_a_port_number_skip_the_resolver(
    address: tuple[str, int], family: int
) -> None:
    assert tcp._literal_family(address) == family


def test_a_literal_address_connects_without_the_resolver(
    listener: socket.socket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """connect_tcp and the early connect reach an address literal without getaddrinfo,
    tuned, with connect_tcp's errors when nothing listens."""

    def resolve(*args: object, **kw: object) -> list[object]:
        raise AssertionError("getaddrinfo called for an address literal")

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    address = listener.getsockname()
    for sock in (connect_tcp(address, 5.0), PendingTcp(address).finish(5.0)):
        with sock:
            assert sock.getpeername() == address
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    dead = ("127.0.0.1", _dead_port())
    with pytest.raises(CarrierRefused, match=f"127.0.0.1:{dead[1]}"):
        connect_tcp(dead, 5.0)


def test_an_ipv6_literal_connects() -> None:
    try:
        listener = listen_tcp(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback")
    with listener:
        address = listener.getsockname()[:2]
        with connect_tcp(address, 5.0) as sock:
            assert sock.family == socket.AF_INET6
            assert sock.getpeername()[:2] == address


def test_a_literal_connect_keeps_the_timeout_left_out(listener: socket.socket) -> None:
    """As with socket.create_connection: the timeout left out is the process's default."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(3.5)
    try:
        left_out = socket._GLOBAL_DEFAULT_TIMEOUT  # type: ignore[attr-defined]
        with connect_tcp(listener.getsockname(), left_out) as sock:
            assert sock.gettimeout() == 3.5
        with connect_tcp(listener.getsockname(), None) as sock:
            assert sock.gettimeout() is None
    finally:
        socket.setdefaulttimeout(previous)
