"""What the UDP relay and forwarder charge to rate limits (dtp.hostid.udp,
dtp.hostid.udp._asyncio, dtp.payments._ratelimit):

- a relay charged a backend's replies to the client's bytes/s limit by payload alone,
  while the client's own datagrams (ClientBuckets.admit) and a paid server's sent ones
  are charged their frame header too: empty replies cost nothing however many went;
- UdpForwarder.close() called from connect() (a thread of the forwarder's own) joined
  itself, raised RuntimeError and left the sessions and the local port open;
- RateLimiter.max_idle lowered on a limiter in use was never reached (each release
  dropped one idle client as it added one).

Real UDP sockets and DTP connections on 127.0.0.1."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest

import dtp.socket
from dtp.errors import TunnelError
from dtp.hostid.udp import UdpForwarder, UdpStats
from dtp.payments._ratelimit import ClientBuckets, RateLimiter, TokenBucket, datagram_charge
from tests.support.polling import wait_for
from tests.support.udp_backends import UdpBackend
from tests.udp.conftest import UdpDriver
from tests.udp.world import relayed

BOUND = 5.0
REPLIES = 50


class _EmptyReplies(UdpBackend):
    """A UDP backend answering each datagram with ``REPLIES`` empty ones."""

    def replies(self, data: bytes) -> list[bytes]:
        return [b""] * REPLIES


@pytest.fixture
def empty_replies() -> Iterator[_EmptyReplies]:
    backend = _EmptyReplies()
    yield backend
    backend.close()


def test_a_relays_replies_are_charged_their_frame_headers(
    empty_replies: _EmptyReplies, driver: UdpDriver
) -> None:
    # 4 bytes/s: a burst of one byte, and next to no refill while the test runs
    buckets = ClientBuckets(TokenBucket(4, 0.0), TokenBucket(0, 0.0))
    stats = UdpStats()

    with relayed(driver, empty_replies.address, stats, limits=buckets, idle_timeout=BOUND) as sock:
        sock.send_datagram(b"")  # admitted (the bucket was full), charged 2 bytes
        # (the relay counts its replies once it has charged them)
        assert wait_for(lambda: stats.datagrams_out == REPLIES, BOUND), stats.snapshot()
        tokens = buckets.bytes.tokens
    charged = datagram_charge(0) * (1 + REPLIES)
    # (the refill since: 4 bytes/s over a few seconds at most)
    assert tokens <= 1 - charged + 4 * BOUND, tokens


def test_close_from_connect_closes_the_forwarder() -> None:
    raised: list[BaseException] = []
    closed = threading.Event()
    fwd: UdpForwarder | None = None

    def connect() -> dtp.socket.DTPSocket:
        assert fwd is not None
        try:
            fwd.close()
        except BaseException as exc:  # (the defect: recorded for the assertion below)
            raised.append(exc)
        finally:
            closed.set()
        raise TunnelError("closed while connecting")

    fwd = UdpForwarder(("127.0.0.1", 0), connect)
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        client.sendto(b"x", fwd.address)
        assert closed.wait(BOUND)
        assert raised == []
        # the local port is free again: the close went to its end
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.bind(fwd.address)
        finally:
            probe.close()
        fwd.close()  # (a second one, from outside, returns)
    finally:
        client.close()


def test_a_lowered_max_idle_is_reached_on_the_next_release() -> None:
    limiter = RateLimiter(bytes_per_sec=1)
    for i in range(10):
        limiter.acquire(f"0x{i}", 0.0).bytes.charge(1000, 0.0)  # in debt: kept idle
        limiter.release(f"0x{i}")
    assert len(limiter.idle) == 10
    limiter.max_idle = 3
    limiter.acquire("0xnew", 0.0)
    limiter.release("0xnew")
    # the newest kept, the oldest released forgotten first
    assert list(limiter.idle) == ["0x8", "0x9", "0xnew"]
    limiter.max_idle = -1  # (as 0: none kept, and no loop over an empty table)
    limiter.acquire("0xlast", 0.0)
    limiter.release("0xlast")
    assert limiter.idle == {}
