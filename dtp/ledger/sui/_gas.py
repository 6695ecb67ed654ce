"""Gas for SuiLedger's transactions: a pool of each signer's SUI coins, leased one
transaction at a time, the reference gas price, read once per epoch, and what the
transactions cost (:class:`GasBook`: what each signer paid, and what a connection's end
is expected to cost).

Sui locks an owned object for the transaction that uses it at a version: a second
transaction signed meanwhile with the same gas coin is refused (an equivocation, which on
a real network can lock the coin until the epoch ends), and once the first executed the
coin is at a new version, so any transaction built before that is stale. One SuiLedger
used from several threads (a daemon settles connections in the background while it opens
others) therefore gives each transaction coins of its own: :class:`GasPool` leases coins
to a transaction and takes them back with the version and balance the effects report.
When transactions overlap and the signer holds fewer coins than :data:`POOL_TARGET`, the
one that had to wait splits the coin it gets into several (:func:`split_transaction`), so
that from then on they run side by side.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from pysui.sui.sui_bcs import bcs
from pysui.sui.sui_common.txn_transaction_builder import ProgrammableTransactionBuilder

from dtp.errors import ChainError, InsufficientFunds
from dtp.ledger._gas import EndGas, GasSpent, end_kind
from dtp.ledger.sui._client import LedgerUnavailable, MalformedResponse
from dtp.ledger.sui._effects import gas_used, sui_coins_created
from dtp.ledger.sui._tx import OwnedRef, TxContext, encode_address, encode_u64

__all__ = [
    "COIN_STORAGE",
    "MAX_GAS_COINS",
    "POOL_TARGET",
    "TX_UNITS",
    "GasBook",
    "GasPool",
    "Lease",
    "PriceCache",
    "settle_from_effects",
    "split_transaction",
]

#: Sui accepts at most this many gas payment coins.
MAX_GAS_COINS: Final = 255
#: Coins a signer's balance is split into once its transactions overlap.
POOL_TARGET: Final = 8
#: A split leaves each coin at least this many gas budgets (smaller ones are not made).
_SPLIT_BUDGETS: Final = 4


@dataclass
class _Coin:
    ref: OwnedRef
    balance: int
    leased: bool = False
    #: Learned from a transaction's effects (a listing may not show it yet), after this
    #: many reads of the node had begun.
    learned: int | None = None


@dataclass
class Lease:
    """Coins leased to one transaction (the gas payment: merged into the first)."""

    coins: tuple[OwnedRef, ...]
    total: int
    #: The transaction had to wait for coins: split the coin before using it.
    split: bool = False
    done: bool = field(default=False, repr=False)


class GasPool:
    """The SUI coins of one address, leased to transactions (see the module docs).

    ``list_coins`` reads them from the node (``(ref, balance)`` pairs); it is called on the
    first lease, after a transaction was refused for a coin another signer of the same
    key moved or deleted, and again when the coins known cannot cover a lease (others
    may have arrived: payments received, faucet coins). The node is read without the
    pool's lock held (a read may take a whole timeout): other threads lease, settle and
    return coins meanwhile, and what they learned is kept over the listing, which may
    predate it."""

    def __init__(
        self, owner: str, list_coins: Callable[[], Sequence[tuple[OwnedRef, int]]]
    ) -> None:
        self.owner = owner
        self._list = list_coins
        self._coins: dict[str, _Coin] = {}
        self._cond = threading.Condition(threading.Lock())
        #: The next lease reads the node before it chooses (none read yet, or the node
        #: named a coin known here as moved or deleted by another signer).
        self._must_read = True
        #: Coins may exist that the pool does not know (received, or forgotten) since
        #: the last read began.
        self._stale = True
        #: Reads of the node begun so far; one at a time (``_reading``).
        self._reads = 0
        self._reading = False
        #: Coins dropped while the node was being read (merged away, forgotten): the
        #: listing may still show them.
        self._dropped: set[str] = set()

    def _read(self) -> None:
        """Read the node's listing (the lock released meanwhile) and merge it."""
        self._reads += 1
        started = self._reads
        self._reading = True
        self._dropped.clear()
        stale, self._stale = self._stale, False
        self._cond.release()
        try:
            listed = self._list()
        except BaseException:
            self._cond.acquire()
            self._stale = self._stale or stale
            raise
        else:
            self._cond.acquire()
            self._merge(listed, started)
        finally:
            self._reading = False
            self._cond.notify_all()

    def _merge(self, listed: Sequence[tuple[OwnedRef, int]], started: int) -> None:
        """The coins the node listed in read number ``started``, over what the pool
        learned while that read ran (leases taken and settled, coins dropped)."""
        found = {ref.object_id: (ref, balance) for ref, balance in listed}
        for object_id, coin in list(self._coins.items()):
            listing = found.pop(object_id, None)
            if coin.leased:
                continue  # the transaction using it reports its new version
            if listing is None:
                # spent elsewhere; a coin learned from effects only once a listing
                # begun after it leaves it out (an earlier one may not show it yet)
                if coin.learned is None or coin.learned < started:
                    del self._coins[object_id]
                continue
            ref, balance = listing
            if ref.version >= coin.ref.version:  # (else the pool's is newer)
                self._coins[object_id] = _Coin(ref, balance)
        for object_id, (ref, balance) in found.items():
            if object_id not in self._dropped:
                self._coins[object_id] = _Coin(ref, balance)
        self._must_read = False

    def _choose(self, needed: int) -> list[_Coin] | None:
        """The fewest free coins (largest first, at most :data:`MAX_GAS_COINS`) covering
        ``needed``; None when the free ones cannot."""
        chosen: list[_Coin] = []
        total = 0
        for coin in sorted(self._coins.values(), key=lambda c: -c.balance):
            if coin.leased:
                continue
            if total >= needed or len(chosen) >= MAX_GAS_COINS:
                break
            chosen.append(coin)
            total += coin.balance
        return chosen if chosen and total >= needed else None

    def _usable(self) -> int:
        """MIST one transaction could pay with once every coin is back: the
        :data:`MAX_GAS_COINS` largest."""
        balances = sorted((c.balance for c in self._coins.values()), reverse=True)
        return sum(balances[:MAX_GAS_COINS])

    def _insufficient(self, needed: int) -> InsufficientFunds:
        available = sum(c.balance for c in self._coins.values())
        usable = self._usable()
        return InsufficientFunds(
            f"Address {self.owner} has {available} MIST in SUI coins"
            + ("" if usable == available else f" ({usable} usable as gas in one transaction)")
            + f", {needed} are needed (including the gas budget).",
            name="InsufficientCoinBalance",
            module="sui",
        )

    def lease(self, needed: int, timeout: float) -> Lease:
        """Coins covering ``needed`` MIST (the budget plus what the transaction splits
        off), waiting up to ``timeout`` seconds for coins other transactions hold.
        :class:`InsufficientFunds` when all the address's coins together cannot cover
        it; :class:`LedgerUnavailable` when none came back in time."""
        deadline = time.monotonic() + timeout
        waited = read = False
        with self._cond:
            while True:
                if self._reading:
                    self._cond.wait()  # another lease reads the node: its listing serves
                    continue
                chosen = None if self._must_read else self._choose(needed)
                if chosen is None and (self._must_read or self._stale):
                    self._read()
                    read = True
                    continue
                if chosen is not None:
                    for coin in chosen:
                        coin.leased = True
                    split = waited and len(self._coins) < POOL_TARGET
                    return Lease(
                        tuple(c.ref for c in chosen), sum(c.balance for c in chosen), split
                    )
                if self._usable() < needed:
                    if not read:
                        # the node once more before refusing: the pool knows the coins
                        # of its last read, and coins may have come since (a faucet, a
                        # payment)
                        self._stale = True
                        continue
                    raise self._insufficient(needed)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LedgerUnavailable(
                        f"No gas coin of {self.owner} came back from the transactions in "
                        f"flight within {timeout:g} s."
                    )
                waited = True
                self._cond.wait(remaining)

    def _finish(self, lease: Lease) -> None:
        if lease.done:
            raise RuntimeError("a gas lease is settled once")
        lease.done = True
        self._cond.notify_all()

    def _drop(self, object_id: str) -> None:
        self._coins.pop(object_id, None)
        if self._reading:
            self._dropped.add(object_id)

    def release(self, lease: Lease) -> None:
        """The transaction was not executed (refused, or never sent): the coins are as
        they were."""
        with self._cond:
            for ref in lease.coins:
                coin = self._coins.get(ref.object_id)
                if coin is not None:
                    coin.leased = False
            self._finish(lease)

    def forget(self, lease: Lease, *, moved_elsewhere: bool = False) -> None:
        """What became of the coins is unknown (the answer was lost, or the node found
        them stale or gone): drop them, to be read again from the node.
        ``moved_elsewhere``: the node named one as moved or deleted by another signer of
        this key, whose other coins the pool may know as old: the next lease reads the
        node first."""
        with self._cond:
            for ref in lease.coins:
                self._drop(ref.object_id)
            self._stale = True
            if moved_elsewhere:
                self._must_read = True
            self._finish(lease)

    def settle(
        self,
        lease: Lease,
        gas: OwnedRef,
        balance: int,
        received: Sequence[tuple[OwnedRef, int | None]] = (),
    ) -> None:
        """The transaction executed: the first coin is now ``gas`` holding ``balance``
        (the others were merged into it and deleted); ``received`` are coins it created
        for the owner (balance None when the effects do not tell)."""
        with self._cond:
            for ref in lease.coins:
                self._drop(ref.object_id)
            learned = self._reads
            if balance >= 0:
                self._dropped.discard(gas.object_id)
                self._coins[gas.object_id] = _Coin(gas, balance, learned=learned)
            else:  # (cannot happen with a consistent node: read it again)
                self._stale = True
            for ref, amount in received:
                if amount is None:
                    self._stale = True
                else:
                    self._coins[ref.object_id] = _Coin(ref, amount, learned=learned)
            self._finish(lease)

    def split_amounts(self, balance: int, budget: int) -> list[int]:
        """The coins to split off a coin of ``balance`` (none if it is too small)."""
        with self._cond:
            parts = min(POOL_TARGET - len(self._coins) + 1, balance // (_SPLIT_BUDGETS * budget))
        if parts < 2:
            return []
        return [balance // parts] * (parts - 1)


def settle_from_effects(
    pool: GasPool, lease: Lease, executed: Any, splits: Sequence[int], split: bool
) -> None:
    """Return ``lease``'s coins with what an ``ExecutedTransaction`` says of them: the
    first at its new version, holding what the coins held less the net gas (and less
    ``splits``, the MIST split off it, if the transaction succeeded); the coins it created
    for the owner are added, with their amounts when known (``split``: the pool's own
    split of ``splits``), else to be read. Effects without a gas object: forgotten."""
    try:
        effects = executed.effects if executed is not None else None
        gas_object = effects.gas_object if effects is not None else None
        if effects is None or gas_object is None or not gas_object.output_version:
            raise MalformedResponse("The node's effects name no gas object.")
        gas = OwnedRef(
            lease.coins[0].object_id,
            int(gas_object.output_version),
            str(gas_object.output_digest or ""),
        )
        success = effects.status is not None and bool(effects.status.success)
        balance = lease.total - gas_used(effects) - (sum(splits) if success else 0)
        created = sui_coins_created(effects, pool.owner) if success else []
        known = split and len(created) == len(splits)
        amounts: list[int | None] = list(splits) if known else [None] * len(created)
        pool.settle(lease, gas, balance, list(zip(created, amounts, strict=True)))
    except ChainError:
        pool.forget(lease)


def split_transaction(ctx: TxContext, amounts: Sequence[int]) -> bytes:
    """``SplitCoins(GasCoin, amounts)`` and ``TransferObjects`` of the new coins to the
    sender: the transaction :class:`GasPool` splits a coin with."""
    ptb = ProgrammableTransactionBuilder()
    pure = [bcs.BuilderArg("Pure", list(encode_u64(a, "a coin amount"))) for a in amounts]
    coins = ptb.split_coin(bcs.Argument("GasCoin"), pure)
    results = coins if isinstance(coins, list) else [coins]
    ptb.transfer_objects(
        bcs.BuilderArg("Pure", list(encode_address(ctx.sender, "sender"))), results
    )
    gas = ctx.gas
    data = bcs.TransactionData(
        "V1",
        bcs.TransactionDataV1(
            ptb.finish_for_inspect(),
            bcs.Address.from_str(ctx.sender),
            bcs.GasData(
                [p.to_bcs() for p in gas.payment],
                bcs.Address.from_str(gas.owner or ctx.sender),
                gas.price,
                gas.budget,
            ),
            bcs.TransactionExpiration("None"),
        ),
    )
    return bytes(data.serialize())


class PriceCache:
    """The reference gas price, read again only after ``ttl`` seconds (it changes once an
    epoch, about daily) or after :meth:`invalidate` (a node refused the price)."""

    def __init__(self, fetch: Callable[[], int], ttl: float = 60.0) -> None:
        self._fetch = fetch
        self._ttl = ttl
        self._lock = threading.Lock()
        self._price: int | None = None
        self._read_at = 0.0

    def get(self) -> int:
        with self._lock:
            price, read_at = self._price, self._read_at
        if price is not None and time.monotonic() - read_at < self._ttl:
            return price
        price = self._fetch()
        with self._lock:
            self._price, self._read_at = price, time.monotonic()
        return price

    def invalidate(self) -> None:
        with self._lock:
            self._price = None


# -- what transactions cost -------------------------------------------------------------

#: Sui's storage price (MIST per storage unit) and the storage units of one byte.
STORAGE_PRICE: Final = 76
STORAGE_UNITS_PER_BYTE: Final = 100
#: A ``Coin<SUI>``'s contents (its UID and its balance) and what an object takes besides
#: its contents (type, owner, previous transaction...), in bytes.
_COIN_BYTES: Final = 40
_OBJECT_OVERHEAD: Final = 100
#: The storage a new SUI coin pays for (a claim's payment, a refund).
COIN_STORAGE: Final = (_COIN_BYTES + _OBJECT_OVERHEAD) * STORAGE_UNITS_PER_BYTE * STORAGE_PRICE
#: What the objects of a connection's end (its TransportControl, Escrow and cap) add to
#: their storage as they are rewritten, after the rebate of what they paid before: their
#: closing fields grow them a little.
_REWRITE: Final = 200_000
#: What a claim alone adds to the escrow's storage as it rewrites it, after its rebate
#: (the escrow only: its claim counters).
_CLAIM_REWRITE: Final = 40_000
#: Computation units of one transaction: Sui's minimum, within which these calls (and a
#: deletion) stay.
TX_UNITS: Final = 1_000
#: Successful transactions of a kind whose gas the estimate is the median of.
_SAMPLES: Final = 16

#: The transactions of a connection's end, as SuiLedger names them.
CLAIM: Final = "escrow::claim"
SETTLE_WITH_RECEIPT: Final = "transport_control::settle_with_receipt"
SETTLE: Final = "transport_control::settle"
SETTLE_BATCH: Final = "transport_control::settle_batch"
CLOSE: Final = "transport_control::close"


class GasBook:
    """The gas a SuiLedger's transactions paid: per signer and kind
    (:class:`~dtp.ledger._gas.GasSpent`, failed transactions included), and per
    transaction of a connection's end, the last few that succeeded, which
    :meth:`end_gas` takes the median of. Before any, an end is estimated from the gas
    price: one transaction's minimum computation, the SUI coins it creates (the server's
    payment, the client's refund) and a little for the objects it rewrites -- the
    charging model of the node stand-in, which a real network's figures replace as soon
    as this ledger has paid for one (docs/sui.md, "Gas"). Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._spent: dict[str, dict[str, int]] = {}
        self._count: dict[str, int] = {}
        self._samples: dict[str, deque[int]] = {}

    def record(self, sender: str, what: str, gas: int) -> None:
        """A transaction of ``sender`` named ``what`` executed (or failed, or was
        cancelled: it paid all the same) and cost ``gas`` MIST."""
        kind = end_kind(what)
        with self._lock:
            spent = self._spent.setdefault(sender, {})
            spent[kind] = spent.get(kind, 0) + gas
            self._count[sender] = self._count.get(sender, 0) + 1

    def sample(self, what: str, gas: int) -> None:
        """A successful transaction named ``what`` cost ``gas``: a sample of its kind."""
        if gas <= 0:
            return
        with self._lock:
            self._samples.setdefault(what, deque(maxlen=_SAMPLES)).append(gas)

    def spent(self, address: str) -> GasSpent:
        """What ``address`` (normalized) paid through this ledger, by kind."""
        with self._lock:
            by_kind = dict(self._spent.get(address, {}))
            count = self._count.get(address, 0)
        return GasSpent(sum(by_kind.values()), count, by_kind)

    def estimate(self, what: str) -> int | None:
        """The median gas of the last successful transactions named ``what``; None
        before the first."""
        with self._lock:
            samples = sorted(self._samples.get(what, ()))
        if not samples:
            return None
        return samples[len(samples) // 2]

    def end_gas(self, price: int) -> EndGas:
        """What a connection's end costs, at reference gas price ``price``: the samples
        where there are some, else the model (see the class docs)."""
        computation = price * TX_UNITS
        model_claim = computation + 2 * COIN_STORAGE + _REWRITE
        claim = self.estimate(SETTLE_WITH_RECEIPT)
        refund = self.estimate(SETTLE)
        close = self.estimate(CLOSE)
        batch = self.estimate(SETTLE_BATCH)
        live = self.estimate(CLAIM)
        settle_claim = model_claim if claim is None else claim
        if batch is None:
            # a batch pays one transaction's minimum computation once
            batch = max(0, settle_claim - computation)
        return EndGas(
            settle_claim,
            computation + COIN_STORAGE + _REWRITE if refund is None else refund,
            batch,
            computation + _REWRITE if close is None else close,
            observed=None not in (claim, refund, close),
            # (a claim alone: one coin, the escrow rewritten)
            claim_only=computation + COIN_STORAGE + _CLAIM_REWRITE if live is None else live,
        )
