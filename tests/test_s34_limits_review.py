"""Review of the runtime firewall's rate limits (dtp.ratelimit).

- A UDP relay's datagrams were charged their payload alone (ClientBuckets.admit): under
  a bytes/s limit alone an empty datagram cost nothing, so a client had as many relayed
  as it could send (the paid server's datagrams cost their frame header since s27).
- A limit lifted (rate 0) from another thread between a bucket's rate check and its
  division raised ZeroDivisionError in the charging thread; RateLimiter.set_limits
  changed a client's buckets without the lock ClientBuckets.admit holds.
- A NaN rate or burst was taken: NaN delays, which every ``delay > 0`` reads as no wait.
- A client's idle buckets are kept until they refill, and there was no bound on how many:
  every distinct client in debt added one for as long as its debt lasted.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import pytest

from dtp.ratelimit import ClientBuckets, RateLimiter, TokenBucket, datagram_charge


def _buckets(bytes_per_sec: float, requests_per_sec: float) -> ClientBuckets:
    return ClientBuckets(TokenBucket(bytes_per_sec, 0.0), TokenBucket(requests_per_sec, 0.0))


def test_empty_datagrams_are_not_free_under_a_bytes_limit() -> None:
    b = _buckets(400, 0)  # 100 bytes of burst, no request limit
    admitted = b.admit([0] * 10_000, 0.0)
    # each costs its DATAGRAM frame's header (2 bytes): the burst's worth, and one more
    assert admitted == 51
    assert b.admit([0], 0.0) == 0
    # the header counts for non-empty ones too (dtp.ratelimit.datagram_charge)
    b = _buckets(400, 0)
    assert b.admit([98, 0], 0.0) == 1
    assert b.bytes.tokens == pytest.approx(100 - datagram_charge(98)) == -1


@pytest.mark.parametrize("use", ["charge", "delay"])
def test_a_limit_lifted_by_another_thread_mid_call_raises_nothing(use: str) -> None:
    bucket = TokenBucket(100, 0.0)
    bucket.charge(1000, 0.0)  # in debt
    refill = bucket._refill

    def lifted_meanwhile(now: float) -> None:
        # what set_rate(0) from the policy thread does between the rate check and the
        # division of a relay thread's call
        bucket._refill = refill  # type: ignore[method-assign]
        bucket.set_rate(0, now)
        refill(now)

    bucket._refill = lifted_meanwhile  # type: ignore[method-assign]
    wait = bucket.charge(10, 1.0) if use == "charge" else bucket.delay(1.0)
    assert math.isfinite(wait) and wait >= 0


class _WatchedLock:
    """A lock that says whether it is held (threading.Lock's, but assignable)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._lock.__exit__(*exc)

    def locked(self) -> bool:
        return self._lock.locked()


def test_set_limits_changes_a_clients_buckets_under_their_lock() -> None:
    limiter = RateLimiter(bytes_per_sec=100, requests_per_sec=10)
    buckets = limiter.acquire("0xa", 0.0)
    watched = _WatchedLock()
    buckets.lock = watched  # type: ignore[assignment]
    held: list[bool] = []
    for bucket in (buckets.bytes, buckets.requests):
        set_rate = bucket.set_rate

        def checked(rate: float, now: float, set_rate: Any = set_rate) -> None:
            held.append(watched.locked())
            set_rate(rate, now)

        bucket.set_rate = checked  # type: ignore[method-assign]
    limiter.set_limits(50, 5, 1.0)
    assert held == [True, True]
    assert not watched.locked()
    assert buckets.bytes.rate == 50 and buckets.requests.rate == 5


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1])
def test_a_rate_that_is_not_a_finite_number_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(bad, 0.0)
    bucket = TokenBucket(100, 0.0)
    with pytest.raises(ValueError, match="rate"):
        bucket.set_rate(bad, 1.0)
    assert bucket.rate == 100
    with pytest.raises(ValueError, match="burst_seconds"):
        TokenBucket(100, 0.0, burst_seconds=math.nan)
    # refused before any client's buckets change: none left half at the new limits
    limiter = RateLimiter(bytes_per_sec=100, requests_per_sec=10)
    buckets = limiter.acquire("0xa", 0.0)
    with pytest.raises(ValueError, match="rate"):
        limiter.set_limits(200, bad, 1.0)  # type: ignore[arg-type]
    assert (buckets.bytes.rate, buckets.requests.rate) == (100, 10)
    assert (limiter.bytes_per_sec, limiter.requests_per_sec) == (100, 10)


def test_idle_buckets_of_many_distinct_clients_are_bounded() -> None:
    limiter = RateLimiter(bytes_per_sec=1)  # a 64 KiB chunk's debt lasts 18 hours
    bound = 65536
    clients = [f"0x{i:064x}" for i in range(bound + 100)]
    for client in clients:
        limiter.acquire(client, 0.0).bytes.charge(65536, 0.0)
        limiter.release(client)
    assert len(limiter.idle) == bound
    # the ones whose last connection ended longest ago went first
    assert clients[99] not in limiter.idle and clients[100] in limiter.idle
    # a client back while remembered still finds its debt
    again = limiter.acquire(clients[-1], 1.0)
    assert again.bytes.delay(1.0) > 60_000
