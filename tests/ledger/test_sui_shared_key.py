"""Two SuiLedgers signing with one key, as two processes of one user do (a program and a
``dtp`` command, two daemons with one key): each has its own gas pool, so one of them
builds with a coin version the other already used.

The node refuses such a transaction before executing it (a coin at an old version, or
one the other merged into another and so deleted); SuiLedger forgets the coins, reads
them again and sends it once more. And two such transactions of the same call are never
the same bytes (Sui has no nonce: the second would get the first's effects as its own).
"""

from __future__ import annotations

from dtp.identity.keys import HostIdentity
from dtp.ledger.sui import DEFAULT_GAS_BUDGET
from dtp.ledger.sui._ledger import _unique_budget
from tests.support.sui_network import SuiNetwork

SUI = 1_000_000_000


def test_a_call_built_on_a_coin_another_ledger_used_is_sent_again(
    sui_network: SuiNetwork,
) -> None:
    signer = HostIdentity.generate()
    sui_network.fund(signer.sui_address, 2 * SUI)
    mine, other = sui_network.ledger(), sui_network.ledger()
    first = mine.create_spending_cap(signer, 1_000)  # mine's pool: the coin's new version
    theirs = other.create_spending_cap(signer, 2_000)  # moves that coin on
    again = mine.create_spending_cap(signer, 3_000)  # built on the old version first
    assert len({first, theirs, again}) == 3
    assert [mine.get_cap(c).max_per_epoch for c in (first, theirs, again)] == [1_000, 2_000, 3_000]


def test_a_gas_coin_the_other_ledger_deleted_is_forgotten(sui_network: SuiNetwork) -> None:
    """Two coins; ``mine`` learns the first's new version from its effects; ``other``
    pays more than either holds, merging the first into the second (deleted). The node
    refuses ``mine``'s next call as naming a missing object: the coin is forgotten, the
    coins read again, and that call and the later ones go through."""
    signer = HostIdentity.generate()
    sui_network.fund(signer.sui_address, 2 * SUI)
    sui_network.fund(signer.sui_address, 2 * SUI - 1)  # the first is the larger: leased first
    mine, other = sui_network.ledger(), sui_network.ledger()
    mine.create_spending_cap(signer, 1_000)  # (gas: the first coin is the smaller now)
    other.pay(signer, HostIdentity.generate().sui_address, 3 * SUI)
    assert mine.gas_coin_count(signer.sui_address) == 1  # the first coin is gone
    caps = [mine.create_spending_cap(signer, n) for n in (2_000, 3_000)]
    assert [mine.get_cap(c).max_per_epoch for c in caps] == [2_000, 3_000]
    assert other.create_spending_cap(signer, 4_000)  # and the other ledger goes on too


def test_the_same_call_on_a_stale_coin_creates_an_object_of_its_own(
    sui_network: SuiNetwork,
) -> None:
    """The same arguments, and the coin version the other ledger's transaction used: the
    same bytes but for the budget, so the node refuses it rather than answering with the
    other's effects (which named the other's cap as this one's)."""
    signer = HostIdentity.generate()
    sui_network.fund(signer.sui_address, 2 * SUI)
    mine, other = sui_network.ledger(), sui_network.ledger()
    mine.create_spending_cap(signer, 1_000)
    theirs = other.create_spending_cap(signer, 5_000)
    assert other.last_outcome is not None
    ours = mine.create_spending_cap(signer, 5_000)
    assert mine.last_outcome is not None
    assert ours != theirs and mine.last_outcome.digest != other.last_outcome.digest
    assert mine.get_cap(ours).owner == other.get_cap(theirs).owner == signer.sui_address


def test_budgets_differ_within_one_percent_below_the_configured_one() -> None:
    budgets = {_unique_budget(DEFAULT_GAS_BUDGET) for _ in range(200)}
    assert len(budgets) > 190  # (500 001 values: a repeat in 200 is rare)
    assert all(DEFAULT_GAS_BUDGET * 99 // 100 <= b <= DEFAULT_GAS_BUDGET for b in budgets)
