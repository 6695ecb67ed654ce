"""SuiLedger end to end on the Sui node stand-in (tests/sui_node): the shared ledger
scenarios, as on LocalLedger, with gas accounted."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from dtp.chain.sui import SuiConfig, SuiLedger
from tests.sui_node import SuiNodeStandIn
from tests.test_ledger_scenarios import ACTORS, SCENARIOS, Runner

#: MIST each actor gets for gas, apart from what a scenario funds.
GAS_ALLOWANCE = 10**10


class SuiWorld:
    """The scenarios on SuiLedger over a fresh stand-in (clock frozen at 0): every actor
    holds a gas allowance besides what the scenario gives it; balances are compared net
    of the gas the node charged."""

    def __init__(self, node: SuiNodeStandIn) -> None:
        self.node = node
        self.ledger = SuiLedger(SuiConfig(node.url, node.package_id, timeout=30.0))
        self.allowances = 0
        for identity in ACTORS.values():
            node.faucet(identity.sui_address, GAS_ALLOWANCE)
            self.allowances += GAS_ALLOWANCE

    def fund(self, address: str, amount: int) -> None:
        self.node.faucet(address, amount)

    def set_clock(self, ms: int) -> None:
        self.node.set_clock(ms)

    def advance_clock(self, ms: int) -> None:
        self.node.advance_clock(ms)

    def next_epoch(self) -> None:
        self.node.advance_epoch()

    def balance(self, address: str) -> int:
        return self.ledger.balance(address) - GAS_ALLOWANCE + self.node.gas_paid(address)

    def assert_conserved(self, minted: int) -> None:
        audit = self.node.audit()
        assert audit["minted"] == minted + self.allowances
        held = audit["balances"] + audit["escrows"] + audit["broadcasts"] + audit["gas"]
        assert audit["minted"] == held

    def snapshot(self) -> Any:
        # a failed transaction charges gas (and records its digest): all else stays
        state = self.node.state
        dump = state.ledger.dump()
        dump["balances"] = sorted(
            (address, int(amount) + state.gas_paid(address)) for address, amount in dump["balances"]
        )
        del dump["transactions"]
        return dump


@pytest.fixture
def node() -> Iterator[SuiNodeStandIn]:
    with SuiNodeStandIn(clock_ms=0) as stand_in:
        yield stand_in


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s["name"] for s in SCENARIOS])
def test_scenario_on_sui(scenario: dict[str, Any], node: SuiNodeStandIn) -> None:
    world = SuiWorld(node)
    try:
        Runner(scenario, world).run()
    finally:
        world.ledger.close()
    node.state.check()
