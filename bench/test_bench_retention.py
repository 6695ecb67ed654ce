"""pytest-benchmark body of the ``ledger_retention_bulk`` row (bench/retention_rows.py):
under the default test run each side runs once, with a smaller transfer."""

from __future__ import annotations

import pytest

from bench.retention_rows import ledger_retention_bulk


@pytest.mark.parametrize("side", ["ours", "peer"])
def test_ledger_retention_bulk(benchmark, side: str) -> None:  # type: ignore[no-untyped-def]
    w = ledger_retention_bulk(256 << 10)
    try:
        benchmark.group = w.name
        op = w.ours if side == "ours" else w.peer
        assert op is not None
        benchmark.pedantic(op, rounds=3 if benchmark.enabled else 1, iterations=1)
    finally:
        assert w.close is not None
        w.close()
