"""The host firewall's per-client rate limits on UDP relays: datagrams over the rate are
dropped and counted before they are billed (a datagram cannot wait), replies count
against the client's bytes, and traffic within the rate passes whole."""

from __future__ import annotations

import time

import pytest

from dtp.hostid.udp import UdpStats
from dtp.payments._ratelimit import ClientBuckets, RateLimiter, TokenBucket
from tests.udp.conftest import UdpDriver
from tests.udp.world import DnsLikeBackend, relayed


def _buckets(bytes_per_sec: float, requests_per_sec: float) -> ClientBuckets:
    return ClientBuckets(TokenBucket(bytes_per_sec, 0.0), TokenBucket(requests_per_sec, 0.0))


def test_admit_takes_datagrams_while_no_bucket_is_in_debt() -> None:
    # 8 requests/s, a quarter second of burst: 2 tokens
    b = _buckets(0, 8)
    assert b.admit([10, 10, 10, 10], 0.0) == 3  # 2 tokens, and the one that runs into debt
    assert b.requests.tokens == -1
    assert b.admit([10], 0.1) == 0  # still in debt: refilled 0.8 of 1
    assert b.admit([10, 10, 10], 0.25) == 2  # 1 token again: one, then one into debt
    assert b.admit([], 5.0) == 0
    # bytes: 400/s, 100 bytes of burst; one big datagram passes, then the debt holds the rest
    b = _buckets(400, 0)
    assert b.admit([300, 1], 0.0) == 1
    assert b.admit([1], 0.4) == 0  # -200 + 160
    assert b.admit([1], 0.55) == 1
    # unlimited buckets admit everything
    assert _buckets(0, 0).admit([1 << 20] * 100, 0.0) == 100


def test_replies_charged_to_bytes_delay_the_clients_next_datagram() -> None:
    b = _buckets(1000, 0)  # 250 bytes of burst
    b.charge_bytes(750, 0.0)  # a backend's replies: 500 bytes of debt
    assert b.admit([1], 0.4) == 0
    assert b.admit([1], 0.6) == 1


def test_a_relay_drops_datagrams_over_the_request_rate(
    backend: DnsLikeBackend, driver: UdpDriver
) -> None:
    """The blocking relay admits a batch at once, the asyncio one each datagram as it
    comes: at one instant both are the same rule (ClientBuckets.admit takes the first
    ones while no bucket is in debt), pinned here on both."""
    limiter = RateLimiter(requests_per_sec=20)  # 5 of burst
    buckets = limiter.acquire("0xclient", time.monotonic())
    stats = UdpStats()
    with relayed(driver, backend.address, stats, limits=buckets) as sock:
        for i in range(40):
            sock.send_datagram(bytes([i]) * 8)
        deadline = time.monotonic() + 5
        while stats.datagrams_in + stats.dropped_rate_limited < 40:
            assert time.monotonic() < deadline, stats.snapshot()
            time.sleep(0.01)
        passed = stats.datagrams_in
        # the burst, plus what refilled while the 40 arrived
        assert 5 <= passed <= 12 and stats.dropped_rate_limited == 40 - passed
        assert stats.dropped_unpaid == 0
        replies = {sock.recv_datagram()[0] for _ in range(passed)}
        assert len(replies) == passed
        assert backend.received == passed
        # paced within the rate, every datagram passes
        time.sleep(0.5)
        for i in range(100, 104):
            sock.send_datagram(bytes([i]) * 8)
            time.sleep(0.06)
        assert {sock.recv_datagram()[0] for _ in range(4)} == set(range(100, 104))
        assert stats.dropped_rate_limited == 40 - passed


def test_a_relay_counts_replies_against_the_byte_rate(
    backend: DnsLikeBackend, driver: UdpDriver
) -> None:
    """Replies (query + 4 bytes) are charged too: with 400 bytes/s and 100-byte queries,
    a burst gets fewer through than the queries alone would allow."""
    limiter = RateLimiter(bytes_per_sec=400)  # 100 bytes of burst
    buckets = limiter.acquire("0xclient", time.monotonic())
    stats = UdpStats()
    with relayed(driver, backend.address, stats, limits=buckets) as sock:
        sock.send_datagram(b"\x00" * 100)  # admitted: the bucket was full
        first = sock.recv_datagram(2)
        assert len(first) == 104
        for i in range(1, 10):  # the query and its reply put the client 108 bytes in debt
            sock.send_datagram(bytes([i]) * 100)
        time.sleep(0.3)
        burst = stats.snapshot()
    assert burst["datagrams_in"] == 1 and burst["dropped_rate_limited"] == 9


@pytest.mark.parametrize("limits", [None, _buckets(0, 0)])
def test_no_limits_or_unlimited_buckets_drop_nothing(
    backend: DnsLikeBackend, limits: ClientBuckets | None, driver: UdpDriver
) -> None:
    stats = UdpStats()
    with relayed(driver, backend.address, stats, limits=limits) as sock:
        for i in range(30):
            sock.send_datagram(bytes([i]))
        got = {sock.recv_datagram()[0] for _ in range(30)}
    assert got == set(range(30)) and stats.dropped_rate_limited == 0
