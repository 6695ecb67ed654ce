"""pytest-benchmark body of the ``ledger_retention_bulk`` row (bench/retention_rows.py):
under the default test run each side runs once, with a smaller transfer."""

from __future__ import annotations

import pytest

from bench.retention_rows import ledger_retention_bulk
from bench.workload import run_side


@pytest.mark.parametrize("side", ["ours", "peer"])
def test_ledger_retention_bulk(benchmark, side: str) -> None:  # type: ignore[no-untyped-def]
    run_side(benchmark, ledger_retention_bulk(256 << 10), side)
