"""pytest-benchmark body of the ``paid_rate_smoothness`` row (bench/pacing_rows.py):
each side once over 2 one-second windows instead of 10 -- the body works and reports a
figure; the figure itself is compare.py's."""

from __future__ import annotations

import pytest

from bench.pacing_rows import paid_rate_smoothness
from bench.workload import run_side


@pytest.mark.parametrize("side", ["ours", "peer"])
def test_paid_rate_smoothness(benchmark, side: str) -> None:  # type: ignore[no-untyped-def]
    run_side(benchmark, paid_rate_smoothness(windows=2), side)
