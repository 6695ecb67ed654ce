"""pytest-benchmark body of the ``ledger_carrier_bulk`` row (bench/ledger_carrier_rows.py):
under the default test run each side runs once, with a smaller transfer."""

from __future__ import annotations

import pytest

from bench.ledger_carrier_rows import ledger_carrier_bulk


@pytest.mark.parametrize("side", ["ours", "peer"])
def test_ledger_carrier_bulk(benchmark, side: str) -> None:  # type: ignore[no-untyped-def]
    w = ledger_carrier_bulk(1 << 20)
    try:
        benchmark.group = w.name
        op = w.ours if side == "ours" else w.peer
        assert op is not None
        benchmark.pedantic(op, rounds=3 if benchmark.enabled else 1, iterations=1)
    finally:
        assert w.close is not None
        w.close()
