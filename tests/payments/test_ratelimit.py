"""The runtime firewall's rate limits (dtp.payments._ratelimit): a limit the Host lifts
(0 = unlimited) and later imposes again.

An unlimited bucket is neither charged nor refilled, so the debt a client had when its
limit was lifted stayed in it, whole, for as long as the Host left the client unlimited;
the next limit brought it back, and the client waited then for bytes moved long before
(at the old rate they had been paid for long since). A client's buckets outlive its
connections while in debt (RateLimiter.idle), so a client that reconnected meanwhile got
that debt too. And a bucket that was unlimited from the start came back with no burst:
its first use under the new limit waited.

What a rate limit charges, and a limit changed from another thread.

- A UDP relay's datagrams were charged their payload alone (ClientBuckets.admit): under
  a bytes/s limit alone an empty datagram cost nothing, so a client had as many relayed
  as it could send (as the paid server's datagrams cost their frame header).
- A limit lifted (rate 0) from another thread between a bucket's rate check and its
  division raised ZeroDivisionError in the charging thread; RateLimiter.set_limits
  changed a client's buckets without the lock ClientBuckets.admit holds.
- A NaN rate or burst was taken: NaN delays, which every ``delay > 0`` reads as no wait.
- A client's idle buckets are kept until they refill, and there was no bound on how many:
  every distinct client in debt added one for as long as its debt lasted."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

import dtp.aio
import dtp.socket
from dtp.errors import ConnectionClosed
from dtp.hostid.paid import PaidServer, ServicePolicy
from dtp.hostid.paid._aio import PaidAioServer
from dtp.ledger._objects import Host, Sla
from dtp.ledger.local import LocalLedger
from dtp.payments._ratelimit import (
    ClientBuckets,
    HostPolicy,
    RateLimiter,
    TokenBucket,
    datagram_charge,
)
from dtp.payments.metering import CLOSE_FIREWALL_DENIED
from tests.support.paid_twins import echo_server, funded_ledger, ident
from tests.support.polling import wait_for
from tests.support.settlements import is_settled

#: A debt that takes 600 s to pay at the rate it was made at
RATE = 1000
DEBT = 600 * RATE


def test_a_limit_lifted_and_imposed_again_forgets_the_old_debt() -> None:
    bucket = TokenBucket(RATE, now=0.0)
    assert bucket.charge(DEBT, 0.0) == pytest.approx(600 - 0.25)  # the burst paid a bit
    bucket.set_rate(0, 1.0)  # the Host lifts the limit
    assert bucket.delay(2.0) == 0.0
    # an hour later it imposes one again: the old debt was paid 3000 s ago at any rate
    bucket.set_rate(RATE, 3600.0)
    assert bucket.delay(3600.0) == 0.0
    # and the bucket is as good as a new one: a full burst, then the rate
    assert bucket.charge(RATE // 4, 3600.0) == 0.0
    assert bucket.charge(RATE, 3600.0) == pytest.approx(1.0)


def test_a_bucket_unlimited_from_the_start_gets_its_burst_when_limited() -> None:
    bucket = TokenBucket(0, now=0.0)
    bucket.set_rate(1, 10.0)  # 1 request/s: a burst of one request
    assert bucket.charge(1, 10.0) == 0.0  # the first request does not wait
    assert bucket.charge(1, 10.0) == pytest.approx(1.0)  # the rate holds


def test_an_idle_client_in_debt_is_not_held_to_it_after_an_unlimited_spell() -> None:
    limiter = RateLimiter(bytes_per_sec=RATE)
    first = limiter.acquire("0xa", 0.0)
    assert first.bytes.charge(DEBT, 0.0) > 500  # its connection ends during the wait
    limiter.release("0xa")
    limiter.set_limits(0, 0, 1.0)  # lifted
    again = limiter.acquire("0xa", 2.0)  # back, unlimited
    assert again.bytes.charge(10**6, 2.0) == 0.0
    limiter.set_limits(RATE, 0, 3600.0)  # imposed again an hour later
    assert again.bytes.delay(3600.0) == 0.0
    assert again.bytes.charge(RATE // 4, 3600.0) == 0.0
    # a client met for the first time meanwhile gets the same fresh bucket
    other = limiter.acquire("0xb", 3600.0)
    assert other.bytes.charge(RATE // 4, 3600.0) == 0.0


def test_lowering_and_raising_a_limit_keeps_the_debt_in_units() -> None:
    """(Unchanged behaviour, pinned: a limited bucket's debt is repaid at the new rate.)"""
    bucket = TokenBucket(RATE, now=0.0)
    bucket.charge(RATE // 4 + 2 * RATE, 0.0)  # 2 s of debt at RATE
    bucket.set_rate(2 * RATE, 0.0)
    assert bucket.delay(0.0) == pytest.approx(1.0)
    bucket.set_rate(RATE // 2, 0.5)  # half paid at 2*RATE, the rest at RATE/2
    assert bucket.delay(0.5) == pytest.approx(2.0)


def test_time_going_back_and_a_long_idle_spell() -> None:
    bucket = TokenBucket(RATE, now=100.0)
    bucket.charge(RATE, 100.0)
    # a clock read earlier than the last one neither refills nor moves the stamp back
    before = bucket.delay(50.0)
    assert before == pytest.approx(0.75)
    assert bucket.delay(100.0) == pytest.approx(0.75)
    # a day idle: the burst is capped, not a day's worth
    assert bucket.charge(RATE // 4, 86_500.0) == 0.0
    assert bucket.charge(RATE, 86_500.0) == pytest.approx(1.0)


# -- the same, end to end: a real paid server on 127.0.0.1, a LocalLedger file -------------

SLA = Sla(price_per_kib=10, price_per_request=5, min_deposit=5000)
SERVER, CLIENT = ident(0x81), ident(0x82)
PORT = 7
SLOW = 100  # bytes/s: a 30 kB read is 300 s of debt
POLICY = ServicePolicy(refresh_interval=0.2)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[LocalLedger]:
    with funded_ledger(tmp_path, CLIENT) as ledger:
        yield ledger


def paid_server(api: str, ledger: LocalLedger, host_id: str) -> Any:
    """A paid echo server (``api``: blocking or asyncio) refreshing the Host every 0.2 s."""
    return echo_server(api, ledger, host_id, port=PORT, identity=SERVER, policy=POLICY)


def held_back(server: PaidServer | PaidAioServer, client: str) -> bool:
    """Whether the client's bytes bucket holds back its stream now: the handler's next
    piece waits for it (dtp.payments._ratelimit.TokenBucket.wait_for), mid-way through 30 kB at
    SLOW -- 300 s of it."""
    limiter = server.limiter
    buckets = limiter.clients.get(client) or limiter.idle.get(client)
    if buckets is None:
        return False
    return buckets.bytes.wait_for(buckets.bytes.take, time.monotonic()) > 0


@pytest.mark.parametrize("api", ["blocking", "asyncio"])
def test_a_paid_client_is_not_held_to_a_debt_from_before_an_unlimited_spell(
    ledger: LocalLedger, api: str
) -> None:
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "echo", SLA)
    ledger.set_client_limits(SERVER, host_id, 0, SLOW, 0)
    address = f"dtp://{host_id}:{PORT}"
    client = CLIENT.sui_address
    with paid_server(api, ledger, host_id) as server:
        # a connection held back by the rate with minutes of bytes to go ends mid-way
        with dtp.socket.create_connection(
            address, timeout=30, ledger=ledger, identity=CLIENT, deposit=100_000
        ) as first:
            first.sendall(b"x" * 30_000)
            assert wait_for(lambda: held_back(server, client), timeout=30)
        assert wait_for(lambda: server.open_connections == 0, timeout=30)
        # the Host lifts the limit; the client comes back, unlimited
        ledger.set_client_limits(SERVER, host_id, 0, 0, 0)
        assert wait_for(lambda: server.limiter.bytes_per_sec == 0, timeout=30)
        with dtp.socket.create_connection(
            address, timeout=30, ledger=ledger, identity=CLIENT, deposit=100_000
        ) as second:
            second.sendall(b"hi")
            assert second.recv(16) == b"hi"
            # the Host imposes the old limit again: this client moved nothing since it
            # was lifted, and is served within the new limit's burst (before: held back
            # for the old debt, 300 s, and the recv timed out)
            ledger.set_client_limits(SERVER, host_id, 0, SLOW, 0)
            assert wait_for(lambda: server.limiter.bytes_per_sec == SLOW, timeout=30)
            started = time.monotonic()
            second.sendall(b"again")
            assert second.recv(16) == b"again"
            assert time.monotonic() - started < 30
    audit = ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]


@pytest.mark.parametrize("api", ["blocking", "asyncio"])
def test_a_client_denied_while_held_back_by_its_rate_is_cut_off(
    ledger: LocalLedger, api: str
) -> None:
    """(Pinned: the rate limit's wait does not shield a client from the deny list.)"""
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "echo", SLA)
    ledger.set_client_limits(SERVER, host_id, 0, SLOW, 0)
    with paid_server(api, ledger, host_id) as server:
        sock = dtp.socket.create_connection(
            f"dtp://{host_id}:{PORT}", timeout=30, ledger=ledger, identity=CLIENT, deposit=100_000
        )
        cid = sock.connection_id
        assert cid is not None
        sock.sendall(b"x" * 30_000)
        assert wait_for(lambda: held_back(server, CLIENT.sui_address), timeout=30)
        ledger.deny(SERVER, host_id, CLIENT.sui_address)
        started = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            while sock.recv(65536):
                pass
        assert time.monotonic() - started < 30
        assert closed.value.code == CLOSE_FIREWALL_DENIED
        sock.close()
        # (its client deletes the settled connection's objects: the settlement's event says it)
        assert wait_for(lambda: is_settled(ledger, cid), timeout=30)
        assert wait_for(lambda: server.open_connections == 0, timeout=30)
    audit = ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]


