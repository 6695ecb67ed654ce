"""The TCP carrier's two-half connect (PendingTcp) against a host that never answers:
its timeout bounds the whole wait."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from dtp.carriers.tcp import PendingTcp
from dtp.errors import DTPTimeoutError
from tests.tcp_blackhole import unanswered_address


@pytest.fixture
def unanswered() -> Iterator[tuple[str, int]]:
    """A TCP address whose SYNs go unanswered (tests/tcp_blackhole.py)."""
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
