"""pytest-benchmark body of the ``ledger_carrier_bulk`` row (bench/ledger_carrier_rows.py):
under the default test run each side runs once, with a smaller transfer."""

from __future__ import annotations

import pytest

from bench.ledger_carrier_rows import ledger_carrier_bulk
from bench.workload import run_side


@pytest.mark.parametrize("side", ["ours", "peer"])
def test_ledger_carrier_bulk(benchmark, side: str) -> None:  # type: ignore[no-untyped-def]
    run_side(benchmark, ledger_carrier_bulk(1 << 20), side)
