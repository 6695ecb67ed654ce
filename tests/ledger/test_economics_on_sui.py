"""The economics state machine (tests/ledger/test_payment_models_state_machine.py: the
escrow rules, subscriptions, sponsor pools, ticket sales, retained records, broadcasts,
every deposit back after its deadline) on SuiLedger over the Sui node stand-in: every
call a Sui transaction the stand-in checks and executes, every outcome and balance move
predicted by the same rules and checked the same way, the invariants read through
SuiLedger (tests/ledger/standin_ledger.py sets gas apart).

And the runs are compared: the same seeded draws run on LocalLedger and on the stand-in
give, call by call, the same errors, the same balance moves and the same amounts. The
budget is small (a few runs of a few dozen steps: every call is a transaction over
gRPC); the machine runs at length on LocalLedger.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from tests.ledger.standin_ledger import StandInLedger
from tests.ledger.test_payment_models_state_machine import EconomicsMachine

#: Seeded (the same draws on both ledgers as long as they behave alike), generation only.
SAMPLED = settings(
    max_examples=5,
    stateful_step_count=40,
    derandomize=True,
    database=None,
    phases=[Phase.generate],
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


class EconomicsOnSui(EconomicsMachine):
    def new_ledger(self) -> Any:
        return StandInLedger(self.SIGNERS)

    def teardown(self) -> None:
        try:
            ledger: Any = self.ledger
            ledger.node.state.check()  # coins and the node's ledger agree
        finally:
            super().teardown()


def _traces(machine: type[EconomicsMachine]) -> list[list[object]]:
    """The outcome traces of the seeded runs of ``machine``, run after run."""
    traces: list[list[object]] = []

    class Recorded(machine):  # type: ignore[misc,valid-type]
        def teardown(self) -> None:
            traces.append(self.trace)
            super().teardown()

    run_state_machine_as_test(Recorded, settings=SAMPLED)
    return traces


def test_the_economics_machine_holds_on_sui_as_on_local_ledger() -> None:
    local = _traces(EconomicsMachine)
    sui = _traces(EconomicsOnSui)
    assert len(sui) == len(local) == SAMPLED.max_examples
    for n, (a, b) in enumerate(zip(local, sui, strict=True)):
        for step, (x, y) in enumerate(zip(a, b, strict=False)):
            assert x == y, f"run {n}, call {step}: LocalLedger {x!r}, the stand-in {y!r}"
        assert len(a) == len(b), f"run {n}: {len(a)} calls on LocalLedger, {len(b)} on Sui"
    # the runs did what they are for: calls refused and calls that moved money
    calls = [outcome for trace in sui for outcome in trace]
    assert any(isinstance(o, str) for o in calls)
    assert sum(1 for o in calls if isinstance(o, tuple) and o[0]) >= 10
