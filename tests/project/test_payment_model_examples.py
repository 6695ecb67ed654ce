"""The payment-model examples are real: examples/payment_models.py runs as a program, its
functions return the amounts docs/escrow.md §13-16 predict on the embedded ledger and on a
Sui node (tests/support/sui_network.py), and the README's "Payment models" snippets execute in
order against an embedded ledger (on Sui: tests/project/test_docs_match_code.py)."""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
from typing import Any

import pytest

from dtp.ledger.interface import Ledger
from dtp.ledger.sui import SuiLedger
from tests.support.paths import ROOT
from tests.support.sui_network import SuiNetwork, sui_network

EXAMPLE = ROOT / "examples" / "payment_models.py"


def test_example_program_runs() -> None:
    result = subprocess.run(
        [sys.executable, str(EXAMPLE)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["subscription", "earned=200", "expires=5", "refunded=300"]
    assert lines[1].split() == ["sponsored", "client_pays=60", "provider_pays=60"]
    assert lines[2].split() == ["tickets", "revenue=100", "refund=150"]
    assert lines[3].split() == ["retention", "deposit=22", "returned=22"]
    assert lines[-1] == "MIST conserved in every run"


#: The example's functions and what each returns (docs/escrow.md §13-16).
AMOUNTS = {
    "subscription": {"earned": 200, "expires": 5, "refunded": 300},
    "sponsored": {"client_pays": 60, "provider_pays": 60},
    "tickets": {"revenue": 100, "refund": 150},
    "retention": {"deposit": 22, "returned": 22},
}


def test_example_functions_return_the_rules_amounts() -> None:
    example = runpy.run_path(str(EXAMPLE))
    for name, amounts in AMOUNTS.items():
        assert example[name]() == amounts, name


class SuiPlace:
    """The example's ``Place`` on a Sui node: its faucet (with gas on top of what the
    example gives), its clock and epochs (the stand-in's), its audit counting gas."""

    #: MIST added to each funding for the gas of the example's transactions.
    GAS = 10**9

    def __init__(self, network: SuiNetwork) -> None:
        self.network = network
        self.ledger: Ledger = network.ledger()

    def fund(self, address: str, mist: int) -> None:
        self.network.fund(address, mist + self.GAS)

    def advance_epoch(self) -> None:
        if self.network.node is None:
            pytest.skip("epochs of a real network end on its schedule (about a day)")
        self.network.node.advance_epoch()

    def set_clock(self, ms: int) -> None:
        if self.network.node is None:
            pytest.skip(f"the clock of the Sui node at {self.network.url} cannot be set")
        self.network.node.set_clock(ms)

    def advance_clock(self, ms: int) -> None:
        self.network.advance_clock(ms)

    def conserved(self) -> bool:
        """On the stand-in: every MIST minted is in a balance, an escrow, a pool or was
        paid as gas. (A real network's supply is its validators' to audit: True.)"""
        if self.network.node is None:
            return True
        a: dict[str, Any] = self.network.node.audit()
        return bool(a["minted"] == a["balances"] + a["escrows"] + a["broadcasts"] + a["gas"])


@pytest.mark.parametrize("name", list(AMOUNTS))
def test_example_functions_return_the_rules_amounts_on_sui(name: str) -> None:
    example = runpy.run_path(str(EXAMPLE))
    with sui_network(clock_ms=0) as network:
        place = SuiPlace(network)
        assert isinstance(place.ledger, SuiLedger)
        assert example[name](place) == AMOUNTS[name]


def test_readme_payment_model_snippets_run() -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Payment models")
    end = readme.index("\n## ", start + 1)
    blocks = re.findall(r"```python\n(.*?)```", readme[start:end], re.S)
    assert len(blocks) == 5, "setup plus one snippet per model"
    namespace: dict[str, object] = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)  # our own docs
    ledger = namespace["ledger"]
    audit = ledger.audit()  # type: ignore[attr-defined]
    assert audit["minted"] == 200_000
