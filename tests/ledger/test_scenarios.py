"""Run every scenario of tests/scenarios/*.toml on LocalLedger (format: the README there).

Each step's outcome is checked: ``returns``, ``error`` (module::EName, and the ledger's
full state unchanged afterwards), every ``check``, the events each successful step emits,
and MIST conservation after every step. An unknown op or check key fails the test: the
runner supports the whole table or says what it lacks.

The runner (tests/ledger/scenario_runner.py) drives a :class:`World`: the ledger plus
what a scenario does around it (funding, the clock, epochs, balances net of gas,
conservation, the state a failed step must leave alone). :class:`LocalWorld` is
LocalLedger's; tests/ledger/test_sui_on_standin.py runs the same scenarios through
SuiLedger on the Sui node stand-in.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.ledger.scenario_runner import SCENARIOS, Runner


def test_scenario_names_unique_and_present() -> None:
    names = [s["name"] for s in SCENARIOS]
    assert len(names) == len(set(names))
    assert names, "no scenarios found"


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s["name"] for s in SCENARIOS])
def test_scenario(scenario: dict[str, Any]) -> None:
    Runner(scenario).run()