@pytest.mark.parametrize("api", ["blocking", "asyncio"])
def test_a_limit_lifted_during_a_wait_reaches_the_wait(ledger: LocalLedger, api: str) -> None:
    """The handler's wait for a client's rate debt was worked out once, at the old rate,
    and went on after the Host lifted the limit: 300 s for 30 kB at 100 B/s. It looks
    at the limit again each refresh interval."""
    host_id = ledger.create_host(SERVER, SERVER.noise_public)
    ledger.add_service(SERVER, host_id, PORT, "echo", SLA)
    ledger.set_client_limits(SERVER, host_id, 0, SLOW, 0)
    with (
        paid_server(api, ledger, host_id) as server,
        dtp.socket.create_connection(
            f"dtp://{host_id}:{PORT}", timeout=30, ledger=ledger, identity=CLIENT, deposit=100_000
        ) as sock,
    ):
        sock.sendall(b"x" * 30_000)
        assert wait_for(lambda: held_back(server, CLIENT.sui_address), timeout=30)
        ledger.set_client_limits(SERVER, host_id, 0, 0, 0)  # lifted
        got = 0
        while got < 30_000:  # (the socket's timeout, 30 s, bounds each read)
            data = sock.recv(65536)
            assert data
            got += len(data)
    audit = ledger.audit()
    assert audit["minted"] == audit["balances"] + audit["escrows"] + audit["broadcasts"]


