"""Second reading of the TCP carrier, lock-file, durable-write and discovery changes
(session 34):

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
  (here, and by peers that took the other first) while announce() returned it.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

import dtp.messaging.discovery as discovery
from dtp._durable import write_durably
from dtp._filelock import lock_exclusive
from dtp.carriers.tcp import PendingTcp, carrier_error, connect_tcp
from dtp.errors import CarrierRefused
from dtp.keys import HostIdentity
from dtp.messaging.discovery import Announcement, DiscoveryGossip
from dtp.messaging.pubsub import PubSubNode
from tests.tcp_blackhole import unanswered_address

NOW = 1_000_000


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def unanswered() -> Iterator[tuple[str, int]]:
    """A TCP address whose SYNs go unanswered (tests/tcp_blackhole.py)."""
    with unanswered_address() as address:
        yield address


# -- dtp.carriers.tcp ------------------------------------------------------------------


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


# -- dtp._filelock / dtp._durable ----------------------------------------------------------


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
