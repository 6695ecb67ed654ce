"""dtp.chain.sui_gas offline: the gas-coin pool's leases (one coin per transaction in
flight), its bookkeeping from effects, the split it asks for, the price cache."""

from __future__ import annotations

import threading
import time

import pytest

from dtp.chain.sui_client import LedgerUnavailable
from dtp.chain.sui_gas import POOL_TARGET, GasPool, PriceCache
from dtp.chain.sui_tx import OwnedRef
from dtp.errors import InsufficientFunds

OWNER = "0x" + "0a" * 32
DIGEST = "4vJ9JU1bJJE96FWSJKvHsmmFADCg4gpZQff4P3bkLKi"


def coin(n: int, version: int = 1) -> OwnedRef:
    return OwnedRef("0x" + f"{n:02x}" * 32, version, DIGEST)


class Listing:
    def __init__(self, coins: list[tuple[OwnedRef, int]]) -> None:
        self.coins = coins
        self.reads = 0

    def __call__(self) -> list[tuple[OwnedRef, int]]:
        self.reads += 1
        return list(self.coins)


def test_two_leases_never_share_a_coin() -> None:
    pool = GasPool(OWNER, Listing([(coin(1), 500), (coin(2), 400)]))
    first = pool.lease(300, 1.0)
    second = pool.lease(300, 1.0)
    assert first.coins == (coin(1),) and second.coins == (coin(2),)
    assert not first.split and not second.split


def test_a_lease_merges_coins_when_none_covers_it_alone() -> None:
    pool = GasPool(OWNER, Listing([(coin(1), 500), (coin(2), 400), (coin(3), 10)]))
    lease = pool.lease(800, 1.0)
    assert lease.coins == (coin(1), coin(2)) and lease.total == 900


def test_settled_coins_carry_the_effects_version_and_balance() -> None:
    listing = Listing([(coin(1), 500), (coin(2), 400)])
    pool = GasPool(OWNER, listing)
    lease = pool.lease(800, 1.0)
    pool.settle(lease, coin(1, 9), 850, [(coin(7, 9), 30)])
    again = pool.lease(860, 1.0)  # 850 + 30: the merged coin and the one received
    assert set(again.coins) == {coin(1, 9), coin(7, 9)}
    assert listing.reads == 1


def test_received_coins_of_unknown_amount_are_read_when_needed() -> None:
    listing = Listing([(coin(1), 500)])
    pool = GasPool(OWNER, listing)
    lease = pool.lease(100, 1.0)
    pool.settle(lease, coin(1, 2), 480, [(coin(5, 2), None)])
    listing.coins = [(coin(1, 2), 480), (coin(5, 2), 90)]
    assert pool.lease(100, 1.0).coins == (coin(1, 2),)  # known coins suffice: no read
    assert listing.reads == 1
    assert pool.lease(50, 1.0).coins == (coin(5, 2),)  # the rest is leased: read again
    assert listing.reads == 2


def test_a_waiting_lease_gets_the_returned_coin_and_is_told_to_split() -> None:
    pool = GasPool(OWNER, Listing([(coin(1), 10_000)]))
    first = pool.lease(100, 1.0)
    got = []
    waiter = threading.Thread(target=lambda: got.append(pool.lease(100, 5.0)))
    waiter.start()
    time.sleep(0.05)
    assert waiter.is_alive()  # the only coin is leased
    pool.settle(first, coin(1, 3), 9_900)
    waiter.join(5)
    assert got and got[0].coins == (coin(1, 3),) and got[0].split
    assert pool.split_amounts(got[0].total, 100) == [9_900 // POOL_TARGET] * (POOL_TARGET - 1)
    assert pool.split_amounts(700, 100) == []  # too small to leave 4 budgets a coin


def test_no_coin_coming_back_in_time_is_ledger_unavailable() -> None:
    pool = GasPool(OWNER, Listing([(coin(1), 1000)]))
    pool.lease(100, 1.0)
    with pytest.raises(LedgerUnavailable, match="came back"):
        pool.lease(100, 0.05)


def test_too_little_in_all_coins_is_insufficient_funds_at_once() -> None:
    pool = GasPool(OWNER, Listing([(coin(1), 1000), (coin(2), 500)]))
    pool.lease(100, 1.0)  # leased coins count: waiting could help for 1400
    with pytest.raises(InsufficientFunds) as info:
        pool.lease(1600, 60.0)
    assert info.value.name == "InsufficientCoinBalance" and "1500 MIST" in str(info.value)


def test_released_coins_are_unchanged_and_forgotten_ones_read_again() -> None:
    listing = Listing([(coin(1), 1000)])
    pool = GasPool(OWNER, listing)
    lease = pool.lease(100, 1.0)
    pool.release(lease)
    lease = pool.lease(100, 1.0)
    assert lease.coins == (coin(1),) and listing.reads == 1
    pool.forget(lease)
    listing.coins = [(coin(1, 4), 950)]
    assert pool.lease(100, 1.0).coins == (coin(1, 4),) and listing.reads == 2
    with pytest.raises(RuntimeError):
        pool.release(lease)  # a lease ends once


def test_price_cache_reads_once_until_invalidated() -> None:
    reads: list[int] = []

    def fetch() -> int:
        reads.append(1)
        return 750 + len(reads)

    cache = PriceCache(fetch, ttl=60.0)
    assert cache.get() == 751 and cache.get() == 751
    cache.invalidate()
    assert cache.get() == 752 and len(reads) == 2
