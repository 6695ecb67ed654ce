"""dtp.ledger.sui._gas offline: the gas-coin pool's leases (one coin per transaction in
flight; the fewest coins, largest first), its bookkeeping from effects and from the
node's listings (read without the pool's lock), the split it asks for, the price cache."""

from __future__ import annotations

import threading
import time

import pytest

from dtp.errors import InsufficientFunds
from dtp.ledger.sui._client import LedgerUnavailable
from dtp.ledger.sui._gas import MAX_GAS_COINS, POOL_TARGET, GasPool, Lease, PriceCache
from dtp.ledger.sui._tx import OwnedRef

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


def test_a_lease_takes_the_fewest_coins_largest_first() -> None:
    pool = GasPool(OWNER, Listing([(coin(1), 100), (coin(2), 900)]))
    lease = pool.lease(500, 1.0)
    assert lease.coins == (coin(2),)
    pool.release(lease)
    assert pool.lease(1000, 1.0).coins == (coin(2), coin(1))


def test_no_coin_at_all_is_insufficient_funds() -> None:
    with pytest.raises(InsufficientFunds) as info:
        GasPool(OWNER, Listing([])).lease(1, 1.0)
    assert info.value.name == "InsufficientCoinBalance" and "has 0 MIST" in str(info.value)


def test_more_coins_than_one_transaction_takes_is_insufficient_funds() -> None:
    """Sui takes at most MAX_GAS_COINS gas coins: what the others hold cannot pay (a
    lease waiting for it would wait for nothing)."""
    coins = [(OwnedRef(f"0x{n:064x}", 1, DIGEST), 10) for n in range(1, MAX_GAS_COINS + 6)]
    pool = GasPool(OWNER, Listing(coins))
    assert len(pool.lease(MAX_GAS_COINS * 10, 1.0).coins) == MAX_GAS_COINS
    fresh = GasPool(OWNER, Listing(coins))
    with pytest.raises(InsufficientFunds) as info:
        fresh.lease(MAX_GAS_COINS * 10 + 1, 60.0)
    assert f"({MAX_GAS_COINS * 10} usable as gas in one transaction)" in str(info.value)


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


def test_a_coin_moved_elsewhere_makes_the_next_lease_read_the_node_first() -> None:
    """The node named a leased coin as deleted or at another version: another signer of
    this key moved it on, and may have moved the others the pool knows too."""
    listing = Listing([(coin(1), 1000), (coin(2), 900)])
    pool = GasPool(OWNER, listing)
    lease = pool.lease(100, 1.0)
    assert lease.coins == (coin(1),)
    # elsewhere: coin 1 merged into coin 2, which is at version 3 now
    listing.coins = [(coin(2, 3), 1850)]
    pool.forget(lease, moved_elsewhere=True)
    again = pool.lease(100, 1.0)
    assert again.coins == (coin(2, 3),) and listing.reads == 2


def test_a_coin_learned_from_effects_is_dropped_once_a_later_listing_leaves_it_out() -> None:
    listing = Listing([(coin(1), 1000), (coin(2), 10)])
    pool = GasPool(OWNER, listing)
    pool.settle(pool.lease(100, 1.0), coin(1, 2), 950)
    # coin 1 is merged away elsewhere; a lease the known coins cannot cover reads the
    # node, whose listing (begun after the effects were learned) no longer shows it
    listing.coins = [(coin(2), 10), (coin(3, 5), 2000)]
    lease = pool.lease(1500, 1.0)
    assert lease.coins == (coin(3, 5),) and listing.reads == 2
    pool.release(lease)
    assert pool.lease(960, 1.0).coins == (coin(3, 5),)
    with pytest.raises(InsufficientFunds, match="has 2010 MIST"):
        pool.lease(2015, 1.0)  # 950 + 10 + 2000 if coin 1 were still counted


class BlockingListing(Listing):
    """A listing that blocks until ``go`` is set, after setting ``reading``."""

    def __init__(self, coins: list[tuple[OwnedRef, int]]) -> None:
        super().__init__(coins)
        self.reading, self.go = threading.Event(), threading.Event()
        self.block = False

    def __call__(self) -> list[tuple[OwnedRef, int]]:
        got = super().__call__()
        if self.block:
            self.reading.set()
            assert self.go.wait(10)
        return got


def test_the_node_is_read_without_the_pool_lock_and_newer_coins_win() -> None:
    """While one lease waits for the node's listing, another thread settles its
    transaction at once; the listing (begun before) neither brings back the coin merged
    away meanwhile nor an older version of the one settled meanwhile, nor drops the
    coin that transaction created."""
    listing = BlockingListing([(coin(1), 1000), (coin(2), 1000)])
    pool = GasPool(OWNER, listing)
    first = pool.lease(1500, 1.0)  # coins 1 and 2, merged into 1 by the transaction
    assert first.coins == (coin(1), coin(2))
    listing.coins.append((coin(3), 6000))  # received meanwhile
    listing.block = True
    got: list[Lease] = []
    reader = threading.Thread(target=lambda: got.append(pool.lease(5000, 5.0)))
    reader.start()  # the coins known cannot cover it: it reads the node (which blocks)
    assert listing.reading.wait(5)
    settled = threading.Thread(
        target=lambda: pool.settle(first, coin(1, 7), 1900, [(coin(9, 7), 50)])
    )
    settled.start()
    settled.join(2)
    assert not settled.is_alive()  # not held up by the read in flight
    listing.go.set()
    reader.join(5)
    assert got and got[0].coins == (coin(3),)
    pool.release(got[0])
    # all there is, without another read: coins 3, 1 (version 7) and 9 (coin 2, of
    # 1000, would come before coin 9)
    assert pool.lease(7950, 1.0).coins == (coin(3), coin(1, 7), coin(9, 7))
    assert listing.reads == 2


def test_a_failed_read_leaves_the_pool_to_read_again() -> None:
    calls: list[int] = []

    def flaky() -> list[tuple[OwnedRef, int]]:
        calls.append(1)
        if len(calls) == 1:
            raise LedgerUnavailable("the node is away")
        return [(coin(1), 1000)]

    pool = GasPool(OWNER, flaky)
    with pytest.raises(LedgerUnavailable):
        pool.lease(100, 1.0)
    assert pool.lease(100, 1.0).coins == (coin(1),) and len(calls) == 2


def test_price_cache_reads_once_until_invalidated() -> None:
    reads: list[int] = []

    def fetch() -> int:
        reads.append(1)
        return 750 + len(reads)

    cache = PriceCache(fetch, ttl=60.0)
    assert cache.get() == 751 and cache.get() == 751
    cache.invalidate()
    assert cache.get() == 752 and len(reads) == 2