def _buckets(bytes_per_sec: float, requests_per_sec: float) -> ClientBuckets:
    return ClientBuckets(TokenBucket(bytes_per_sec, 0.0), TokenBucket(requests_per_sec, 0.0))


def test_empty_datagrams_are_not_free_under_a_bytes_limit() -> None:
    b = _buckets(400, 0)  # 100 bytes of burst, no request limit
    admitted = b.admit([0] * 10_000, 0.0)
    # each costs its DATAGRAM frame's header (2 bytes): the burst's worth, and one more
    assert admitted == 51
    assert b.admit([0], 0.0) == 0
    # the header counts for non-empty ones too (dtp.payments._ratelimit.datagram_charge)
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


def test_rate_beyond_the_float_range_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="finite"):
        TokenBucket(10**400, 0.0)
    limiter = RateLimiter()
    with pytest.raises(ValueError, match="finite"):
        limiter.set_limits(10**400, 0, 0.0)
    assert (limiter.bytes_per_sec, limiter.requests_per_sec) == (0, 0)


def test_bool_is_no_rate() -> None:
    with pytest.raises(TypeError):
        TokenBucket(True, 0.0)
    with pytest.raises(TypeError):
        RateLimiter().set_limits(0, True, 0.0)


@pytest.mark.parametrize("limits", [(-1, 0), (0, math.nan), (math.inf, 0)])
def test_rate_limiter_refuses_a_bad_limit_when_made(limits: tuple[float, float]) -> None:
    with pytest.raises(ValueError):
        RateLimiter(*limits)  # type: ignore[arg-type]


@pytest.mark.parametrize("interval", [math.nan, math.inf, 10**400], ids=["nan", "inf", "huge"])
def test_host_policy_refuses_a_refresh_interval_that_is_no_positive_finite_number(
    interval: float,
) -> None:
    with pytest.raises(ValueError, match="refresh_interval"):
        HostPolicy(cast(Host, None), 0.0, interval)


def test_nan_charge_does_not_poison_the_bucket() -> None:
    bucket = TokenBucket(100, 0.0)
    assert bucket.charge(math.nan, 0.0) == 0.0
    # within the same instant (no refill to wash a NaN out) the debt is still seen
    delay = bucket.charge(125, 0.0)
    assert delay == pytest.approx(1.0)
    assert bucket.delay(0.0) == pytest.approx(1.0)
