"""pytest-benchmark suite for the payment-model rows of bench/compare.py (ours and peer).

Under the default test run (``--benchmark-disable``) each body runs once, so the rows stay
exercised (every call is a real ledger transaction that would raise on a broken rule).
"""

from __future__ import annotations

import pytest

from bench.workloads import ALL

ROWS = ["subscribed_open_close", "sponsored_cycle"]


@pytest.mark.parametrize("name", ROWS)
@pytest.mark.parametrize("side", ["ours", "peer"])
def test_row(benchmark, name: str, side: str) -> None:  # type: ignore[no-untyped-def]
    w = ALL[name]()
    fn = w.ours if side == "ours" else w.peer
    assert fn is not None
    benchmark.group = name
    benchmark.extra_info["unit"] = w.unit
    try:
        benchmark(fn)
    finally:
        if w.close is not None:
            w.close()
